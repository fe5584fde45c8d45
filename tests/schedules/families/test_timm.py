"""timm parity: both engines against timm 1.0.31's own schedulers stepping a real optimizer.

timm is installed with --no-deps (nodeps-requirements.txt) and its ``timm.scheduler`` modules
imported without ``timm/__init__`` (which needs torchvision); they need only torch. The torch
engine steps timm itself (bit-identical); the vectorized engine evaluates our closed forms
(within 1e-9 relative).
"""

import numpy as np
import pytest

from service.schedules.families.timm import SCHEDS
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
