"""pytorch_warmup's warmups (``warmup.type``) against the real library, stepped in the test.

The loop is the library's README loop: the scheduler is built first, the warmup after it,
and every step runs ``with warmup.dampening(): scheduler.step()``. pytorch-warmup 0.2.0 (the
release pyproject pins). Torch engine: identical floats; vectorized: within 1e-9 relative.
"""

import warnings

import numpy as np
import pytest
import pytorch_warmup
import torch
from torch.optim import lr_scheduler as L

from tests.schedules.helpers import torch_loop


def _loop(make_scheduler, make_warmup, steps, optimizer, groups, metrics=None):
    params = [{"params": [torch.nn.Parameter(torch.zeros(1, 1))], **g} for g in (groups or [{}])]
    opt = getattr(torch.optim, optimizer["type"])(
        params, **{k: v for k, v in optimizer.items() if k != "type"}
    )
    lrs: list[list[float]] = [[] for _ in opt.param_groups]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = make_scheduler(opt)
        warmup = make_warmup(opt)
        for i in range(steps):
            for g, group in enumerate(opt.param_groups):
                lrs[g].append(group["lr"])
            if i + 1 < steps:
                with warmup.dampening():
                    if metrics is None:
                        scheduler.step()
                    else:
                        scheduler.step(metrics[i])
    return lrs


ADAM = {"type": "Adam", "lr": 0.001}
ADAM_GROUPS = [
    {"lr": 0.001, "betas": [0.9, 0.999]},
    {"lr": 0.01, "betas": [0.9, 0.99]},
    {"lr": 0.1, "betas": [0.5, 0.7]},
]
SGD = {"type": "SGD", "lr": 0.1}

# (id, warmup spec, library factory, scheduler spec, torch factory, steps, optimizer, groups)
CASES = [
    ("linear-period", {"type": "linear", "warmup_period": 20}, lambda o: pytorch_warmup.LinearWarmup(o, warmup_period=20),
     {"type": "CosineAnnealingLR", "T_max": 50}, lambda o: L.CosineAnnealingLR(o, T_max=50), 80, SGD, None),
    ("linear-period-1", {"type": "linear", "warmup_period": 1}, lambda o: pytorch_warmup.LinearWarmup(o, warmup_period=1),
     {"type": "StepLR", "step_size": 5}, lambda o: L.StepLR(o, step_size=5), 20, SGD, None),
    ("linear-period-per-group", {"type": "linear", "warmup_period": [5, 30]},
     lambda o: pytorch_warmup.LinearWarmup(o, warmup_period=[5, 30]),
     {"type": "ExponentialLR", "gamma": 0.97}, lambda o: L.ExponentialLR(o, gamma=0.97), 50, SGD, [{"lr": 0.1}, {"lr": 0.02}]),
    ("exponential", {"type": "exponential", "warmup_period": 10}, lambda o: pytorch_warmup.ExponentialWarmup(o, warmup_period=10),
     {"type": "CosineAnnealingLR", "T_max": 40, "eta_min": 0.01}, lambda o: L.CosineAnnealingLR(o, T_max=40, eta_min=0.01), 60, SGD, None),
    ("exponential-groups", {"type": "exponential", "warmup_period": [1, 7, 100]},
     lambda o: pytorch_warmup.ExponentialWarmup(o, warmup_period=[1, 7, 100]),
     {"type": "LinearLR", "start_factor": 1.0, "end_factor": 0.1, "total_iters": 30},
     lambda o: L.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=30), 40, ADAM, ADAM_GROUPS),
    ("exponential-long", {"type": "exponential", "warmup_period": 1000},
     lambda o: pytorch_warmup.ExponentialWarmup(o, warmup_period=1000),
     {"type": "ConstantLR", "factor": 1.0, "total_iters": 0}, lambda o: L.ConstantLR(o, factor=1.0, total_iters=0), 30, SGD, None),
    ("untuned-linear", {"type": "untuned_linear"}, lambda o: pytorch_warmup.UntunedLinearWarmup(o),
     {"type": "StepLR", "step_size": 1500, "gamma": 0.5}, lambda o: L.StepLR(o, step_size=1500, gamma=0.5), 2100, ADAM, None),
    ("untuned-linear-groups", {"type": "untuned_linear"}, lambda o: pytorch_warmup.UntunedLinearWarmup(o),
     {"type": "CosineAnnealingLR", "T_max": 300}, lambda o: L.CosineAnnealingLR(o, T_max=300), 300, ADAM, ADAM_GROUPS),
    ("untuned-linear-adamw", {"type": "untuned_linear"}, lambda o: pytorch_warmup.UntunedLinearWarmup(o),
     {"type": "ExponentialLR", "gamma": 0.999}, lambda o: L.ExponentialLR(o, gamma=0.999), 50,
     {"type": "AdamW", "lr": 0.003, "betas": [0.9, 0.95]}, None),
    ("untuned-exp", {"type": "untuned_exponential"}, lambda o: pytorch_warmup.UntunedExponentialWarmup(o),
     {"type": "CosineAnnealingLR", "T_max": 2000}, lambda o: L.CosineAnnealingLR(o, T_max=2000), 1200, ADAM, None),
    ("untuned-exp-groups", {"type": "untuned_exponential"}, lambda o: pytorch_warmup.UntunedExponentialWarmup(o),
     {"type": "StepLR", "step_size": 10}, lambda o: L.StepLR(o, step_size=10), 60, ADAM, ADAM_GROUPS),
    ("untuned-exp-nadam", {"type": "untuned_exponential"}, lambda o: pytorch_warmup.UntunedExponentialWarmup(o),
     {"type": "ConstantLR", "factor": 0.5, "total_iters": 3}, lambda o: L.ConstantLR(o, factor=0.5, total_iters=3), 20,
     {"type": "NAdam", "lr": 0.002, "betas": [0.9, 0.9]}, None),
    ("radam", {"type": "radam"}, lambda o: pytorch_warmup.RAdamWarmup(o),
     {"type": "CosineAnnealingLR", "T_max": 500}, lambda o: L.CosineAnnealingLR(o, T_max=500), 400, ADAM, None),
    ("radam-groups", {"type": "radam"}, lambda o: pytorch_warmup.RAdamWarmup(o),
     {"type": "ExponentialLR", "gamma": 0.99}, lambda o: L.ExponentialLR(o, gamma=0.99), 100, ADAM, ADAM_GROUPS),
    ("radam-beta-0.61", {"type": "radam"}, lambda o: pytorch_warmup.RAdamWarmup(o),
     {"type": "StepLR", "step_size": 7}, lambda o: L.StepLR(o, step_size=7), 30, {"type": "Adam", "lr": 0.01, "betas": [0.9, 0.61]}, None),
]  # fmt: skip


