"""Specs computed one by one that differ only in the optimizer's lr share one compilation,
and a plan's probes evaluated by the kernel decide what the generic closed form decides.

Every value is compared with the generic evaluation of a freshly compiled program (which the
parity suites compare with torch), bit for bit.
"""

from typing import Any

import pytest
import torch

from service.errors import InvalidSpec
from service.schedules import service, specs
from service.schedules.vectorized import compile as vectorized
from service.schedules.vectorized import fast
from service.settings import Settings
from tests.schedules.test_vectorized import PARITY
from tests.schedules.vectorized.test_fast import (
    COMMON,
    assert_generic_bits,
    generic,
    warmup_cosine,
)

SETTINGS = Settings()

LRS = (0.1, 0.37, 1e-3, 2.5, 0.0, 0.1 + 1e-12, 1e-250, 7)


@pytest.fixture(autouse=True)
def fresh_plans():
    service.plans.clear()
    yield
    service.plans.clear()


def count_calls(monkeypatch, module: Any, name: str) -> list[int]:
    """Return a list that grows by one at each call of ``module.name`` (still called)."""
    calls: list[int] = []
    real = getattr(module, name)

    def counting(*args: Any, **kwargs: Any):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


@pytest.fixture
def compiled(monkeypatch) -> list[int]:
    return count_calls(monkeypatch, vectorized, "compile_request")


@pytest.fixture
def made(monkeypatch) -> list[int]:
    return count_calls(monkeypatch, service, "_make_plan")


def with_lr(body: dict[str, Any], lr: float) -> dict[str, Any]:
    optimizer = {"type": "SGD", "momentum": 0.9, **body.get("optimizer", {}), "lr": lr}
    return {**body, "optimizer": optimizer}


@pytest.mark.parametrize(
    "body",
    [
        warmup_cosine(10_000),
        warmup_cosine(3000, include=["momentum"]),
        {**warmup_cosine(3000), "warmup": {"type": "linear", "steps": 30, "start_factor": 0.1}},
        {"scheduler": {"type": "CosineAnnealingLR", "T_max": 900, "eta_min": 1e-4}, "steps": 1000},
        {**warmup_cosine(3000), "sample": {"points": 100}},
        {"scheduler": {"type": "LinearLR", "start_factor": 0.1, "total_iters": 90}, "steps": 300},
        {**warmup_cosine(2000), "batch_scaling": {"batch_size": 768, "base_batch_size": 256}},
    ],
)
def test_an_lr_sweep_compiles_twice_and_gives_each_spec_its_bits(compiled, body):
    """The first two lrs are compiled (the second checks the derivation), the rest derived."""
    for lr in LRS:
        spec = with_lr(body, lr)
        got = service.compute(specs.ScheduleRequest.model_validate(spec), SETTINGS)
        assert_generic_bits(spec, got)
    assert len(compiled) == 2 + len(LRS)  # two by compute, one per lr by generic()


def test_a_derivation_that_differs_is_never_trusted(compiled, monkeypatch):
    monkeypatch.setattr(service.vectorized_batch, "same_program", lambda a, b: False)
    for lr in LRS[:5]:
        spec = with_lr(warmup_cosine(2000), lr)
        service.compute(specs.ScheduleRequest.model_validate(spec), SETTINGS)
    assert len(compiled) == 5


def test_the_same_lr_again_does_not_count_as_a_check(compiled):
    """A second spec of the kind with the template's own lr (the lr set explicitly rather
    than by default) says nothing about the derivation: the next lr is still compiled."""
    default = {"scheduler": {"type": "CosineAnnealingLR", "T_max": 500}, "steps": 600}
    explicit = {**default, "optimizer": {"type": "SGD", "lr": 0.1}}
    other = {**default, "optimizer": {"type": "SGD", "lr": 0.2}}
    for spec in (default, explicit, other):
        got = service.compute(specs.ScheduleRequest.model_validate(spec), SETTINGS)
        assert_generic_bits(spec, got)
    assert len(compiled) == 3 + 3


