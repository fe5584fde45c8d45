"""Calibration of the cost model: CPU time per value of every closed form, next to its cost.

For every registered scheduler (each catalog example of each class; a few members whose
arguments change the work, e.g. optax's join_schedules, timm's cosine with cycle_mul != 1 or
noise, transformers' cosine_with_restarts) and for the pytorch_warmup warmups, computes the
request on the vectorized engine in this process (the plan cache cleared before each call, so
each is computed as a first request is) at 1 param group and at 16, and prints the median CPU
time (``time.process_time``: the kernel's threads included, the machine's other load not) in
ns per value (scheduler step × group), split into what a step costs whatever the groups (a
factor shared by the groups) and what each value costs, next to what
:func:`service.schedules.budget.cost` says (its unit is meant to be about 1 ns of CPU here),
and the ratio. The per-family weights in the spec classes come from this table.

    .venv/bin/python bench/bench_cost.py [--repeat 5] [--values 400000] [--only optax]
"""

import argparse
import copy
import json
import statistics
import sys
import time
from typing import Any

import torch
from harness import loadavg, machine  # first: puts the repository root on sys.path

from service.schedules import budget, registry, service, specs
from service.settings import Settings

SETTINGS = Settings(
    vectorized_max_cost=10**15,
    vectorized_max_values=10**10,
    vectorized_max_steps=10**10,
    compute_max_seconds=10**6,
)

EXTRA: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("timm cosine cycle_mul 2", {"type": "timm", "sched": "cosine", "num_epochs": 100,
                                 "cycle_mul": 2.0, "cycle_limit": 20}, {}),
    ("timm cosine cycle_mul 0.999999", {"type": "timm", "sched": "cosine", "num_epochs": 1000,
                                        "cycle_mul": 0.999999, "cycle_limit": 1000000,
                                        "step_on_epochs": False, "updates_per_epoch": 100}, {}),
    ("timm cosine noise", {"type": "timm", "sched": "cosine", "num_epochs": 100000,
                           "noise": [0.0, 1.0]}, {}),
    ("transformers cosine_with_restarts", {"type": "transformers",
                                           "name": "cosine_with_restarts",
                                           "num_warmup_steps": 100,
                                           "num_training_steps": 2000000,
                                           "scheduler_specific_kwargs": {"num_cycles": 5}}, {}),
    ("optax join_schedules x8", {"type": "optax", "schedule": "join_schedules",
                                 "schedules": [{"type": "optax",
                                                "schedule": "cosine_decay_schedule",
                                                "init_value": 0.1, "decay_steps": 1000}] * 8,
                                 "boundaries": [1000 * (i + 1) for i in range(7)]}, {}),
    ("optax piecewise_constant x64", {"type": "optax",
                                      "schedule": "piecewise_constant_schedule",
                                      "init_value": 0.1,
                                      "boundaries_and_scales": {str(100 * (i + 1)): 0.9
                                                                for i in range(64)}}, {}),
    ("optax piecewise_interpolate x64", {"type": "optax",
                                         "schedule": "piecewise_interpolate_schedule",
                                         "interpolate_type": "cosine", "init_value": 0.1,
                                         "boundaries_and_scales": {str(100 * (i + 1)): 0.9
                                                                   for i in range(64)}}, {}),
    ("optax sgdr x8", {"type": "optax", "schedule": "sgdr_schedule",
                       "cosine_kwargs": [{"init_value": 0.0, "peak_value": 0.1,
                                          "warmup_steps": 10, "decay_steps": 1000}] * 8}, {}),
    ("lambda probe (42 exp(sin))", {"type": "LambdaLR", "lr_lambda": None}, {}),
    ("CyclicLR triangular", {"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1,
                             "step_size_up": 1000, "mode": "triangular2"}, {}),
    ("OneCycleLR", {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 10**9}, {}),
    ("transformers greedy", {"type": "transformers", "name": "greedy",
                             "scheduler_specific_kwargs": {"smooth": True}}, {}),
    *[(f"transformers {name}{label}", {"type": "transformers", "name": name,
                                        "num_warmup_steps": 100,
                                        "num_training_steps": 2000000, **extra}, {})
      for name, label, extra in [
          ("linear", "", {}), ("polynomial", "", {}), ("constant", "", {}),
          ("constant_with_warmup", "", {}),
          ("inverse_sqrt", "", {}),
          ("cosine_with_min_lr", "", {"scheduler_specific_kwargs": {"min_lr_rate": 0.1}}),
          ("cosine_warmup_with_min_lr", "", {"scheduler_specific_kwargs": {"min_lr_rate": 0.1}}),
          ("warmup_stable_decay", "", {"scheduler_specific_kwargs": {"num_decay_steps": 1000}}),
          ("warmup_stable_decay", " cosine", {"scheduler_specific_kwargs": {
              "num_decay_steps": 1000, "decay_type": "cosine", "warmup_type": "cosine"}}),
      ]],
]  # fmt: skip
"""Members whose arguments change the work (beyond the catalog examples)."""