def _body(warmup, scheduler, steps, optimizer, groups, engine):
    body = {
        "optimizer": optimizer,
        "scheduler": scheduler,
        "warmup": warmup,
        "steps": steps,
        "engine": engine,
    }
    if groups:
        body["param_groups"] = groups
    return body


@pytest.mark.parametrize(("case", "warmup", "make_warmup", "sched", "make_sched", "steps", "optimizer", "groups"),
                         CASES, ids=[c[0] for c in CASES])  # fmt: skip
def test_both_engines_match_the_real_library(
    client, case, warmup, make_warmup, sched, make_sched, steps, optimizer, groups
):
    want = _loop(make_sched, make_warmup, steps, optimizer, groups)
    torch_run = client.post(
        "/v1/schedules/compute", json=_body(warmup, sched, steps, optimizer, groups, "torch")
    )
    assert torch_run.status_code == 200, torch_run.text
    assert torch_run.json()["lr"] == want
    assert {"family": "pytorch_warmup", "library": "pytorch-warmup", "version": "0.2.0"} in torch_run.json()["families"]  # fmt: skip
    closed = client.post(
        "/v1/schedules/compute", json=_body(warmup, sched, steps, optimizer, groups, "vectorized")
    )
    assert closed.status_code == 200, closed.text
    assert closed.json()["engine"] == "vectorized"
    np.testing.assert_allclose(closed.json()["lr"], want, rtol=1e-9, atol=0)