def test_specs_whose_state_is_not_the_lr_alone_are_compiled_every_time(compiled):
    for lr in LRS[:4]:
        spec = {**with_lr(warmup_cosine(1000), lr), "param_groups": [{"lr": 0.1}, {"lr": 0.01}]}
        got = service.compute(specs.ScheduleRequest.model_validate(spec), SETTINGS)
        want = generic(spec)
        assert got.lr.tobytes() == want.lr.tobytes()
    assert len(compiled) == 4 + 4


def test_a_derived_spec_still_gets_its_own_warnings():
    base = {"scheduler": {"type": "CosineAnnealingLR", "T_max": 500}, "steps": 600}
    results = {}
    for lr in (0.1, 0.2, 0.3, 0.0):
        body = with_lr(base, lr)
        results[lr] = service.compute(specs.ScheduleRequest.model_validate(body), SETTINGS)
    service.plans.clear()
    for lr, got in results.items():
        alone = service.compute(specs.ScheduleRequest.model_validate(with_lr(base, lr)), SETTINGS)
        assert got.warnings == alone.warnings
        service.plans.clear()


def _compiled_program(body: dict[str, Any]):
    request = specs.ScheduleRequest.model_validate(body)
    prep = service._prepare(request, SETTINGS)
    return vectorized.compile_request(prep.request, prep.n, prep.device)


@pytest.mark.parametrize("body", COMMON + PARITY)
def test_kernel_probes_decide_what_the_generic_probes_decide(body):
    request = specs.ScheduleRequest.model_validate(body)
    if service.choose_engine(request) != "vectorized":
        pytest.skip("the torch engine computes this spec")
    try:
        ours = service._fast_of(_compiled_program(body))
        theirs = fast.fast_of(_compiled_program(body))
    except Exception as exc:  # the refusals are the parity suite's business
        pytest.skip(f"refused: {exc}")
    assert (ours is None) == (theirs is None)
    if ours is not None and theirs is not None:
        assert torch.tensor(ours.final).numpy().tobytes() == (
            torch.tensor(theirs.final).numpy().tobytes()
        )


@pytest.mark.parametrize(
    "vary",
    [
        lambda i: {"scheduler": {"type": "CosineAnnealingLR", "T_max": 500 + 997 * i}},
        lambda i: {"scheduler": {"type": "CosineAnnealingLR", "T_max": 900, "eta_min": 1e-5 * i}},
        lambda i: {"warmup": {"type": "linear", "steps": 1 + 37 * i, "start_factor": 0.0}},
        lambda i: {"scheduler": {"type": "StepLR", "step_size": 3 + i, "gamma": 0.5 + i / 20}},
    ],
)
def test_a_sweep_of_scheduler_parameters_compiles_twice(compiled, vary):
    """T_max, eta_min, step_size, gamma or the warmup's length swept one spec at a time: the
    first two compiled, the rest derived, each with the generic path's bits."""
    bodies = [{**warmup_cosine(2000), **vary(i)} for i in range(6)]
    for body in bodies:
        got = service.compute(specs.ScheduleRequest.model_validate(body), SETTINGS)
        assert_generic_bits(body, got)
    assert len(compiled) == 2 + len(bodies)


