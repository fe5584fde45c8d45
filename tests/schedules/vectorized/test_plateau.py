"""Metric-driven schedules on the vectorized engine, bit for bit against the real libraries.

torch's ReduceLROnPlateau, transformers' reduce_lr_on_plateau and greedy (GreedyLR) and timm's
plateau (PlateauLRScheduler) are scanned over the metrics (service/schedules/vectorized/
plateau.py). Each random configuration here is stepped with the real library in the test, as
a training loop does (``scheduler.step(metric)`` after each step), and the vectorized engine's
lrs must be the same floats (``==`` on every value; the torch engine is bit-identical too).
Metric sequences are drawn to hit what the state machines decide on: ties, values exactly at
the threshold (``best * (1 - threshold)``, ``best - threshold``) and one ulp past it, long
improving runs (greedy's increases), constants (reductions to min_lr, greedy's resets).
JSON requests take finite metrics only; the scans are also checked with NaN and ±inf directly.
"""

import math
import random
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as L

from service.errors import LimitExceeded
from service.schedules import budget, service, specs
from service.schedules.families import import_submodule_only
from service.schedules.vectorized import plateau
from service.settings import Settings
from tests.schedules.families.references import timm_reference

SETTINGS = Settings()
LRS = [0.1, 0.01, 0.5, 1.0, 3e-4, 0.02]


# --------------------------------------------------------------------------- random inputs


def _edge(rng: random.Random, x: float, mode: str, threshold_mode: str, threshold: float) -> float:
    """Return the value exactly at the improvement threshold from ``x``, or one ulp past it."""
    if mode == "min":
        at = x * (1.0 - threshold) if threshold_mode == "rel" else x - threshold
        past = -math.inf
    else:
        at = x * (threshold + 1.0) if threshold_mode == "rel" else x + threshold
        past = math.inf
    return at if rng.random() < 0.6 else float(np.nextafter(at, past))


def metrics_for(
    rng: random.Random,
    count: int,
    mode: str = "min",
    threshold_mode: str = "rel",
    threshold: float = 1e-4,
) -> list[float]:
    """Return ``count`` finite metrics of one of a few shapes."""
    kind = rng.choice(["ties", "walk", "edge", "const", "trend", "improving"])
    x = rng.choice([1.0, 0.5, 2.0, -1.0, 0.0, 10.0])
    out: list[float] = []
    sign = -1.0 if mode == "min" else 1.0
    for i in range(count):
        if kind == "ties":
            x = rng.choice([1.0, 0.9, 0.95, 0.8, 1.0])
        elif kind == "walk":
            x = round(x + rng.choice([-0.1, 0.0, 0.0, 0.1, 0.05]), 2)
        elif kind == "edge":
            r = rng.random()
            if r < 0.5:
                x = _edge(rng, x, mode, threshold_mode, threshold)
            elif r < 0.7:
                x = x + sign * rng.choice([0.1, 0.01])
            elif r < 0.85:
                x = x - sign * 0.05
        elif kind == "const":
            pass
        elif kind == "trend":
            x = x + sign * 0.05 if i < count // 2 else x - sign * 0.03
        else:  # long improving runs, then flat
            x = x + sign * 0.01 if (i // 7) % 2 == 0 else x
        out.append(float(x))
    return out


def _groups(rng: random.Random) -> list[float]:
    return rng.sample(LRS, rng.randint(1, 3))


def _per_group(rng: random.Random, choices: list[float], groups: int) -> float | list[float]:
    if rng.random() < 0.3:
        return [rng.choice(choices) for _ in range(groups)]
    return rng.choice(choices)


def _extra_metrics(rng: random.Random, n: int, metrics: list[float]) -> list[float]:
    """Return ``metrics`` for n steps, sometimes with extra trailing values (ignored)."""
    return metrics + [0.0] * (rng.random() < 0.1) * rng.randint(1, 3)


# --------------------------------------------------------------------------- the real loops


def _optimizer(lrs: list[float], cls: type = torch.optim.SGD) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(1, 1))], "lr": lr} for lr in lrs]
    return cls(params, lr=lrs[0])