def test_warmup_dampens_a_transformers_schedule_and_a_plateau(client):
    """The warmup multiplies whatever lr the scheduler set, a family's or a metric-driven one."""
    from transformers.optimization import get_scheduler

    hf = {"type": "transformers", "name": "linear", "num_warmup_steps": 0, "num_training_steps": 60}
    want = _loop(
        lambda o: get_scheduler("linear", o, 0, 60),
        lambda o: pytorch_warmup.ExponentialWarmup(o, 8),
        60,
        SGD,
        None,
    )
    for engine in ("torch", "vectorized"):
        got = client.post(
            "/v1/schedules/compute",
            json=_body({"type": "exponential", "warmup_period": 8}, hf, 60, SGD, None, engine),
        )
        np.testing.assert_allclose(
            got.json()["lr"], want, rtol=1e-9 if engine == "vectorized" else 0, atol=0
        )
    metrics = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    want = _loop(lambda o: L.ReduceLROnPlateau(o, patience=1, factor=0.5), lambda o: pytorch_warmup.LinearWarmup(o, 4),
                 9, SGD, None, metrics=metrics)  # fmt: skip
    body = _body(
        {"type": "linear", "warmup_period": 4},
        {"type": "ReduceLROnPlateau", "patience": 1, "factor": 0.5},
        9,
        SGD,
        None,
        "auto",
    )
    got = client.post("/v1/schedules/compute", json={**body, "metrics": metrics})
    assert got.status_code == 200, got.text
    assert got.json()["lr"] == want


def test_linear_with_steps_keeps_its_meaning(client):
    """``linear`` with ``steps`` is still the service's own ramp before the scheduler."""
    lrs, _ = torch_loop(
        lambda o: L.SequentialLR(
            o, [L.LambdaLR(o, lambda e: e / 5), L.StepLR(o, 3)], milestones=[5]
        ),
        20,
    )
    got = client.post("/v1/schedules/compute", json={"scheduler": {"type": "StepLR", "step_size": 3},
                                                     "warmup": {"type": "linear", "steps": 5}, "steps": 20, "engine": "torch"})  # fmt: skip
    assert got.json()["lr"] == lrs
    assert got.json()["families"] == []


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"type": "untuned_linear"}, ["body", "warmup", "type"], "has none"),
        ({"type": "radam"}, ["body", "warmup", "type"], "has none"),
        (
            {"type": "linear", "warmup_period": [3, 4]},
            ["body", "warmup", "warmup_period"],
            "2 periods for 1",
        ),
        (
            {"type": "linear", "warmup_period": 0},
            ["body", "warmup", "warmup_period"],
            "positive integer",
        ),
        (
            {"type": "linear", "warmup_period": 5, "steps": 5},
            ["body", "warmup", "steps"],
            "unknown field 'steps'; linear takes: warmup_period",
        ),
        ({"type": "expo", "warmup_period": 5}, ["body", "warmup"], "Did you mean 'exponential'?"),
        ({"type": "untuned_liner"}, ["body", "warmup"], "Did you mean 'untuned_linear'?"),
    ],
)
def test_bad_warmups_are_422_naming_the_field(client, body, field, words):
    got = client.post(
        "/v1/schedules/compute",
        json={"scheduler": {"type": "StepLR", "step_size": 3}, "warmup": body, "steps": 10},
    )
    assert got.status_code == 422, got.text
    assert got.headers["content-type"] == "application/problem+json"
    problem = got.json()
    locs = [e["loc"] for e in problem.get("errors", [])] or [problem.get("loc")]
    assert field in locs or field == problem.get("errors", [{}])[0].get("loc"), problem
    assert words in problem["detail"], problem


def test_radam_refuses_a_small_beta2_like_the_library(client):
    with pytest.raises(ValueError, match=r"must be greater than 0\.6"):
        _loop(
            lambda o: L.StepLR(o, 3),
            pytorch_warmup.RAdamWarmup,
            5,
            {"type": "Adam", "lr": 0.1, "betas": [0.9, 0.5]},
            None,
        )
    got = client.post("/v1/schedules/compute", json=_body({"type": "radam"}, {"type": "StepLR", "step_size": 3}, 5,
                                                          {"type": "Adam", "lr": 0.1, "betas": [0.9, 0.5]}, None, "auto"))  # fmt: skip
    assert got.status_code == 422
    assert "must be greater than 0.6" in got.json()["detail"]


def test_interval_epoch_is_refused_since_the_library_dampens_every_optimizer_step(client):
    body = {"scheduler": {"type": "StepLR", "step_size": 3}, "warmup": {"type": "exponential", "warmup_period": 5},
            "steps": 40, "interval": "epoch", "steps_per_epoch": 4}  # fmt: skip
    got = client.post("/v1/schedules/compute", json=body)
    assert got.status_code == 422
    assert "dampens the lr at every optimizer step" in got.json()["detail"]
    assert (
        client.post("/v1/schedules/compute", json={**body, "interval": "step"}).status_code == 200
    )