def test_a_sweeps_derived_specs_leave_the_compiled_plans_cached(compiled):
    """Once a sweep kind's template passed its check, its specs are derived without the plans
    cache: a flood of distinct lrs (each spec new) neither compiles nor pushes out the plan
    another spec compiled, and every derived spec still gives the generic bits."""
    other = {"scheduler": {"type": "StepLR", "step_size": 7, "gamma": 0.5}, "steps": 300}
    kept = specs.ScheduleRequest.model_validate(other)
    service.compute(kept, SETTINGS)
    sweep = warmup_cosine(2000)
    for lr in (0.1, 0.2):  # the template, then its check
        service.compute(specs.ScheduleRequest.model_validate(with_lr(sweep, lr)), SETTINGS)
    before = len(compiled)
    for i in range(service.PLAN_CACHE_SIZE + 5):
        body = with_lr(sweep, 0.3 + i / 1000)
        got = service.compute(specs.ScheduleRequest.model_validate(body), SETTINGS)
        if i % 16 == 0:
            assert_generic_bits(body, got)
    assert len(compiled) == before + len(range(0, service.PLAN_CACHE_SIZE + 5, 16))  # generic()
    assert service.plans.find(service.plans.key(kept)) is not None


@pytest.mark.parametrize("steps", [1, 2, 3000])
def test_a_derived_spec_checked_on_its_own_values_gives_the_generic_answer(steps):
    """A derived spec's dense plan checks its probes on the values it computes (not before):
    lrs whose values overflow (1e308: the generic path's 422), subnormal, zero or huge, and
    schedules of one and two steps, all get the generic bits and final lr, or its error."""
    sweep = warmup_cosine(steps)
    if steps < 3:
        sweep = {"scheduler": {"type": "CosineAnnealingLR", "T_max": 10}, "steps": steps}
    for lr in (0.1, 0.2):  # the template, then its check
        service.compute(specs.ScheduleRequest.model_validate(with_lr(sweep, lr)), SETTINGS)
    for lr in (0.3, 1e305, 1e308, 5e-324, 0.0, 1e-250):
        body = with_lr(sweep, lr)
        request = specs.ScheduleRequest.model_validate(body)
        try:
            want = generic(body)
        except InvalidSpec as exc:
            with pytest.raises(InvalidSpec) as got:
                service.compute(request, SETTINGS)
            assert got.value.detail == exc.detail
            continue
        got = service.compute(request, SETTINGS)
        assert got.lr.tobytes() == want.lr.tobytes() and got.final_lr == want.final_lr


def test_a_kinds_next_specs_are_made_from_its_last_plan(made):
    """Past its template's check, a dense sweep kind's next spec (another lr, T_max or
    warmup length, the lr given or left to its default) is made from the kind's last plan
    (its steps, families and limits reused; program, fast path and warnings its own): each
    gives the generic bits, and the warnings a spec computed alone gets."""
    base = warmup_cosine(3000)
    bodies = [with_lr(base, lr) for lr in (0.1, 0.2, 0.3, 1e-250, 0.0, 4.0)]
    bodies += [{**body, "scheduler": {**body["scheduler"], "T_max": 1234}} for body in bodies[:3]]
    bodies += [{**bodies[1], "warmup": {"type": "linear", "steps": 77, "start_factor": 0.0}}]
    bodies.append({**base, "optimizer": {"type": "SGD", "momentum": 0.9}})  # the default lr
    results = [service.compute(specs.ScheduleRequest.model_validate(b), SETTINGS) for b in bodies]
    # the template, its check, and the first derived spec are made; every later one is a sibling
    assert len(made) == 3
    for body, got in zip(bodies, results, strict=True):
        assert_generic_bits(body, got)
        service.plans.clear()
        alone = service.compute(specs.ScheduleRequest.model_validate(body), SETTINGS)
        assert got.warnings == alone.warnings and got.final_lr == alone.final_lr


def test_a_sampled_kinds_specs_are_each_made(made):
    """A sampled kind's plan prices and probes its own values: never made from another's."""
    body = {**warmup_cosine(3000), "sample": {"points": 100}}
    lrs = (0.1, 0.2, 0.3, 0.4, 0.5)
    for lr in lrs:
        spec = with_lr(body, lr)
        assert_generic_bits(
            spec, service.compute(specs.ScheduleRequest.model_validate(spec), SETTINGS)
        )
    assert len(made) == len(lrs)