def real_loop(
    make: Any,
    lrs: list[float],
    n: int,
    metrics: list[float],
    warmup: dict[str, Any] | None = None,
    dampener: Any = None,
    optimizer: type = torch.optim.SGD,
) -> np.ndarray:
    """Return lr per group (groups, n): the real scheduler, stepped with ``metrics[k - 1]``.

    ``warmup``: the service's own warmup, before the plateau as its docs say (SequentialLR
    refuses ReduceLROnPlateau): torch's LinearLR / LambdaLR(e / W) / ConstantLR for W steps,
    then at step W each group's initial lr, then the plateau. ``dampener``: pytorch_warmup's
    warmup (built after the scheduler, stepping it inside ``dampening()``).
    """
    opt = _optimizer(lrs, optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm = None
        w = 0
        if warmup is not None:
            w = warmup["steps"]
            if warmup["type"] == "constant":
                warm = L.ConstantLR(opt, factor=warmup["factor"], total_iters=w)
            elif warmup.get("start_factor", 0.0) > 0:
                warm = L.LinearLR(opt, warmup["start_factor"], 1.0, total_iters=w)
            else:
                warm = L.LambdaLR(opt, lambda e: e / w)
        sched = make(opt)
        damp = None if dampener is None else dampener(opt)
        out = [[g["lr"] for g in opt.param_groups]]
        for k in range(1, n):
            if damp is not None:
                with damp.dampening():
                    sched.step(metrics[k - 1])
            elif warm is not None and k < w:
                warm.step()
            elif warm is not None and k == w:
                for g in opt.param_groups:
                    g["lr"] = g["initial_lr"]
            else:
                sched.step(metrics[k - 1])
            out.append([g["lr"] for g in opt.param_groups])
    return np.asarray(out, dtype=np.float64).T


def vectorized(body: dict[str, Any]) -> np.ndarray:
    request = specs.ScheduleRequest.model_validate({**body, "engine": "vectorized"})
    result = service.compute(request, SETTINGS)
    assert result.engine == "vectorized"
    return result.lr


def assert_bits(got: np.ndarray, want: np.ndarray, what: Any) -> None:
    assert got.shape == want.shape, what
    if got.tobytes() != want.tobytes():
        step = int(np.argmax((got != want).any(axis=0)))
        raise AssertionError(
            f"{what}: first differs at step {step}: {got[:, step]} != {want[:, step]}"
        )


def _body(scheduler: dict, lrs: list[float], n: int, metrics: list[float], **extra) -> dict:
    return {
        "optimizer": {"type": "SGD", "lr": lrs[0]},
        "param_groups": [{"lr": lr} for lr in lrs],
        "scheduler": scheduler,
        "steps": n,
        "metrics": metrics,
        **extra,
    }


# --------------------------------------------------------------------------- torch


def random_torch_plateau(rng: random.Random) -> dict[str, Any]:
    lrs = _groups(rng)
    kwargs = {
        "mode": rng.choice(["min", "max"]),
        "factor": rng.choice([0.1, 0.5, 0.9, 0.0, -0.5, 0.999]),
        "patience": rng.randint(0, 4),
        "threshold": rng.choice([0.0, 1e-4, 0.05, -0.01, 1.0]),
        "threshold_mode": rng.choice(["rel", "abs"]),
        "cooldown": rng.randint(0, 3),
        "min_lr": _per_group(rng, [0.0, 1e-3, 0.05], len(lrs)),
        "eps": rng.choice([1e-8, 0.0, 1e-3, 0.05]),
    }
    n = rng.randint(1, 60)
    metrics = metrics_for(rng, n - 1, kwargs["mode"], kwargs["threshold_mode"], kwargs["threshold"])
    extra: dict[str, Any] = {}
    roll = rng.random()
    if roll < 0.2:
        extra["warmup"] = rng.choice(
            [
                {"type": "linear", "steps": rng.randint(1, 6), "start_factor": 0.0},
                {"type": "linear", "steps": rng.randint(1, 6), "start_factor": 0.25},
                {"type": "constant", "steps": rng.randint(1, 6), "factor": 0.5},
            ]
        )
    elif roll < 0.3:
        extra["warmup"] = rng.choice(
            [{"type": "linear", "warmup_period": 5}, {"type": "exponential", "warmup_period": 4},
             {"type": "untuned_linear"}, {"type": "radam"}]
        )  # fmt: skip
    return {"kwargs": kwargs, "lrs": lrs, "n": n, "metrics": metrics, **extra}


def _dampener(warmup: dict[str, Any]) -> Any:
    import pytorch_warmup

    kind = warmup["type"]
    if kind == "linear":
        return lambda o: pytorch_warmup.LinearWarmup(o, warmup["warmup_period"])
    if kind == "exponential":
        return lambda o: pytorch_warmup.ExponentialWarmup(o, warmup["warmup_period"])
    if kind == "untuned_linear":
        return pytorch_warmup.UntunedLinearWarmup
    return pytorch_warmup.RAdamWarmup


@pytest.mark.parametrize("seed", range(15))
def test_reduce_on_plateau_matches_torch_bit_for_bit(seed):
    rng = random.Random(1000 + seed)
    for _ in range(10):
        case = random_torch_plateau(rng)
        kwargs, lrs, n, metrics = case["kwargs"], case["lrs"], case["n"], case["metrics"]
        warmup = case.get("warmup")
        dampened = warmup is not None and "steps" not in warmup
        want = real_loop(
            lambda o, kw=kwargs: L.ReduceLROnPlateau(o, **kw),
            lrs,
            n,
            metrics,
            warmup=None if dampened else warmup,
            dampener=_dampener(warmup) if dampened else None,
            optimizer=torch.optim.Adam if dampened else torch.optim.SGD,
        )
        extra = {"warmup": warmup} if warmup else {}
        if dampened:
            extra["optimizer"] = {"type": "Adam", "lr": lrs[0]}
        body = _body({"type": "ReduceLROnPlateau", **kwargs}, lrs, n, metrics, **extra)
        if dampened:
            body["optimizer"] = extra["optimizer"]
            # pytorch_warmup's factor is its closed form on the vectorized engine (the
            # untuned and RAdam ones differ from the library's Python math in the last bits);
            # the plateau under it is the scan's, bit for bit
            np.testing.assert_allclose(
                vectorized(body), want, rtol=1e-12, atol=0, err_msg=str(case)
            )
            continue
        assert_bits(vectorized(body), want, case)


# --------------------------------------------------------------------------- transformers


def random_greedy_kwargs(rng: random.Random, groups: int) -> dict[str, Any]:
    return {
        "mode": rng.choice(["min", "max"]),
        "factor": rng.choice([0.5, 0.9, 0.95, 0.99, -0.5]),
        "patience": rng.randint(0, 3),
        "threshold": rng.choice([1e-6, 0.0, 0.05]),
        "threshold_mode": rng.choice(["rel", "abs"]),
        "cooldown": rng.randint(0, 2),
        "warmup": rng.randint(0, 2),
        "min_lr": _per_group(rng, [1e-3, 0.01, 0.05], groups),
        "max_lr": _per_group(rng, [1.0, 0.2, 0.15], groups),
        "eps": rng.choice([1e-8, 0.0, 0.01]),
        "smooth": rng.random() < 0.4,
        "window_size": rng.randint(1, 5),
        "reset_start": rng.randint(1, 4),
    }


@pytest.mark.parametrize("seed", range(15))
def test_transformers_metric_names_match_the_library_bit_for_bit(seed):
    from transformers.optimization import get_scheduler

    rng = random.Random(2000 + seed)
    for _ in range(10):
        name = rng.choice(["reduce_lr_on_plateau", "greedy"])
        lrs = _groups(rng)
        if name == "greedy":
            kwargs = random_greedy_kwargs(rng, len(lrs))
        else:
            kwargs = random_torch_plateau(rng)["kwargs"]
            kwargs["min_lr"] = _per_group(rng, [0.0, 1e-3, 0.05], len(lrs))
        n = rng.randint(1, 80)
        metrics = metrics_for(
            rng, n - 1, kwargs["mode"], kwargs["threshold_mode"], kwargs["threshold"]
        )
        warmup = None
        if rng.random() < 0.2:
            warmup = {
                "type": "linear",
                "steps": rng.randint(1, 5),
                "start_factor": rng.choice([0.0, 0.5]),
            }
        want = real_loop(
            lambda o, kw=kwargs, nm=name: get_scheduler(nm, o, scheduler_specific_kwargs=dict(kw)),
            lrs,
            n,
            metrics,
            warmup=warmup,
        )
        scheduler = {"type": "transformers", "name": name, "scheduler_specific_kwargs": kwargs}
        extra = {"warmup": warmup} if warmup else {}
        body = _body(scheduler, lrs, n, _extra_metrics(rng, n, metrics), **extra)
        assert_bits(vectorized(body), want, (name, kwargs, lrs, n, metrics, warmup))


# --------------------------------------------------------------------------- timm


def random_timm_plateau(rng: random.Random) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "timm",
        "sched": "plateau",
        "num_epochs": rng.randint(5, 40),
        "decay_rate": rng.choice([0.1, 0.5, 0.9, 0.0]),
        "patience_epochs": rng.randint(0, 4),
        "plateau_mode": rng.choice(["min", "max"]),
        "min_lr": rng.choice([0.0, 0.01, 0.05]),
    }
    if rng.random() < 0.5:
        spec["warmup_epochs"] = rng.randint(1, 5)
        spec["warmup_lr"] = rng.choice([1e-5, 0.0, 0.2])
    if rng.random() < 0.4:
        spec["noise"] = rng.choice([[0.1, 0.7], [0.3], 0.5, [0.0, 2.0]])
        spec["noise_std"] = rng.choice([1.0, 0.3])
        spec["noise_pct"] = rng.choice([0.67, 0.2])
        spec["noise_seed"] = rng.randint(0, 10_000)
    return spec


