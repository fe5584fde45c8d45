"""Batches stack specs of one structure into one tensor computation, bit for bit.

Every parity case (and every refusal) is sent in a batch with variants of itself that differ
only in their lrs, so the engine stacks them; each slot must hold exactly the values, the
warnings and the error that the spec alone gets.
"""

from typing import Any

import numpy as np
import pytest
import torch

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


def test_a_batch_of_distinct_specs_gives_each_spec_its_own_bits():
    # every parity case and refusal once: no two stack, each is evaluated alone in the batch
    # (the whole batch is one computation: its time limit raised for a loaded machine)
    bodies = [param.values[0] for param in PARITY + ERRORS]
    requests = [specs.ScheduleRequest.model_validate(b) for b in bodies]
    roomy = SETTINGS.model_copy(update={"compute_max_seconds": 600.0})
    batched = service.compute_many(list(requests), roomy)
    for request, slot in zip(requests, batched, strict=True):
        _assert_same(_alone(request), slot)


def _sweep() -> list[dict[str, Any]]:
    """Specs that differ in a scalar scheduler parameter or a warmup's length (and lr),
    edge values included: T_max shorter than the schedule (the cosine rises again), a
    warmup as long as the schedule, a gamma whose lr overflows."""
    sgd = {"type": "SGD", "lr": 0.1, "momentum": 0.9}
    out: list[dict[str, Any]] = []
    for t_max in (1, 37, 150, 299, 300, 5000):
        out.append({"scheduler": {"type": "CosineAnnealingLR", "T_max": t_max}, "steps": 300})
    for t_max, eta in ((100, 0.0), (100, 1e-3), (250, 0.05), (20, 0.2)):
        cosine = {"type": "CosineAnnealingLR", "T_max": t_max, "eta_min": eta}
        out.append({"optimizer": sgd, "scheduler": cosine, "steps": 300})
    for warm, start in ((1, 0.0), (10, 0.0), (50, 0.0), (299, 0.0), (300, 0.0), (400, 0.0)):
        for t_max in (290, 200):
            out.append(
                {
                    "optimizer": {**sgd, "lr": 0.1 + warm * 1e-4},
                    "scheduler": {"type": "CosineAnnealingLR", "T_max": t_max},
                    "warmup": {"type": "linear", "steps": warm, "start_factor": start},
                    "steps": 300,
                    "include": ["momentum"],
                }
            )
    for warm in (5, 25, 60):
        out.append(
            {
                "scheduler": {"type": "CosineAnnealingLR", "T_max": 300 - warm},
                "warmup": {"type": "linear", "steps": warm, "start_factor": 0.25},
                "steps": 300,
            }
        )
    for step_size, gamma in ((1, 0.9), (7, 0.5), (30, 0.65), (30, 1.5), (400, 0.1), (3, 1e200)):
        out.append(
            {"scheduler": {"type": "StepLR", "step_size": step_size, "gamma": gamma}, "steps": 300}
        )
    for gamma in (0.98, 0.5, 1.01, 1e300):
        out.append({"scheduler": {"type": "ExponentialLR", "gamma": gamma}, "steps": 300})
    # schedules whose build reads their span (steps - the warmup's): compiled per warmup
    for warm in (10, 20, 30):
        for scheduler in (
            {"type": "OneCycleLR", "max_lr": 0.1},
            {"type": "noam", "d_model": 512, "warmup_steps": 40},
        ):
            out.append(
                {"scheduler": scheduler, "warmup": {"type": "linear", "steps": warm}, "steps": 300}
            )
    for warm in (10, 20):
        out.append(
            {
                "scheduler": {"type": "StepLR", "step_size": 40 + warm, "gamma": 0.5},
                "warmup": {"type": "linear", "steps": warm},
                "steps": 300,
                "sample": {"every": 7},
            }
        )
    return out


def test_a_parameter_sweep_gives_each_spec_its_own_bits():
    bodies = _sweep()
    requests = [specs.ScheduleRequest.model_validate(b) for b in bodies]
    batched = service.compute_many(list(requests), SETTINGS)
    for request, slot in zip(requests, batched, strict=True):
        _assert_same(_alone(request), slot)
    assert any(isinstance(slot, ServiceError) for slot in batched)  # the overflowing gammas


