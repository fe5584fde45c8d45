"""The fast path (compiled plans, fused kernels, chunks, threads) gives the generic path's bits.

``service.compute`` reuses a spec's compiled plan and evaluates the common closed forms with
:mod:`service.schedules.vectorized.fast`; every value must be exactly what the generic
evaluation of the same compiled program gives (which the parity suites compare with torch).
"""

import math
from typing import Any

import numpy as np
import pytest
import torch

from service.errors import LimitExceeded
from service.schedules import service, specs
from service.schedules.vectorized import compile as vectorized
from service.schedules.vectorized import fast
from service.settings import Settings
from tests.schedules.test_vectorized import PARITY

SETTINGS = Settings()


def warmup_cosine(steps: int, **extra: Any) -> dict[str, Any]:
    warm = max(1, steps // 100)
    return {
        "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
        "scheduler": {"type": "CosineAnnealingLR", "T_max": steps - warm},
        "warmup": {"type": "linear", "steps": warm, "start_factor": 0.0},
        "steps": steps,
        **extra,
    }


COMMON = [
    pytest.param(warmup_cosine(10_000), id="warmup-cosine"),
    pytest.param(warmup_cosine(1000, include=["momentum"]), id="warmup-cosine-momentum"),
    pytest.param(
        {
            **warmup_cosine(3001),
            "warmup": {"type": "linear", "steps": 77, "start_factor": 0.25},
            "param_groups": [{"lr": 0.1}, {"lr": 0.003}],
        },
        id="linear-warmup-two-groups",
    ),
    pytest.param(
        {"scheduler": {"type": "CosineAnnealingLR", "T_max": 500, "eta_min": 1e-4}, "steps": 1234},
        id="cosine-eta-min",
    ),
    pytest.param(
        {"scheduler": {"type": "CosineAnnealingLR", "T_max": 37, "eta_min": 0.01}, "steps": 1000},
        id="cosine-past-t-max",
    ),
    pytest.param(
        {"scheduler": {"type": "LinearLR", "start_factor": 0.1, "total_iters": 90}, "steps": 300},
        id="linear-alone",
    ),
    pytest.param(
        {
            "optimizer": {"type": "SGD", "lr": 1e-250},
            "scheduler": {"type": "CosineAnnealingLR", "T_max": 300},
            "steps": 301,
        },
        id="cosine-tiny-lr",
    ),
    pytest.param({**warmup_cosine(5000), "sample": {"points": 997}}, id="sampled-points"),
    pytest.param({**warmup_cosine(5000), "sample": {"every": 7}}, id="sampled-every"),
    pytest.param({**warmup_cosine(500), "sample": {"at": [400, 3, 0, 99, 3]}}, id="sampled-at"),
    pytest.param({**warmup_cosine(4000), "interval": "epoch", "steps_per_epoch": 3}, id="epochs"),
]
"""Specs the kernel covers (each asserted to take it)."""


def generic(body: dict[str, Any]) -> service.Computed:
    """Return the result by the generic evaluation of a freshly compiled program."""
    request = specs.ScheduleRequest.model_validate(body)
    prep = service._prepare(request, SETTINGS)
    program = vectorized.compile_request(prep.request, prep.n, prep.device)
    k = torch.as_tensor(prep.sched_index, dtype=torch.int64)
    return program.result(k)


def assert_generic_bits(body: dict[str, Any], got: service.Computed) -> None:
    """``got`` has the bits of the generic evaluation of ``body`` (lr, final lr, momentum)."""
    want = generic(body)
    assert got.lr.tobytes() == want.lr.tobytes()
    assert got.final_lr == want.final_lr
    if want.momentum is None:
        assert got.momentum is None
    else:
        assert got.momentum is not None and got.momentum.tobytes() == want.momentum.tobytes()


def assert_same_bits(body: dict[str, Any]) -> service.Computed:
    request = specs.ScheduleRequest.model_validate(body)
    for _ in range(2):  # the plan compiled, then reused
        got = service.compute(request, SETTINGS)
        assert_generic_bits(body, got)
    return got


@pytest.mark.parametrize("body", COMMON)
def test_the_kernel_gives_the_generic_bits(body):
    request = specs.ScheduleRequest.model_validate(body)
    plan = service.plans.get(request, service.choose_engine(request))
    assert plan.fast is not None
    assert_same_bits(body)


@pytest.mark.parametrize("body", PARITY)
def test_every_parity_case_gives_the_generic_bits(body):
    request = specs.ScheduleRequest.model_validate(body)
    if service.choose_engine(request) != "vectorized":
        pytest.skip("the torch engine computes this spec")
    try:
        generic(body)
    except Exception as exc:  # the refusals are the parity suite's business
        pytest.skip(f"refused: {exc}")
    assert_same_bits(body)


@pytest.mark.parametrize("eta_min", [0.0, 1e-5])
def test_chunks_and_threads_give_the_same_bits(monkeypatch, eta_min):
    body = {
        **warmup_cosine(20_011),
        "param_groups": [{"lr": 0.1}, {"lr": 0.02}],
        "include": ["momentum"],
    }
    body["scheduler"] = {**body["scheduler"], "eta_min": eta_min}
    want = generic(body)
    monkeypatch.setattr(fast, "CHUNK", 64)
    monkeypatch.setattr(fast, "THREADS_MIN", 1000)
    monkeypatch.setattr(fast, "THREADS", 2)
    monkeypatch.setattr(service, "PLAN_INDICES_MAX", 100)
    service.plans.clear()
    got = service.compute(specs.ScheduleRequest.model_validate(body), SETTINGS)
    assert got.lr.tobytes() == want.lr.tobytes()
    assert got.indices.tobytes() == np.arange(20_011, dtype=np.int64).tobytes()
    assert got.momentum is not None and want.momentum is not None
    assert got.momentum.tobytes() == want.momentum.tobytes()


@pytest.mark.parametrize("lr", [0.1, 1e305], ids=["bounded", "unbounded"])
def test_threads_writing_the_steps_give_the_same_bits(monkeypatch, lr):
    """Chunks taken by two threads, the steps written by them (a length past the cached
    indices), and an lr too large for the kernel to know its values finite (then checked)."""
    body = {**warmup_cosine(30_001), "optimizer": {"type": "SGD", "lr": lr}}
    body["param_groups"] = [{"lr": lr}, {"lr": lr / 3}]
    want = generic(body)
    monkeypatch.setattr(fast, "CHUNK", 100)
    monkeypatch.setattr(fast, "THREADS_MIN", 1000)
    monkeypatch.setattr(fast, "THREADS", 2)
    monkeypatch.setattr(service, "DENSE_INDICES_MAX", 1000)
    service.plans.clear()
    request = specs.ScheduleRequest.model_validate(body)
    plan = service.plans.get(request, service.choose_engine(request))
    assert plan.fast is not None
    assert plan.fast.kernel._finite is (lr < 1e300)
    for _ in range(2):
        got = service.compute(request, SETTINGS)
        assert got.lr.tobytes() == want.lr.tobytes()
        assert got.indices.tobytes() == np.arange(30_001, dtype=np.int64).tobytes()
        assert got.final_lr == want.final_lr


def test_torch_cos_gives_each_value_the_same_bits_wherever_it_sits():
    """The kernel's premise: chunks of a tensor get the bits the whole tensor gets."""
    x = torch.from_numpy(np.random.default_rng(0).random(70_001) * math.pi)
    whole = torch.cos(x).numpy()
    for size in (1, 3, 7, 8, 9, 17, 64, 1000, 16_385):
        for offset in (0, 1, 5, 12_345, 50_000):
            part = x[offset : offset + size].clone().cos_().numpy()
            assert part.tobytes() == whole[offset : offset + size].tobytes(), (size, offset)


def test_a_reused_plan_returns_fresh_arrays():
    request = specs.ScheduleRequest.model_validate(warmup_cosine(2000))
    first = service.compute(request, SETTINGS)
    kept = first.lr.copy()
    first.lr[:] = -1.0
    first.warnings.append("mutated")
    second = service.compute(request, SETTINGS)
    assert second.lr.tobytes() == kept.tobytes()
    assert "mutated" not in second.warnings


def test_plans_tell_a_default_from_the_same_value_set():
    """The warnings depend on which fields were given, not only on their values."""
    cyclic = {"type": "CyclicLR", "base_lr": 0.001, "max_lr": 0.1, "cycle_momentum": False}
    implicit = specs.ScheduleRequest.model_validate({"scheduler": cyclic, "steps": 50})
    explicit = specs.ScheduleRequest.model_validate(
        {"scheduler": cyclic, "steps": 50, "optimizer": {"type": "SGD", "lr": 0.1}}
    )
    assert implicit.model_dump_json() == explicit.model_dump_json()
    a = service.compute(implicit, SETTINGS)
    b = service.compute(explicit, SETTINGS)
    assert a.warnings != b.warnings
    assert service.compute(implicit, SETTINGS).warnings == a.warnings


@pytest.mark.parametrize(
    "body",
    [
        {**warmup_cosine(200_000), "accumulation_steps": 2},
        {**warmup_cosine(5000), "skipped_steps": [0, 7]},
        {
            "scheduler": {"type": "ReduceLROnPlateau", "patience": 1},
            "steps": 400,
            "metrics": [1.0] * 400,
        },
        {
            "scheduler": {"type": "MultiStepLR", "milestones": list(range(1, 4000)), "gamma": 0.99},
            "steps": 5000,
        },
    ],
    ids=["counters", "skipped-steps", "metric-scan", "long-key"],
)
def test_plans_that_hold_a_request_sized_array_or_key_are_not_kept(body):
    """A plan with counters holds its step columns (up to the step limit) and a metric scan
    the whole series: 64 of them kept could hold gigabytes; they are computed every call."""
    request = specs.ScheduleRequest.model_validate(body)
    first = service.compute(request, SETTINGS)
    assert service.plans.find(service.plans.key(request)) is None
    second = service.compute(request, SETTINGS)
    assert second.lr.tobytes() == first.lr.tobytes()
    assert second.indices is not first.indices


def test_a_reused_plan_still_meets_each_settings_limits():
    request = specs.ScheduleRequest.model_validate(warmup_cosine(5000))
    service.compute(request, SETTINGS)
    tight = Settings(vectorized_max_steps=1000)
    with pytest.raises(LimitExceeded, match="LRS_VECTORIZED_MAX_STEPS"):
        service.compute(request, tight)
    with pytest.raises(LimitExceeded, match="LRS_VECTORIZED_MAX_COST"):
        service.compute(request, Settings(vectorized_max_cost=10))


@pytest.mark.parametrize(
    "body",
    [
        warmup_cosine(3000),
        {**warmup_cosine(3000), "warmup": {"type": "linear", "steps": 30, "start_factor": 0.1}},
        {"scheduler": {"type": "CosineAnnealingLR", "T_max": 900, "eta_min": 1e-4}, "steps": 1000},
        {**warmup_cosine(3000), "sample": {"points": 100}, "include": ["momentum"]},
    ],
)
def test_a_batch_compiles_specs_differing_only_in_lr_twice(monkeypatch, body):
    """The first two are compiled (the second checks the derivation), the rest derived; each
    slot still holds the bits its spec alone gets."""
    compiled = []
    real = vectorized.compile_request

    def counting(*args, **kwargs):
        compiled.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(vectorized, "compile_request", counting)
    bodies = [
        {**body, "optimizer": {"type": "SGD", "lr": lr, "momentum": 0.9}}
        for lr in (0.1, 0.37, 1e-3, 2.5, 0.0, 0.1 + 1e-12)
    ]
    requests = [specs.ScheduleRequest.model_validate(b) for b in bodies]
    batched = service.compute_many(list(requests), SETTINGS)
    assert len(compiled) == 2
    service.plans.clear()
    for request, slot in zip(requests, batched, strict=True):
        alone = service.compute(request, SETTINGS)
        assert isinstance(slot, service.Computed)
        assert slot.lr.tobytes() == alone.lr.tobytes()
        assert slot.final_lr == alone.final_lr
        assert slot.warnings == alone.warnings
        if alone.momentum is not None:
            assert slot.momentum is not None
            assert slot.momentum.tobytes() == alone.momentum.tobytes()


def test_a_stacked_npy_body_is_what_np_save_writes():
    from service.negotiation import npy_bytes
    from service.schedules.batch import stacked_npy

    rng = np.random.default_rng(1)
    rows = [rng.random((2, 777)) for _ in range(5)]
    assert stacked_npy(rows) == npy_bytes(np.stack(rows))
    rows32 = [r.astype(np.float32) for r in rows]  # float32 rows are widened, as astype did
    assert stacked_npy(rows32) == npy_bytes(np.stack(rows32).astype(np.float64))


def test_an_lr_sweep_sharing_its_cosine_factor_keeps_each_specs_bits():
    """Specs of one T_max and length share the cached 1 + cos(pi e / T_max) row (each lr
    scaling it): every spec, sampled or not, gives the generic bits; another T_max, another
    length or a shifted warmup gets its own row."""
    fast._factors.clear()
    bodies = []
    for lr in (0.1, 0.3, 2.5e-4, 0.0, 1e-250, 1e305):
        body = warmup_cosine(3000)
        body["optimizer"] = {"type": "SGD", "lr": lr}
        bodies += [body, {**body, "sample": {"every": 11}}]
    bodies += [
        {**warmup_cosine(3000), "scheduler": {"type": "CosineAnnealingLR", "T_max": 2000}},
        {**warmup_cosine(3000), "warmup": {"type": "linear", "steps": 45, "start_factor": 0.0}},
        warmup_cosine(2999),
        {**warmup_cosine(3000), "param_groups": [{"lr": 0.1}, {"lr": 0.02}]},
    ]
    for body in bodies:
        service.plans.clear()
        assert_same_bits(body)
    assert len(fast._factors._cached) > 2  # rows were cached, and reused