@pytest.mark.parametrize("seed", range(10))
def test_timm_plateau_matches_timm_bit_for_bit(seed):
    rng = random.Random(3000 + seed)
    for _ in range(10):
        spec = random_timm_plateau(rng)
        lrs = _groups(rng)
        n = rng.randint(1, 50)
        metrics = metrics_for(rng, n - 1, spec["plateau_mode"], "rel", 1e-4)
        want = timm_reference(spec, lrs, n, metrics=metrics)
        body = _body(spec, lrs, n, metrics)
        assert_bits(vectorized(body), want, (spec, lrs, n, metrics))
        if n > 3 and rng.random() < 0.3:  # sampled: the same values at the sampled steps
            at = sorted(rng.sample(range(n), 3))
            sampled = vectorized({**body, "sample": {"at": at}})
            assert_bits(sampled, want[:, at], (spec, at))


# --------------------------------------------------------------------------- non-finite metrics


NON_FINITE = [
    [1.0, math.nan, 1.0, 1.0, 0.5, math.nan, math.nan, math.nan, 0.4],
    [math.inf, 1.0, -math.inf, -math.inf, 1.0, 1.0, 1.0],
    [math.nan] * 8,
    [-math.inf, math.inf, math.nan, 0.0, 0.0, 0.0, 0.0, 0.0],
]


