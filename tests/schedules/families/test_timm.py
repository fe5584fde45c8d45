"""timm parity: both engines against timm 1.0.31's own schedulers stepping a real optimizer.

timm is installed with --no-deps (nodeps-requirements.txt) and its ``timm.scheduler`` modules
imported without ``timm/__init__`` (which needs torchvision); they need only torch. The torch
engine steps timm itself (bit-identical); the vectorized engine evaluates our closed forms
(within 1e-9 relative).
"""

import random

import numpy as np
import pytest

from service.schedules.families.timm import SCHEDS
from tests.problems import assert_problem
from tests.schedules.families.api import compute, groups_for, lr
from tests.schedules.families.references import timm_reference

ONE, THREE = [0.1], [0.1, 0.01, 0.5]

CASES = {
    "cosine-updates-warmup": (
        {
            "sched": "cosine",
            "num_epochs": 10,
            "warmup_epochs": 2,
            "warmup_lr": 0.0,
            "updates_per_epoch": 10,
            "step_on_epochs": False,
        },
        ONE,
        130,
    ),
    "cosine-cycles-kdecay": (
        {
            "sched": "cosine",
            "num_epochs": 7,
            "cycle_mul": 2.0,
            "cycle_limit": 4,
            "cycle_decay": 0.5,
            "k_decay": 2.0,
            "min_lr": 1e-3,
        },
        THREE,
        130,
    ),
    "cosine-shrinking-cycles-noise": (
        {
            "sched": "cosine",
            "num_epochs": 7,
            "cycle_mul": 0.5,
            "cycle_limit": 3,
            "noise": [0.2, 0.8],
            "noise_seed": 3,
            "warmup_epochs": 1,
            "warmup_prefix": True,
        },
        [0.1, 0.2],
        15,
    ),
    "cosine-one-epoch": ({"sched": "cosine", "num_epochs": 1}, ONE, 5),
    "tanh-warmup-target-quirk": ({"sched": "tanh", "num_epochs": 20, "warmup_epochs": 5}, ONE, 40),
    "tanh-prefix-cycles": (
        {
            "sched": "tanh",
            "num_epochs": 20,
            "warmup_epochs": 5,
            "warmup_prefix": True,
            "cycle_limit": 2,
            "cycle_mul": 1.5,
        },
        THREE,
        80,
    ),
    "tanh-updates-noise": (
        {
            "sched": "tanh",
            "num_epochs": 3,
            "step_on_epochs": False,
            "updates_per_epoch": 9,
            "noise": 0.5,
            "noise_std": 0.3,
            "min_lr": 0.001,
        },
        [0.1, 0.3],
        40,
    ),
    "step": (
        {
            "sched": "step",
            "num_epochs": 60,
            "decay_epochs": 7,
            "decay_rate": 0.5,
            "warmup_epochs": 3,
        },
        ONE,
        60,
    ),
    "step-fractional-prefix": (
        {
            "sched": "step",
            "num_epochs": 60,
            "decay_epochs": 2.5,
            "decay_rate": 0.5,
            "warmup_epochs": 3,
            "warmup_prefix": True,
        },
        THREE,
        30,
    ),
    "step-growing-updates": (
        {
            "sched": "step",
            "num_epochs": 4,
            "decay_epochs": 1,
            "decay_rate": 1.5,
            "step_on_epochs": False,
            "updates_per_epoch": 5,
        },
        ONE,
        25,
    ),
    "constant-warmup": ({"sched": "constant", "num_epochs": 30, "warmup_epochs": 3}, ONE, 10),
    "constant-no-warmup": ({"sched": "constant", "num_epochs": 30}, THREE, 10),
    "constant-noise": (
        {"sched": "constant", "num_epochs": 20, "noise": [0.0, 1.0], "noise_pct": 0.1},
        [0.1, 0.2],
        25,
    ),
    "multistep-repeated": (
        {
            "sched": "multistep",
            "num_epochs": 60,
            "decay_milestones": [5, 10, 10, 20],
            "decay_rate": 0.5,
        },
        ONE,
        30,
    ),
    "multistep-updates-warmup": (
        {
            "sched": "multistep",
            "num_epochs": 6,
            "decay_milestones": [1, 3],
            "warmup_epochs": 2,
            "step_on_epochs": False,
            "updates_per_epoch": 4,
        },
        THREE,
        30,
    ),
    "multistep-milestone-0-and-1": (
        {"sched": "multistep", "num_epochs": 6, "decay_milestones": [0, 1]},
        ONE,
        5,
    ),
    "poly-cycles-noise": (
        {
            "sched": "poly",
            "num_epochs": 20,
            "decay_rate": 2.0,
            "k_decay": 0.5,
            "cycle_limit": 2,
            "noise": 0.5,
        },
        ONE,
        50,
    ),
    "poly-default-power": ({"sched": "poly", "num_epochs": 20, "min_lr": 0.01}, THREE, 25),
    "poly-prefix": (
        {
            "sched": "poly",
            "num_epochs": 10,
            "decay_rate": 1.0,
            "warmup_epochs": 4,
            "warmup_prefix": True,
            "warmup_lr": 0.0,
        },
        ONE,
        20,
    ),
    "wsd-default": ({"sched": "wsd", "num_epochs": 50, "warmup_epochs": 5}, ONE, 55),
    "wsd-exp-prefix": (
        {
            "sched": "wsd",
            "num_epochs": 50,
            "warmup_epochs": 5,
            "decay_epochs": 10,
            "decay_fn": "exp",
            "min_lr": 0.001,
            "warmup_prefix": True,
        },
        THREE,
        60,
    ),
    "wsd-cosine-updates": (
        {
            "sched": "wsd",
            "num_epochs": 5,
            "warmup_epochs": 1,
            "decay_fn": "cosine",
            "step_on_epochs": False,
            "updates_per_epoch": 7,
        },
        ONE,
        40,
    ),
    "wsd-power-half": (
        {"sched": "wsd", "num_epochs": 50, "decay_fn": "power", "decay_epochs": 0.5},
        [0.1, 0.2],
        55,
    ),
    "wsd-linear-all-decay": (
        {"sched": "wsd", "num_epochs": 50, "decay_fn": "linear", "decay_epochs": 50},
        ONE,
        55,
    ),
    "rsqrt-warmup": ({"sched": "rsqrt", "num_epochs": 100, "warmup_epochs": 10}, ONE, 110),
    "rsqrt-timescale-floor": (
        {"sched": "rsqrt", "num_epochs": 100, "stable_timescale": 3, "min_lr": 0.03},
        THREE,
        105,
    ),
    "rsqrt-cosine-cooldown": (
        {
            "sched": "rsqrt",
            "num_epochs": 30,
            "warmup_epochs": 2,
            "decay_fn": "cosine",
            "decay_epochs": 0.5,
        },
        ONE,
        35,
    ),
}


