"""Batches stack specs of one structure into one tensor computation, bit for bit.

Every parity case (and every refusal) is sent in a batch with variants of itself that differ
only in their lrs, so the engine stacks them; each slot must hold exactly the values, the
warnings and the error that the spec alone gets.
"""

from typing import Any

import numpy as np
import pytest

from service.errors import ServiceError
from service.schedules import service, specs
from service.schedules.vectorized.evaluation import Program
from service.settings import Settings
from tests.schedules.test_vectorized import ERRORS, PARITY

SETTINGS = Settings()


def _lr_variant(body: dict[str, Any], factor: float) -> dict[str, Any]:
    optimizer = {**body.get("optimizer", {"type": "SGD", "lr": 0.1})}
    optimizer["lr"] = optimizer.get("lr", 0.1) * factor
    out = {**body, "optimizer": optimizer}
    if "param_groups" in body:
        out["param_groups"] = [{**g, "lr": g["lr"] * factor} for g in body["param_groups"]]
    return out


def _alone(request: specs.ScheduleRequest) -> service.Computed | ServiceError:
    try:
        return service.compute(request, SETTINGS)
    except ServiceError as exc:
        return exc


def _assert_same(alone: service.Computed | ServiceError, batched: object) -> None:
    if isinstance(alone, ServiceError):
        assert isinstance(batched, ServiceError), batched
        assert (type(batched), batched.detail, batched.errors) == (
            type(alone),
            alone.detail,
            alone.errors,
        )
        return
    assert isinstance(batched, service.Computed), batched
    assert np.array_equal(batched.indices, alone.indices)
    assert batched.lr.tobytes() == alone.lr.tobytes()
    if alone.momentum is None:
        assert batched.momentum is None
    else:
        assert batched.momentum is not None
        assert batched.momentum.tobytes() == alone.momentum.tobytes()
    assert batched.final_lr == alone.final_lr
    assert (batched.engine, batched.device, batched.warnings) == (
        alone.engine,
        alone.device,
        alone.warnings,
    )


@pytest.mark.parametrize("body", PARITY + ERRORS)
def test_a_stacked_batch_gives_each_spec_its_own_bits(body):
    bodies = [_lr_variant(body, f) for f in (1.0, 0.5, 3.0, 1e-3)] + [body]
    requests = [specs.ScheduleRequest.model_validate(b) for b in bodies]
    batched = service.compute_many(list(requests), SETTINGS)
    for request, slot in zip(requests, batched, strict=True):
        _assert_same(_alone(request), slot)


def test_same_structure_is_evaluated_once(monkeypatch):
    calls = []
    evaluate = Program.evaluate

    def counting(self, k):
        calls.append(self.lr0.shape[0])
        return evaluate(self, k)

    monkeypatch.setattr(Program, "evaluate", counting)
    body = {
        "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
        "scheduler": {"type": "CosineAnnealingLR", "T_max": 990},
        "warmup": {"type": "linear", "steps": 10, "start_factor": 0.0},
        "steps": 1000,
    }
    other = {"scheduler": {"type": "StepLR", "step_size": 3}, "steps": 50}
    bodies = [_lr_variant(body, 1 + i / 10) for i in range(20)] + [other]
    requests = [specs.ScheduleRequest.model_validate(b) for b in bodies]
    out = service.compute_many(list(requests), SETTINGS)
    assert all(isinstance(slot, service.Computed) for slot in out)
    assert sorted(calls) == [1, 20]


def test_a_bad_spec_in_a_stack_fails_only_its_slot():
    good = {"scheduler": {"type": "ExponentialLR", "gamma": 0.99}, "steps": 100}
    bad = {"scheduler": {"type": "ExponentialLR", "gamma": 1e300}, "steps": 100}
    requests = [specs.ScheduleRequest.model_validate(b) for b in (good, bad, good)]
    out = service.compute_many(list(requests), SETTINGS)
    for request, slot in zip(requests, out, strict=True):
        _assert_same(_alone(request), slot)
    assert isinstance(out[1], ServiceError)


def test_batch_as_npy_is_one_array_of_every_spec(client):
    import io

    bodies = [
        {"scheduler": {"type": "CosineAnnealingLR", "T_max": 50}, "steps": 100},
        {"scheduler": {"type": "StepLR", "step_size": 3}, "steps": 100},
    ]
    r = client.post("/v1/schedules/batch?format=npy", json={"requests": bodies})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-npy"
    array = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert array.shape == (2, 1, 100) and array.dtype == np.float64
    slots = client.post("/v1/schedules/batch", json={"requests": bodies}).json()["results"]
    for row, slot in zip(array, slots, strict=True):
        assert row.tolist() == slot["result"]["lr"]


def test_batch_as_npy_needs_every_spec_to_succeed_with_one_shape(client):
    good = {"scheduler": {"type": "CosineAnnealingLR", "T_max": 50}, "steps": 100}
    bad = {"scheduler": {"type": "StepLR"}, "steps": 100}
    r = client.post("/v1/schedules/batch?format=npy", json={"requests": [good, bad]})
    assert r.status_code == 422
    assert "requests[1]" in r.json()["detail"] and "format=json" in r.json()["detail"]
    short = {**good, "steps": 50}
    r = client.post("/v1/schedules/batch?format=npy", json={"requests": [good, short]})
    assert r.status_code == 422
    assert "shapes" in r.json()["detail"] and "format=json" in r.json()["detail"]
