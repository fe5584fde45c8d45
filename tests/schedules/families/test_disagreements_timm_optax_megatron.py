"""The cross-library surprises of timm, optax and Megatron, each computed on both sides
through the API, with the warning that names it."""

import numpy as np

from tests.schedules.families.api import compute, lr

W, T = 10, 100


def test_optax_timm_megatron_clamp_after_the_end_where_torch_rises(client):
    n = 150
    torch_cosine = compute(
        client,
        {"type": "CosineAnnealingLR", "T_max": T - W},
        n,
        "torch",
        warmup={"type": "linear", "steps": W, "start_factor": 0.0},
    )
    optax = compute(
        client,
        {"type": "optax", "schedule": "warmup_cosine_decay_schedule", "init_value": 0.0,
         "peak_value": 0.1, "warmup_steps": W, "decay_steps": T},
        n,
        "auto",
    )  # fmt: skip
    timm = compute(
        client,
        {"type": "timm", "sched": "cosine", "num_epochs": T, "warmup_epochs": W, "warmup_lr": 0.0},
        n,
        "auto",
    )
    megatron = compute(
        client,
        {"type": "megatron", "lr_decay_style": "cosine", "max_lr": 0.1, "lr_warmup_steps": W,
         "lr_decay_steps": T},
        n,
        "auto",
    )  # fmt: skip
    rises = lr(torch_cosine)[0]
    assert rises[T] == 0.0 and rises[n - 1] > 0.01  # torch's recursive cosine comes back up
    for body, library in ((optax, "optax"), (timm, "timm"), (megatron, "Megatron")):
        held = lr(body)[0]
        assert np.all(held[T + 1 :] == held[n - 1]) and held[n - 1] == 0.0, library
        assert any(library in w and "rise again" in w for w in body["warnings"]), body["warnings"]


def test_torch_onecycle_peaks_at_29_optax_cosine_onecycle_at_30(client):
    torch_cycle = compute(
        client, {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": T}, T, "torch"
    )
    optax = compute(
        client,
        {"type": "optax", "schedule": "cosine_onecycle_schedule", "transition_steps": T,
         "peak_value": 0.1},
        T,
        "vectorized",
    )  # fmt: skip
    assert int(np.argmax(lr(torch_cycle)[0])) == 29
    assert int(np.argmax(lr(optax)[0])) == 30
    assert any("peaks at step 30" in w and "at step 29" in w for w in optax["warnings"])


def test_timm_multistep_applies_a_milestone_one_step_before_torch(client):
    n = 20
    torch_steps = compute(
        client, {"type": "MultiStepLR", "milestones": [10], "gamma": 0.1}, n, "torch"
    )
    timm = compute(
        client,
        {"type": "timm", "sched": "multistep", "num_epochs": n, "decay_milestones": [10]},
        n,
        "torch",
    )
    assert int(np.argmax(lr(torch_steps)[0] < 0.1)) == 10
    assert int(np.argmax(lr(timm)[0] < 0.1)) == 9
    assert any("one step earlier" in w and "t = 9" in w for w in timm["warnings"])
