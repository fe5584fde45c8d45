"""A shared compilation (a batch's, or single requests' sweep templates) is never learned
from a spec whose step-0 value fits more than one rule: specs with lr 0 (every rule gives 0)
used to teach a template that gave every later spec of the kind an lr of 0 at step 0 and,
from there, zeros throughout (in a batch, and across clients for single requests). And a
-0.0 is not stacked with a 0.0. Every value is compared bit for bit with the generic
evaluation of a freshly compiled program, and with the torch engine (torch's real objects
stepped in the test) within the vectorized engine's parity tolerance."""

from typing import Any

import numpy as np
import pytest

from service.schedules import service, specs
from service.settings import Settings
from tests.schedules.test_vectorized import assert_close
from tests.schedules.vectorized.test_fast import generic

SETTINGS = Settings()

WARMUPS = [
    None,
    {"type": "linear", "steps": 5, "start_factor": 0.5},
    {"type": "linear", "steps": 5, "start_factor": 0.0},
]


@pytest.fixture(autouse=True)
def fresh():
    service.plans.clear()
    service.lr_templates.clear()
    yield
    service.plans.clear()
    service.lr_templates.clear()


def body(lr: float, t_max: int, warmup: dict | None, engine: str = "vectorized") -> Any:
    out: dict[str, Any] = {
        "optimizer": {"type": "SGD", "lr": lr},
        "scheduler": {"type": "CosineAnnealingLR", "T_max": t_max},
        "steps": 40,
        "engine": engine,
    }
    if warmup:
        out["warmup"] = warmup
    return out


def cosine(lr: float, t_max: int, warmup: dict | None) -> specs.ScheduleRequest:
    return specs.ScheduleRequest.model_validate(body(lr, t_max, warmup))


def check(got: service.Computed, lr: float, t_max: int, warmup: dict | None) -> None:
    """``got`` has the bits of a fresh compilation and torch's values."""
    fresh = generic(body(lr, t_max, warmup))
    assert np.asarray(got.lr).tobytes() == np.asarray(fresh.lr).tobytes(), (lr, t_max)
    torch = service.compute(
        specs.ScheduleRequest.model_validate(body(lr, t_max, warmup, "torch")), SETTINGS
    )
    assert_close(torch.lr, got.lr)


SWEEPS = [
    [(0.0, 10), (0.0, 20), (0.1, 30), (0.37, 12)],
    [(0.0, 10), (0.0, 10), (0.1, 10)],
    [(5e-324, 10), (5e-324, 20), (0.1, 30)],
]


@pytest.mark.parametrize("warmup", WARMUPS)
@pytest.mark.parametrize("sweep", SWEEPS)
def test_a_batch_after_lr_zero_specs_gives_each_spec_its_own_values(sweep, warmup):
    batch = [cosine(lr, t, warmup) for lr, t in sweep]
    got = service.compute_many(batch, SETTINGS)
    for (lr, t), computed in zip(sweep, got, strict=True):
        check(computed, lr, t, warmup)


@pytest.mark.parametrize("warmup", WARMUPS)
@pytest.mark.parametrize("sweep", SWEEPS)
def test_single_requests_after_lr_zero_specs_give_their_own_values(sweep, warmup):
    for lr, t in sweep:
        check(service.compute(cosine(lr, t, warmup), SETTINGS), lr, t, warmup)


@pytest.mark.parametrize("kind", ["ExponentialLR", "StepLR"])
def test_a_negative_zero_gamma_is_not_stacked_with_a_zero_gamma(kind):
    def spec(gamma: float, engine: str = "vectorized") -> dict[str, Any]:
        scheduler: dict[str, Any] = {"type": kind, "gamma": gamma}
        if kind == "StepLR":
            scheduler["step_size"] = 1
        return {"scheduler": scheduler, "steps": 6, "engine": engine}

    batch = [specs.ScheduleRequest.model_validate(spec(g)) for g in (0.0, -0.0)]
    got = service.compute_many(batch, SETTINGS)
    for gamma, computed in zip((0.0, -0.0), got, strict=True):
        torch = service.compute(
            specs.ScheduleRequest.model_validate(spec(gamma, "torch")), SETTINGS
        )
        # torch keeps the sign: 0.1 × -0.0 is -0.0 (the values compare equal, their bits not)
        assert np.asarray(computed.lr).tobytes() == np.asarray(torch.lr).tobytes(), gamma


def test_an_lr_of_negative_zero_after_a_sweep_keeps_its_sign():
    warmup = {"type": "linear", "steps": 3, "start_factor": 0.0}
    for lr in (0.1, 0.2):
        service.compute(cosine(lr, 9, warmup), SETTINGS)
    got = service.compute(cosine(-0.0, 9, warmup), SETTINGS)
    check(got, -0.0, 9, warmup)


def test_a_derived_spec_again_is_the_same_answer():
    """A sweep kind once verified, its specs are derived, and the same spec again is served
    by its kept plan (apart from the compiled plans): the bits of a freshly compiled program
    and the values and warnings of real torch (the torch engine), for the lr given or left to
    its default (0.1); an eta_min of -0.0 and of 0.0 each get their own (-0.0 == 0.0: the key
    holds a zero's sign)."""

    def cosine(lr: float | None, eta_min: float = 0.0, engine: str = "vectorized") -> Any:
        raw = body(0.1 if lr is None else lr, 90, None, engine)
        raw["scheduler"]["eta_min"] = eta_min
        if lr is None:
            del raw["optimizer"]["lr"]
        return raw

    cases = [(lr, 0.0) for lr in (0.3, 0.2, 0.1, 0.1, None, None)]
    cases += [(0.2, eta_min) for eta_min in (0.0, -0.0, 0.0, -0.0)]
    for lr, eta_min in cases:
        out = service.compute(specs.ScheduleRequest.model_validate(cosine(lr, eta_min)), SETTINGS)
        raw = cosine(lr, eta_min, "torch")
        real = service.compute(specs.ScheduleRequest.model_validate(raw), SETTINGS)
        assert_close(real.lr, out.lr)
        assert out.warnings == real.warnings, (lr, eta_min)
        want = generic(cosine(lr, eta_min))
        assert out.lr.tobytes() == want.lr.tobytes(), (lr, eta_min)
    assert service.plans._derived, "the derived path was not taken"