def test_a_parameter_sweep_is_compiled_twice_per_kind(monkeypatch):
    from service.schedules.vectorized import compile as vectorized

    calls = []
    compile_request = vectorized.compile_request

    def counting(request, n, device):
        calls.append(request.scheduler.type)
        return compile_request(request, n, device)

    monkeypatch.setattr(vectorized, "compile_request", counting)
    bodies = [
        {
            "scheduler": {"type": "CosineAnnealingLR", "T_max": 1000 - i},
            "warmup": {"type": "linear", "steps": 10 + i},
            "steps": 1000,
        }
        for i in range(30)
    ] + [
        {"scheduler": {"type": "StepLR", "step_size": 10 + i, "gamma": 0.5 + i / 100}, "steps": 500}
        for i in range(30)
    ]
    requests = [specs.ScheduleRequest.model_validate(b) for b in bodies]
    out = service.compute_many(list(requests), SETTINGS)
    assert all(isinstance(slot, service.Computed) for slot in out)
    assert sorted(calls) == ["CosineAnnealingLR"] * 2 + ["StepLR"] * 2
    for request, slot in zip(requests[::7], out[::7], strict=True):
        _assert_same(_alone(request), slot)


def test_a_mixed_parameter_batch_matches_real_torch_schedulers():
    from torch.optim import lr_scheduler as L

    from tests.schedules.helpers import torch_loop
    from tests.schedules.test_vectorized import assert_close

    steps = 2000
    cases: list[tuple[dict[str, Any], Any]] = []
    for i, t_max in enumerate((500, 1999, 1234, 700)):
        warm = 10 + 37 * i

        def make(opt, t_max=t_max, warm=warm, eta=1e-4 * i):
            first = L.LambdaLR(opt, lambda e, w=warm: e / w)
            main = L.CosineAnnealingLR(opt, T_max=t_max, eta_min=eta)
            return L.SequentialLR(opt, [first, main], milestones=[warm])

        body = {
            "optimizer": {"type": "SGD", "lr": 0.1 * (i + 1)},
            "scheduler": {"type": "CosineAnnealingLR", "T_max": t_max, "eta_min": 1e-4 * i},
            "warmup": {"type": "linear", "steps": warm, "start_factor": 0.0},
            "steps": steps,
        }
        cases.append((body, (make, 0.1 * (i + 1))))
    for step_size, gamma in ((100, 0.5), (333, 0.9), (7, 0.99)):
        body = {
            "scheduler": {"type": "StepLR", "step_size": step_size, "gamma": gamma},
            "steps": steps,
        }
        make = lambda opt, s=step_size, g=gamma: L.StepLR(opt, step_size=s, gamma=g)  # noqa: E731
        cases.append((body, (make, 0.1)))
    for t_max in (300, 3000):
        body = {"scheduler": {"type": "CosineAnnealingLR", "T_max": t_max}, "steps": steps}
        make = lambda opt, t=t_max: L.CosineAnnealingLR(opt, T_max=t)  # noqa: E731
        cases.append((body, (make, 0.1)))
    requests = [specs.ScheduleRequest.model_validate(body) for body, _ in cases]
    out = service.compute_many(list(requests), SETTINGS)
    for (_body, (make, lr)), request, slot in zip(cases, requests, out, strict=True):
        assert isinstance(slot, service.Computed), slot
        lrs, _ = torch_loop(make, steps, lr=lr)
        assert_close(lrs, slot.lr)
        _assert_same(_alone(request), slot)


def test_programs_differing_in_any_tensor_are_not_the_same():
    from service.schedules.vectorized import batch as vectorized_batch
    from service.schedules.vectorized import compile as vectorized

    def program(max_lr: float) -> Program:
        body = {
            "scheduler": {"type": "CyclicLR", "base_lr": 0.001, "max_lr": max_lr},
            "steps": 100,
        }
        request = specs.ScheduleRequest.model_validate(body)
        return vectorized.compile_request(request, 100, torch.device("cpu"))

    assert vectorized_batch.same_program(program(0.1), program(0.1))
    assert not vectorized_batch.same_program(program(0.1), program(0.2))
