"""transformers schedules through the API against the real ``transformers.get_scheduler``.

Each case builds the real optimizer and calls the real library in the test (transformers
5.23.0, the release pyproject pins), steps it as a training loop does, and requires the torch
engine's floats to be identical and the vectorized engine's (closed forms) within 1e-9
relative. 1 to 3 param groups; the 3-group cases give the optimizer an lr the groups do not
have, so the formulas that divide by ``optimizer.defaults["lr"]`` show it.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.optimization import get_scheduler

from tests.schedules.helpers import torch_loop

G1: dict = {"optimizer": {"type": "SGD", "lr": 0.1}, "param_groups": None}
G2: dict = {"optimizer": {"type": "SGD", "lr": 0.1}, "param_groups": [{"lr": 0.1}, {"lr": 0.01}]}
G3: dict = {
    "optimizer": {"type": "AdamW", "lr": 0.05},
    "param_groups": [{"lr": 0.1}, {"lr": 0.02}, {"lr": 0.003}],
}

# (id, name, num_warmup_steps, num_training_steps, scheduler_specific_kwargs, steps, groups)
CASES = [
    ("linear", "linear", 10, 100, {}, 120, G1),
    ("linear-no-warmup", "linear", 0, 50, {}, 60, G2),
    ("linear-ratio", "linear", 0.1, 95, {}, 110, G3),
    ("linear-warmup-is-training", "linear", 20, 20, {}, 30, G1),
    ("cosine", "cosine", 10, 100, {}, 130, G1),
    ("cosine-one-cycle", "cosine", 0, 50, {"num_cycles": 1.0}, 60, G2),
    ("cosine-ratio-quarter", "cosine", 0.05, 200, {"num_cycles": 0.25}, 210, G3),
    ("cosine-warmup-is-training", "cosine", 10, 10, {}, 25, G1),
    ("restarts", "cosine_with_restarts", 10, 100, {"num_cycles": 3}, 120, G1),
    ("restarts-default", "cosine_with_restarts", 0, 60, {}, 70, G2),
    ("restarts-zero-cycles", "cosine_with_restarts", 5, 30, {"num_cycles": 0}, 40, G3),
    ("poly", "polynomial", 10, 100, {"lr_end": 1e-4, "power": 2.0}, 120, G1),
    ("poly-default", "polynomial", 0, 50, {}, 60, G2),
    ("poly-groups-sqrt", "polynomial", 5, 40, {"power": 0.5, "lr_end": 0.0}, 50, G3),
    ("constant", "constant", None, None, {}, 20, G1),
    ("constant-groups", "constant", None, None, {}, 20, G2),
    ("constant-ignores-args", "constant", 5, 10, {}, 20, G3),
    ("const-warmup", "constant_with_warmup", 10, None, {}, 30, G1),
    ("const-warmup-zero", "constant_with_warmup", 0, None, {}, 10, G2),
    ("const-warmup-one", "constant_with_warmup", 1, 50, {}, 10, G3),
    ("isqrt", "inverse_sqrt", 10, None, {}, 100, G1),
    ("isqrt-no-warmup", "inverse_sqrt", 0, None, {}, 100, G2),
    ("isqrt-timescale", "inverse_sqrt", 5, None, {"timescale": 50}, 200, G3),
    ("minlr-rate", "cosine_with_min_lr", 10, 100, {"min_lr_rate": 0.1}, 120, G1),
    ("minlr-abs", "cosine_with_min_lr", 0, 50, {"min_lr": 1e-3}, 60, G2),
    ("minlr-abs-groups", "cosine_with_min_lr", 5, 40, {"min_lr": 0.005, "num_cycles": 1}, 50, G3),
    ("wminlr", "cosine_warmup_with_min_lr", 10, 100, {"min_lr_rate": 0.1}, 120, G1),
    ("wminlr-abs", "cosine_warmup_with_min_lr", 0, 50, {"min_lr": 1e-3}, 60, G2),
    ("wminlr-rate", "cosine_warmup_with_min_lr", 5, 40, {"min_lr_rate": 0.0, "warmup_lr_rate": 0.2}, 50, G3),
    ("wminlr-one", "cosine_warmup_with_min_lr", 1, 30, {"min_lr_rate": 0.05}, 35, G1),
    ("wsd", "warmup_stable_decay", 10, 100, {"num_decay_steps": 20, "min_lr_ratio": 0.01}, 120, G1),
    ("wsd-no-stable", "warmup_stable_decay", 0, 50, {"num_decay_steps": 50, "decay_type": "linear"}, 60, G2),
    ("wsd-stable-given", "warmup_stable_decay", 5, None,
     {"num_decay_steps": 10, "num_stable_steps": 20, "warmup_type": "cosine", "decay_type": "1-sqrt"}, 50, G3),
    ("wsd-sqrt-cycles", "warmup_stable_decay", 8, 60,
     {"num_decay_steps": 30, "warmup_type": "1-sqrt", "num_cycles": 1.0, "min_lr_ratio": 0.1}, 70, G1),
]  # fmt: skip


def _library_warmup(w, t):
    """The release's own reading of a warmup ratio (TrainingArguments.get_warmup_steps)."""
    from transformers.training_args import TrainingArguments

    return TrainingArguments.get_warmup_steps(SimpleNamespace(warmup_steps=w), t)