PLATEAU = {
    "plateau-max": ({"sched": "plateau", "num_epochs": 30, "patience_epochs": 2}, ONE, 20),
    "plateau-min-warmup-noise": (
        {
            "sched": "plateau",
            "num_epochs": 30,
            "patience_epochs": 1,
            "plateau_mode": "min",
            "warmup_epochs": 3,
            "noise": [0.3, 0.6],
            "min_lr": 0.02,
        },
        THREE,
        25,
    ),
    "plateau-patience-0": (
        {"sched": "plateau", "num_epochs": 10, "patience_epochs": 0, "decay_rate": 0.5},
        [0.1, 0.2],
        12,
    ),
}
METRICS = [1.0, 0.9, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85, 0.7, 0.7] * 3


@pytest.mark.parametrize("name", list(CASES))
def test_both_engines_match_timm(client, name):
    spec, lrs, n = CASES[name]
    scheduler = {"type": "timm", **spec}
    expected = timm_reference(scheduler, lrs, n)
    torch_body = compute(client, scheduler, n, "torch", **groups_for(lrs))
    assert np.array_equal(lr(torch_body), expected)
    vectorized = compute(client, scheduler, n, "vectorized", **groups_for(lrs))
    np.testing.assert_allclose(lr(vectorized), expected, rtol=1e-9, atol=0)
    assert vectorized["families"] == [{"family": "timm", "library": "timm", "version": "1.0.31"}]


@pytest.mark.parametrize("name", list(PLATEAU))
def test_plateau_both_engines_match_timm(client, name):
    """The torch engine steps timm; the vectorized engine (auto's pick) scans the metrics:
    both bit-identical to timm."""
    spec, lrs, n = PLATEAU[name]
    scheduler = {"type": "timm", **spec}
    metrics = METRICS[: n - 1]
    expected = timm_reference(scheduler, lrs, n, metrics=metrics)
    for engine in ("torch", "vectorized"):
        body = compute(client, scheduler, n, engine, metrics=metrics, **groups_for(lrs))
        assert lr(body).tobytes() == expected.tobytes()
    assert compute(client, scheduler, n, "auto", metrics=metrics)["engine"] == "vectorized"


