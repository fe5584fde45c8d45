"""POST /v1/schedules/resume against real torch objects saved, loaded and rebuilt here."""

import io
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as S

N, K = 60, 25
METRICS = [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8] * 6

CASES = {
    "StepLR": (
        {"type": "StepLR", "step_size": 10, "gamma": 0.5},
        None,
        lambda o, e: S.StepLR(o, step_size=10, gamma=0.5, last_epoch=e),
    ),
    "CosineAnnealingLR": (
        {"type": "CosineAnnealingLR", "T_max": 40, "eta_min": 0.001},
        None,
        lambda o, e: S.CosineAnnealingLR(o, T_max=40, eta_min=0.001, last_epoch=e),
    ),
    "OneCycleLR": (
        {"type": "OneCycleLR", "max_lr": 0.5, "total_steps": N},
        None,
        lambda o, e: S.OneCycleLR(o, max_lr=0.5, total_steps=N, last_epoch=e),
    ),
    "SequentialLR-warmup": (
        {"type": "CosineAnnealingLR", "T_max": 50},
        {"type": "linear", "steps": 10, "start_factor": 0.1},
        lambda o, e: S.SequentialLR(
            o,
            [
                S.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=10),
                S.CosineAnnealingLR(o, T_max=50),
            ],
            milestones=[10],
            last_epoch=e,
        ),
    ),
    "CosineAnnealingWarmRestarts": (
        {"type": "CosineAnnealingWarmRestarts", "T_0": 10, "T_mult": 2},
        None,
        lambda o, e: S.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, last_epoch=e),
    ),
    "ReduceLROnPlateau": (
        {"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 2},
        None,
        lambda o, e: S.ReduceLROnPlateau(o, factor=0.5, patience=2),
    ),
}


def _fresh(make, last_epoch=-1):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    if last_epoch != -1:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return opt, make(opt, last_epoch)


def _step(opt, sched, j, lrs):
    opt.step()
    if isinstance(sched, S.ReduceLROnPlateau):
        sched.step(METRICS[j - 1])
    else:
        sched.step()
    lrs.append(opt.param_groups[0]["lr"])