def _reference(name, w, t, kwargs, steps, groups, metrics=None):
    if isinstance(w, float) and w < 1:
        w = _library_warmup(w, t)
    opt = groups["optimizer"]
    cls = getattr(torch.optim, opt["type"])
    lrs, _ = torch_loop(
        lambda o: get_scheduler(name, o, w, t, dict(kwargs)),
        steps,
        optimizer=cls,
        groups=groups["param_groups"],
        metrics=metrics,
        lr=opt["lr"],
    )
    return lrs


def _body(name, w, t, kwargs, steps, groups, engine, **extra):
    scheduler = {"type": "transformers", "name": name, "scheduler_specific_kwargs": kwargs}
    if w is not None:
        scheduler["num_warmup_steps"] = w
    if t is not None:
        scheduler["num_training_steps"] = t
    body = {"optimizer": groups["optimizer"], "scheduler": scheduler, "steps": steps}
    if groups["param_groups"]:
        body["param_groups"] = groups["param_groups"]
    return {**body, "engine": engine, **extra}


@pytest.mark.parametrize(
    ("case", "name", "w", "t", "kwargs", "steps", "groups"), CASES, ids=[c[0] for c in CASES]
)
def test_both_engines_match_the_real_library(client, case, name, w, t, kwargs, steps, groups):
    want = _reference(name, w, t, kwargs, steps, groups)
    torch_run = client.post(
        "/v1/schedules/compute", json=_body(name, w, t, kwargs, steps, groups, "torch")
    )
    assert torch_run.status_code == 200, torch_run.text
    assert torch_run.json()["lr"] == want  # bit-identical: the real library, stepped
    assert torch_run.json()["families"] == [
        {
            "family": "transformers",
            "library": "transformers",
            "version": "5.23.0",
        }
    ]
    closed = client.post(
        "/v1/schedules/compute", json=_body(name, w, t, kwargs, steps, groups, "vectorized")
    )
    assert closed.status_code == 200, closed.text
    assert closed.json()["engine"] == "vectorized"
    got, ref = np.array(closed.json()["lr"]), np.array(want)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-300)
    assert (got == 0).sum() == (ref == 0).sum()