@pytest.mark.parametrize("metrics", NON_FINITE)
@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("threshold_mode", ["rel", "abs"])
def test_the_scans_follow_the_libraries_on_nan_and_inf(metrics, mode, threshold_mode):
    """torch and transformers take NaN and ±inf metrics (a NaN is never better; inf - inf is
    NaN); the API refuses them, the scans reproduce them anyway."""
    from transformers.optimization import GreedyLR

    n, lrs = len(metrics) + 1, [0.1, 0.02]
    kw = {"mode": mode, "threshold_mode": threshold_mode, "patience": 0, "factor": 0.5}
    want = real_loop(lambda o: L.ReduceLROnPlateau(o, **kw), lrs, n, metrics)
    rule = plateau.PlateauRule(**kw, threshold=1e-4, min_lrs=(0.0, 0.0))
    assert_bits(rule.scan(lrs, metrics, n).lr, want, "ReduceLROnPlateau")
    for smooth in (False, True):
        gkw = {**kw, "smooth": smooth, "window_size": 2, "reset_start": 2, "min_lr": 0.02}
        want = real_loop(lambda o, g=gkw: GreedyLR(o, **g), lrs, n, metrics)
        rule = plateau.GreedyRule(
            **{k: v for k, v in gkw.items() if k != "min_lr"},
            min_lrs=(0.02, 0.02),
            max_lrs=(1.0, 1.0),
        )
        assert_bits(rule.scan(lrs, metrics, n).lr, want, ("greedy", smooth))
    timm = import_submodule_only("timm", "scheduler")
    opt = _optimizer(lrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched, _ = timm.create_scheduler_v2(
            opt, sched="plateau", patience_epochs=0, plateau_mode=mode
        )
    want = [[g["lr"] for g in opt.param_groups]]
    for t in range(1, n):
        sched.step(t, metrics[t - 1])
        want.append([g["lr"] for g in opt.param_groups])
    timm_rule = plateau.TimmPlateauRule(
        plateau.PlateauRule(mode=mode, patience=0, min_lrs=(0.0, 0.0)), 0, 1e-5
    )
    assert_bits(timm_rule.scan(lrs, metrics, n).lr, np.asarray(want).T, "timm")


def test_the_api_refuses_non_finite_metrics(client):
    body = b'{"scheduler": {"type": "ReduceLROnPlateau"}, "steps": 3, "metrics": [1, Infinity]}'
    for engine in ("vectorized", "torch"):
        r = client.post(
            f"/v1/schedules/compute?engine={engine}",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422, r.text


# --------------------------------------------------------------------------- through the API


API_CASES = {
    "ReduceLROnPlateau": (
        {"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 1, "cooldown": 1, "min_lr": [0.01, 0.0]},
        [1.0, 0.9, 0.9, 0.9, 0.9, 0.95, 0.89, 0.89, 0.89, 0.5, 0.5, 0.5, 0.5, 0.5],
    ),
    "timm-plateau": (
        {"type": "timm", "sched": "plateau", "num_epochs": 20, "patience_epochs": 1, "plateau_mode": "min",
         "warmup_epochs": 2, "noise": [0.2, 0.6], "min_lr": 0.001},
        [1.0, 0.9, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7],
    ),
    "transformers-reduce_lr_on_plateau": (
        {"type": "transformers", "name": "reduce_lr_on_plateau",
         "scheduler_specific_kwargs": {"mode": "max", "factor": 0.2, "patience": 0, "threshold_mode": "abs"}},
        [1.0, 2.0, 2.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0],
    ),
    "transformers-greedy": (
        {"type": "transformers", "name": "greedy",
         "scheduler_specific_kwargs": {"patience": 1, "min_lr": 0.01, "max_lr": 0.3, "factor": 0.5, "reset_start": 2}},
        [1.0, 0.9, 0.8, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(API_CASES))
def test_each_metric_name_answers_200_on_both_engines_with_the_same_series(client, name):
    scheduler, metrics = API_CASES[name]
    body = _body(scheduler, [0.1, 0.02], len(metrics) + 1, metrics, include=["momentum"])
    body["optimizer"] = {"type": "SGD", "lr": 0.1, "momentum": 0.9}
    got = {}
    for engine in ("torch", "vectorized", "auto"):
        r = client.post("/v1/schedules/compute", json={**body, "engine": engine})
        assert r.status_code == 200, r.text
        got[engine] = r.json()
    assert got["vectorized"]["engine"] == got["auto"]["engine"] == "vectorized"
    assert got["torch"]["engine"] == "torch"
    for key in ("lr", "momentum", "summary", "warnings", "families"):
        assert got["vectorized"][key] == got["torch"][key], key
    assert len(set(got["torch"]["lr"][0])) > 2  # the metrics moved the lr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(API_CASES))
def test_the_scan_answers_on_cuda_with_the_same_series(client, name):
    scheduler, metrics = API_CASES[name]
    body = _body(scheduler, [0.1, 0.02], len(metrics) + 1, metrics, sample={"at": [13, 0, 7]})
    want = client.post("/v1/schedules/compute", json={**body, "engine": "torch"}).json()
    got = client.post(
        "/v1/schedules/compute", json={**body, "engine": "vectorized", "device": "cuda"}
    )
    assert got.status_code == 200, got.text
    assert got.json()["device"].startswith("cuda")
    assert got.json()["lr"] == want["lr"]


def test_csv_and_npy_are_the_same_on_both_engines(client):
    scheduler, metrics = API_CASES["transformers-greedy"]
    body = _body(scheduler, [0.1, 0.02], len(metrics) + 1, metrics)
    for fmt in ("csv", "npy"):
        answers = [
            client.post(f"/v1/schedules/compute?format={fmt}", json={**body, "engine": e})
            for e in ("torch", "vectorized")
        ]
        assert [r.status_code for r in answers] == [200, 200]
        assert answers[0].content == answers[1].content


# --------------------------------------------------------------------------- budget and cost


def test_the_scan_stops_when_its_client_is_gone():
    stopped = budget.Budget(60.0)
    stopped.cancel()
    rule = plateau.PlateauRule()
    with budget.active(stopped), pytest.raises(budget.Cancelled):
        rule.scan([0.1], [1.0] * (plateau.CHUNK + 5), plateau.CHUNK + 6)
    with budget.active(stopped), pytest.raises(budget.Cancelled):
        plateau.GreedyRule().scan([0.1], [1.0] * 10, 11)


def test_the_scan_stops_at_the_time_limit():
    late = budget.Budget(60.0)
    late.deadline = -math.inf  # already past (no clock in the test)
    with budget.active(late), pytest.raises(LimitExceeded, match="LRS_COMPUTE_MAX_SECONDS"):
        plateau.PlateauRule().scan([0.1], [1.0] * 10, 11)


def test_a_metric_scan_counts_in_the_cost_model():
    body = {"scheduler": {"type": "ReduceLROnPlateau"}, "steps": 1000, "metrics": [1.0] * 999}
    scan = budget.cost(specs.ScheduleRequest.model_validate(body), "vectorized").total
    closed = budget.cost(
        specs.ScheduleRequest.model_validate(
            {"scheduler": {"type": "StepLR", "step_size": 3}, "steps": 1000}
        ),
        "vectorized",
    ).total
    # the scan's weight per step on top of a closed form's (ReduceLROnPlateau's own weights
    # are a closed form's: it sets lrs like StepLR's)
    rlrp = specs.ScheduleRequest.model_validate(body).scheduler
    step = specs.ScheduleRequest.model_validate(
        {"scheduler": {"type": "StepLR", "step_size": 3}, "steps": 1000}
    ).scheduler
    leaf = rlrp.vectorized_cost(1000, 1) - step.vectorized_cost(1000, 1)
    assert scan == closed + leaf + 1000 * budget.METRIC_SCAN_OPS