WARMUPS: list[tuple[str, dict[str, Any]]] = [
    ("pytorch_warmup linear", {"type": "linear", "warmup_period": 1000}),
    ("pytorch_warmup exponential", {"type": "exponential", "warmup_period": 1000}),
    ("pytorch_warmup untuned_linear", {"type": "untuned_linear"}),
    ("pytorch_warmup untuned_exponential", {"type": "untuned_exponential"}),
    ("pytorch_warmup radam", {"type": "radam"}),
    ("linear warmup (service's)", {"type": "linear", "steps": 1000, "start_factor": 0.1}),
]
"""Warmups, before a CosineAnnealingLR (whose own time is subtracted)."""


def _balanced_sum(terms: list[str]) -> str:
    if len(terms) == 1:
        return terms[0]
    half = len(terms) // 2
    return f"({_balanced_sum(terms[:half])}+{_balanced_sum(terms[half:])})"


PROBE = _balanced_sum(["exp(sin(epoch))"] * 42)


def cases() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    out = []
    for cls in registry.classes():
        kind = cls.model_fields["type"].default
        selector = cls.selector
        for i, example in enumerate(cls.examples[:2]):
            name = kind if selector is None else f"{kind} {example.get(selector)}"
            request = {k: v for k, v in cls.example_request.items() if k not in ("steps",)}
            out.append((name + (f" #{i + 1}" if i else ""), example, request))
    for name, scheduler, request in EXTRA:
        if scheduler.get("lr_lambda", "") is None:
            scheduler = {**scheduler, "lr_lambda": PROBE}
        out.append((name, scheduler, request))
    return out


def body(scheduler: dict, extra: dict, steps: int, groups: int, warmup: Any = None) -> dict:
    out = {
        **copy.deepcopy(extra),
        "scheduler": scheduler,
        "steps": steps,
        "engine": "vectorized",
        "param_groups": [{"lr": 0.1}] * groups,
    }
    if warmup is not None:
        out["warmup"] = warmup
        out["optimizer"] = {"type": "Adam", "lr": 0.1}
    if "metrics" in extra or _metric_driven(scheduler):
        out["metrics"] = [1.0 / (1 + i % 97) for i in range(steps)]
    return out


def _metric_driven(scheduler: dict) -> bool:
    """Return True when the scheduler reads the request's metrics (transformers'
    ``metric_driven`` is a property of the spec, not of its class: on the class it is a
    property object, truthy, which once sent metrics with every transformers case and timed
    their handling as the closed form's)."""
    return bool(
        getattr(registry.choose(scheduler).model_validate(scheduler), "metric_driven", False)
    )


def cpu_ns(request: specs.ScheduleRequest, repeat: int) -> float:
    """Return the median CPU time of computing ``request`` uncached, in ns."""
    times = []
    for i in range(repeat + 1):
        service.plans.clear()
        start = time.process_time()
        service.compute(request, SETTINGS)
        if i:  # the first is a warm-up (imports, first-call costs)
            times.append(time.process_time() - start)
    return statistics.median(times) * 1e9


def measure(scheduler: dict, extra: dict, values: int, repeat: int, warmup: Any = None):
    """Return (per-step ns, per-value ns, cost per value at 16 groups, ns per value at 16)."""
    steps_1, steps_16 = values, values // 16
    r1 = specs.ScheduleRequest.model_validate(body(scheduler, extra, steps_1, 1, warmup))
    r16 = specs.ScheduleRequest.model_validate(body(scheduler, extra, steps_16, 16, warmup))
    t1 = cpu_ns(r1, repeat) / steps_1  # a + b
    t16 = cpu_ns(r16, repeat) / steps_16  # a + 16 b
    per_value = max(0.0, (t16 - t1) / 15)
    per_step = t1 - per_value
    cost16 = budget.cost(r16, "vectorized").total / (steps_16 * 16)
    cost1 = budget.cost(r1, "vectorized").total / steps_1
    return per_step, per_value, t1, t16 / 16, cost1, cost16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--values", type=int, default=400_000)
    parser.add_argument("--only", default="", help="only cases whose name contains this")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(SETTINGS.torch_threads)
    print(f"machine: {machine()}; load before: {loadavg()}")
    print(
        "| case | ns/step (shared) | ns/value | 1 group: ns/value, cost/value, ratio "
        "| 16 groups: ns/value, cost/value, ratio |"
    )
    print("|---|---:|---:|---|---|")
    rows = []
    todo: list[tuple[str, dict, dict, Any]] = [(n, s, e, None) for n, s, e in cases()]
    cosine = {"type": "CosineAnnealingLR", "T_max": 1000}
    todo += [(name, cosine, {}, warmup) for name, warmup in WARMUPS]
    for name, scheduler, extra, warmup in todo:
        if args.only and args.only not in name:
            continue
        try:
            a, b, t1, t16, c1, c16 = measure(scheduler, extra, args.values, args.repeat, warmup)
        except Exception as exc:  # a case that cannot run here is reported
            print(f"| {name} | {type(exc).__name__}: {str(exc)[:80]} | | | |")
            continue
        rows.append({"case": name, "per_step_ns": a, "per_value_ns": b, "ns_1": t1,
                     "ns_16": t16, "cost_1": c1, "cost_16": c16})  # fmt: skip
        print(
            f"| {name} | {a:.1f} | {b:.1f} | {t1:.1f}, {c1:.1f}, {t1 / c1:.2f} "
            f"| {t16:.1f}, {c16:.1f}, {t16 / c16:.2f} |",
            flush=True,
        )
    print(f"load after: {loadavg()}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    sys.exit(main())