METRIC_CASES = [
    ("plateau", "reduce_lr_on_plateau", {"factor": 0.5, "patience": 1}, [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8], G1),
    ("plateau-max-groups", "reduce_lr_on_plateau",
     {"mode": "max", "factor": 0.1, "patience": 0, "min_lr": [0.05, 0.0]}, [1, 2, 2, 1, 1, 3, 3, 3, 3], G2),
    ("plateau-default", "reduce_lr_on_plateau", {}, [1.0] * 30, G3),
    ("greedy", "greedy", {"patience": 1}, [1.0, 0.9, 0.8, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6], G1),
    ("greedy-groups", "greedy",
     {"patience": 0, "cooldown": 1, "min_lr": [0.05, 0.001], "max_lr": 0.2, "factor": 0.5}, [3, 2, 1, 1, 1, 1, 0.5, 0.4, 0.3], G2),
    ("greedy-smooth", "greedy", {"smooth": True, "window_size": 3, "patience": 2, "threshold_mode": "rel", "reset_start": 2, "min_lr": 0.04},
     [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], G3),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "name", "kwargs", "metrics", "groups"), METRIC_CASES, ids=[c[0] for c in METRIC_CASES]
)
def test_metric_driven_names_step_the_real_library(client, case, name, kwargs, metrics, groups):
    """The torch engine steps the real library; the vectorized engine scans the metrics
    (what auto picks): both are the library's bits."""
    steps = len(metrics) + 1
    want = _reference(name, None, None, kwargs, steps, groups, metrics=metrics)
    for engine in ("torch", "vectorized", "auto"):
        body = _body(name, None, None, kwargs, steps, groups, engine, metrics=metrics)
        got = client.post("/v1/schedules/compute", json=body)
        assert got.status_code == 200, got.text
        assert got.json()["engine"] == ("vectorized" if engine == "auto" else engine)
        assert got.json()["lr"] == want


def test_sampled_and_long_schedules_agree_with_the_library(client):
    """Sampling picks indices of the same schedule; 20000 steps, closed form at 5 points."""
    want = _reference("cosine", 500, 20000, {}, 20000, G2)
    body = _body(
        "cosine", 500, 20000, {}, 20000, G2, "vectorized", sample={"at": [0, 1, 499, 500, 19999]}
    )
    got = client.post("/v1/schedules/compute", json=body).json()["lr"]
    ref = np.array(want)[:, [0, 1, 499, 500, 19999]]
    np.testing.assert_allclose(got, ref, rtol=1e-9)


def test_batch_scaling_scales_lr_valued_kwargs(client):
    """batch_scaling multiplies every lr, lr_end and min_lr included, as if the user had."""
    body = _body("polynomial", 10, 100, {"lr_end": 1e-3}, 110, G2, "torch")
    scaled = client.post(
        "/v1/schedules/compute",
        json={**body, "batch_scaling": {"base_batch_size": 256, "batch_size": 512}},
    )
    by_hand = _reference("polynomial", 10, 100, {"lr_end": 2e-3}, 110,
                         {"optimizer": {"type": "SGD", "lr": 0.2}, "param_groups": [{"lr": 0.2}, {"lr": 0.02}]})  # fmt: skip
    assert scaled.status_code == 200, scaled.text
    assert scaled.json()["lr"] == by_hand
    assert math.isclose(scaled.json()["summary"][0]["final"], 2e-3)


def test_every_schedulertype_of_the_release_has_three_cases():
    from transformers.trainer_utils import SchedulerType

    counts = {t.value: 0 for t in SchedulerType}
    for case in CASES:
        counts[case[1]] += 1
    for case in METRIC_CASES:
        counts[case[1]] += 1
    assert {name: n for name, n in counts.items() if n < 3} == {}
    from service.schedules.families.transformers import NAMES

    assert set(NAMES) == set(counts)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in {"cosine", "poly-groups-sqrt", "wsd-stable-given", "isqrt-timescale"}],
                         ids=lambda c: c[0])  # fmt: skip
def test_closed_forms_on_cuda_match_the_library(client, case):
    _, name, w, t, kwargs, steps, groups = case
    want = _reference(name, w, t, kwargs, steps, groups)
    body = _body(name, w, t, kwargs, steps, groups, "vectorized", device="cuda",
                 warmup={"type": "radam"} if groups["optimizer"]["type"] == "AdamW" else None)  # fmt: skip
    got = client.post("/v1/schedules/compute", json=body)
    assert got.status_code == 200, got.text
    assert got.json()["device"].startswith("cuda")
    if body["warmup"] is None:
        np.testing.assert_allclose(got.json()["lr"], want, rtol=1e-9, atol=0)
    else:
        on_cpu = client.post("/v1/schedules/compute", json={**body, "device": "cpu"}).json()["lr"]
        np.testing.assert_allclose(got.json()["lr"], on_cpu, rtol=1e-9, atol=0)