def real_recipe(make, recipe):
    """Return group 0's lr per step of a real loop stopped at K and resumed by ``recipe``
    (None: never stopped), or the exception torch raised."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt, sched = _fresh(make)
        lrs = [opt.param_groups[0]["lr"]]
        for j in range(1, K + 1 if recipe else N):
            _step(opt, sched, j, lrs)
        if recipe is None:
            return lrs
        try:
            if recipe == "state_dict":
                buffer = io.BytesIO()
                torch.save({"o": opt.state_dict(), "s": sched.state_dict()}, buffer)
                buffer.seek(0)
                saved = torch.load(buffer, weights_only=True)
                opt, sched = _fresh(make)
                opt.load_state_dict(saved["o"])
                sched.load_state_dict(saved["s"])
            elif recipe == "last_epoch":
                opt, sched = _fresh(make, K - 1)
            else:
                opt, sched = _fresh(make)
                for j in range(1, K + 1):
                    _step(opt, sched, j, [])
        except (KeyError, ValueError) as exc:
            return exc
        lrs = [*lrs[:K], opt.param_groups[0]["lr"]]
        for j in range(K + 1, N):
            _step(opt, sched, j, lrs)
        return lrs


@pytest.mark.parametrize("case", CASES)
def test_each_recipe_matches_real_torch(client, case):
    scheduler, warmup, make = CASES[case]
    spec = {"optimizer": {"type": "SGD", "lr": 0.1}, "scheduler": scheduler, "steps": N}
    if warmup:
        spec["warmup"] = warmup
    if case == "ReduceLROnPlateau":
        spec["metrics"] = METRICS[: N - 1]
    r = client.post("/v1/schedules/resume", json={"spec": spec, "resume_at": K})
    assert r.status_code == 200, r.text
    body = r.json()
    uninterrupted = real_recipe(make, None)
    assert body["steps"] == list(range(N))
    assert body["uninterrupted"][0] == uninterrupted
    for recipe in ("state_dict", "last_epoch", "fast_forward"):
        got = body["recipes"][recipe]
        real = real_recipe(make, recipe)
        if isinstance(real, Exception):
            assert got["lr"] is None and "torch refused" in got["verdict"], (recipe, got)
            continue
        assert got["lr"][0] == real, (case, recipe)
        first = next(
            (i for i, (a, b) in enumerate(zip(real, uninterrupted, strict=False)) if a != b), None
        )
        assert got["first_difference"] == first, (case, recipe)
        assert (got["verdict"] == "identical") == (first is None)
    assert body["recipes"]["state_dict"]["verdict"] == "identical"


def test_sequentiallr_rebuilt_with_last_epoch_diverges_as_torch_does(client):
    scheduler, warmup, make = CASES["SequentialLR-warmup"]
    spec = {"scheduler": scheduler, "warmup": warmup, "steps": N}
    r = client.post(
        "/v1/schedules/resume", json={"spec": spec, "resume_at": K, "recipes": ["last_epoch"]}
    )
    got = r.json()["recipes"]["last_epoch"]
    real, uninterrupted = real_recipe(make, "last_epoch"), real_recipe(make, None)
    first = next(i for i, (a, b) in enumerate(zip(real, uninterrupted, strict=False)) if a != b)
    assert got["first_difference"] == first
    assert got["verdict"].startswith(f"differs from step {first}: lr {real[first]:.6g} instead")
    assert got["max_abs_diff"] == pytest.approx(
        max(abs(a - b) for a, b in zip(real, uninterrupted, strict=False))
    )


def test_changed_horizon_shows_load_state_dict_restoring_the_old_t_max(client):
    spec = {"scheduler": {"type": "CosineAnnealingLR", "T_max": 100}, "steps": N}
    changed = {"scheduler": {"type": "CosineAnnealingLR", "T_max": 200}, "steps": N}
    r = client.post(
        "/v1/schedules/resume",
        json={"spec": spec, "resume_at": K, "recipes": ["state_dict"], "changed": changed},
    )
    body = r.json()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt, sched = _fresh(lambda o, e: S.CosineAnnealingLR(o, T_max=100))
        lrs = [0.1]
        for j in range(1, K + 1):
            _step(opt, sched, j, lrs)
        state = (opt.state_dict(), sched.state_dict())
        opt, sched = _fresh(lambda o, e: S.CosineAnnealingLR(o, T_max=200))
        opt.load_state_dict(state[0])
        sched.load_state_dict(state[1])
        lrs = [*lrs[:K], opt.param_groups[0]["lr"]]
        for j in range(K + 1, N):
            _step(opt, sched, j, lrs)
    assert body["recipes"]["changed"]["lr"][0] == lrs
    assert sched.T_max == 100
    assert any("load_state_dict restored" in w for w in body["warnings"])


def test_bad_input_is_problem_json(client):
    spec = {"scheduler": {"type": "StepLR", "step_size": 10}, "steps": N}
    r = client.post("/v1/schedules/resume", json={"spec": spec, "resume_at": N})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["loc"] == ["body", "resume_at"]
    r = client.post("/v1/schedules/resume", json={"spec": spec, "resume_at": 5, "recipes": ["x"]})
    assert r.status_code == 422
    r = client.post(
        "/v1/schedules/resume", json={"spec": spec, "resume_at": 5, "recipes": ["changed"]}
    )
    assert r.status_code == 422 and "needs the modified spec" in r.text
    hf = {"type": "transformers", "name": "linear", "num_warmup_steps": 2, "num_training_steps": 9}
    r = client.post(
        "/v1/schedules/resume", json={"spec": {"scheduler": hf, "steps": 9}, "resume_at": 3}
    )
    assert r.status_code == 422 and "torch's own schedulers" in r.json()["detail"]