def test_every_sched_has_three_cases():
    counts: dict[str, int] = {}
    for spec, _, _ in [*CASES.values(), *PLATEAU.values()]:
        counts[spec["sched"]] = counts.get(spec["sched"], 0) + 1
    assert {s: counts.get(s, 0) for s in SCHEDS if counts.get(s, 0) < 3} == {}


# --------------------------------------------------------------------------- lr_scale


def _random_spec(rng: random.Random, sched: str, seed: int) -> tuple[dict, int]:
    """Return a valid timm spec of ``sched`` with random arguments, and a step count."""
    spec: dict = {"sched": sched, "num_epochs": rng.randint(4, 16)}
    spec["warmup_epochs"] = rng.choice([0, 0, 1, 3])
    spec["warmup_lr"] = rng.choice([1e-5, 0.0, 0.003])
    if sched != "plateau":
        spec["warmup_prefix"] = rng.random() < 0.3
        if rng.random() < 0.3:
            spec.update(step_on_epochs=False, updates_per_epoch=rng.randint(2, 4))
    if rng.random() < 0.4:
        spec.update(noise=rng.choice([0.3, [0.2, 0.7]]), noise_seed=rng.randint(0, 99))
    if sched in ("cosine", "tanh", "poly"):
        spec.update(
            cycle_limit=rng.randint(1, 3),
            cycle_mul=rng.choice([1.0, 1.5]),
            cycle_decay=0.5,
            min_lr=rng.choice([0.0, 1e-3]),
        )
        if sched != "tanh":
            spec["k_decay"] = rng.choice([1.0, 2.0])
        if sched == "poly":
            spec["decay_rate"] = rng.choice([0.5, 2.0])
    elif sched == "step":
        spec.update(decay_epochs=rng.choice([1, 2.5, 4]), decay_rate=rng.choice([0.5, 0.8]))
    elif sched == "multistep":
        spec["decay_milestones"] = sorted(rng.sample(range(1, 12), 3))
    elif sched == "plateau":  # every seed its own: without and with a warmup, and noise
        spec["warmup_epochs"] = (0, 2)[seed % 2]
        spec["noise"] = (None, [0.3, 0.8])[seed // 2 % 2]
        spec.update(
            patience_epochs=rng.randint(0, 2),
            plateau_mode=rng.choice(["min", "max"]),
            decay_rate=rng.choice([0.1, 0.5]),
            min_lr=rng.choice([0.0, 0.004]),
        )
    elif sched in ("wsd", "rsqrt"):
        spec["warmup_epochs"] = rng.randint(1, 3)
        spec.update(decay_epochs=rng.choice([None, 0.5, 2]), min_lr=rng.choice([0.0, 1e-3]))
        spec["decay_fn"] = rng.choice([None, "linear", "cosine", "exp"])
    length = spec["num_epochs"] * spec.get("updates_per_epoch", 1)
    return spec, length + rng.randint(2, 8)


def _scaled_groups(lrs: list[float], scales: list[float | None]) -> dict:
    groups = groups_for(lrs)
    for group, scale in zip(groups["param_groups"], scales, strict=True):
        if scale is not None:
            group["lr_scale"] = scale
    return groups


LR_SCALE_CASES = [
    (sched, seed) for sched in SCHEDS for seed in range(4 if sched == "plateau" else 2)
]


@pytest.mark.parametrize(("sched", "seed"), LR_SCALE_CASES, ids=lambda v: str(v))
def test_lr_scale_is_multiplied_in_as_timm_does(client, sched, seed):
    """Layer-wise lr decay: each group's ``lr_scale`` on a real optimizer, stepped by timm; the
    torch engine is timm's bits, the vectorized engine too for plateau (its scan) and within
    the closed forms' 1e-9 for the rest; a group without lr_scale is unscaled."""
    rng = random.Random(f"{sched}-{seed}")
    spec, n = _random_spec(rng, sched, seed)
    scheduler = {"type": "timm", **spec}
    lrs = [rng.choice([0.1, 0.05, 0.3]) for _ in range(3)]
    scales = [0.65**2, 0.65, None] if seed % 2 == 0 else [0.0, rng.uniform(0.1, 2.0), 1.0]
    metrics = [round(rng.uniform(0.5, 1.0), 2) for _ in range(n - 1)] if sched == "plateau" else []
    extra = {"metrics": metrics} if metrics else {}
    expected = timm_reference(scheduler, lrs, n, metrics=metrics or None, scales=scales)
    unscaled = timm_reference(scheduler, lrs, n, metrics=metrics or None)
    assert not np.array_equal(expected, unscaled)  # the scale changes timm's values
    groups = _scaled_groups(lrs, scales)
    torch_body = compute(client, scheduler, n, "torch", **groups, **extra)
    assert lr(torch_body).tobytes() == expected.tobytes()
    vectorized = compute(client, scheduler, n, "vectorized", **groups, **extra)
    if sched == "plateau":
        assert lr(vectorized).tobytes() == expected.tobytes()
    else:
        np.testing.assert_allclose(lr(vectorized), expected, rtol=1e-9, atol=0)
    assert (
        lr(vectorized)[2].tobytes()
        == lr(compute(client, scheduler, n, "vectorized", **groups_for(lrs), **extra))[2].tobytes()
    )


def test_lr_scale_in_a_batch_is_each_request_own(client):
    """Requests that differ only in lr_scale are stacked by the vectorized engine: each
    slot is its own request's values."""
    scheduler = {"type": "timm", "sched": "cosine", "num_epochs": 10, "warmup_epochs": 2}
    bodies = [
        {"scheduler": scheduler, "steps": 12, "engine": "vectorized", **_scaled_groups(lrs, s)}
        for lrs, s in [
            ([0.1, 0.2], [0.5, None]),
            ([0.1, 0.2], [0.25, 3.0]),
            ([0.1, 0.2], [None, None]),
        ]
    ]
    r = client.post("/v1/schedules/batch", json={"requests": bodies})
    assert r.status_code == 200, r.text
    for body, slot in zip(bodies, r.json()["results"], strict=True):
        scales = [g.get("lr_scale") for g in body["param_groups"]]
        expected = timm_reference(scheduler, [0.1, 0.2], 12, scales=scales)
        np.testing.assert_allclose(slot["result"]["lr"], expected, rtol=1e-9, atol=0)


def test_lr_scale_in_a_sequential_lr_scales_only_timm_segment(client):
    """timm after torch's LinearLR in a SequentialLR: only timm multiplies lr_scale in;
    both engines agree."""
    scheduler = {
        "type": "SequentialLR",
        "milestones": [3],
        "schedulers": [
            {"type": "LinearLR", "start_factor": 0.5, "total_iters": 3},
            {"type": "timm", "sched": "cosine", "num_epochs": 8, "noise": 0.5},
        ],
    }
    groups = _scaled_groups([0.1, 0.2], [0.5, None])
    torch_lr = lr(compute(client, scheduler, 12, "torch", **groups))
    vec_lr = lr(compute(client, scheduler, 12, "vectorized", **groups))
    np.testing.assert_allclose(vec_lr, torch_lr, rtol=1e-9, atol=0)
    plain = lr(compute(client, scheduler, 12, "torch", **groups_for([0.1, 0.2])))
    assert torch_lr[:, :3].tobytes() == plain[:, :3].tobytes()  # LinearLR ignores it
    np.testing.assert_allclose(torch_lr[0, 3:], plain[0, 3:] * 0.5, rtol=1e-15)
    assert torch_lr[1].tobytes() == plain[1].tobytes()


@pytest.mark.parametrize(
    ("scheduler", "scale", "words"),
    [
        ({"type": "StepLR", "step_size": 3}, 0.5, "only timm's schedulers read lr_scale"),
        ({"type": "timm", "sched": "cosine", "num_epochs": 5}, -0.5, "lr_scale=-0.5 is negative"),
        ({"type": "timm", "sched": "cosine", "num_epochs": 5}, "half", "is not a number"),
    ],
    ids=["not-timm", "negative", "not-a-number"],
)
def test_lr_scale_timm_cannot_use_is_refused(client, scheduler, scale, words):
    body = {"scheduler": scheduler, "steps": 5, "param_groups": [{"lr": 0.1, "lr_scale": scale}]}
    r = client.post("/v1/schedules/compute", json=body)
    assert_problem(r, 422, None, words)
    assert r.json()["errors"][0]["loc"][:2] == ["body", "param_groups"]
