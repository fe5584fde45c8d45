"""Megatron parity: our closed forms against megatron-core 0.16.1's OptimizerParamScheduler.

megatron-core is installed with --no-deps (nodeps-requirements.txt); 0.16.1 is its last
release for Python 3.11. Its scheduler steps a real torch optimizer here.
"""

import numpy as np
import pytest
import torch

from service.schedules.families.megatron import STYLES, WSD_STYLES, MegatronScheduler
from tests.schedules.families.references import megatron_reference

M = {"type": "megatron"}
WSD = {
    **M,
    "lr_decay_style": "WSD",
    "max_lr": 3e-4,
    "min_lr": 3e-5,
    "lr_warmup_steps": 10,
    "lr_decay_steps": 100,
    "wsd_decay_steps": 20,
}

CASES = {
    "constant": (
        {
            **M,
            "lr_decay_style": "constant",
            "max_lr": 1e-3,
            "init_lr": 1e-4,
            "lr_warmup_steps": 5,
            "lr_decay_steps": 100,
            "start_wd": 0.01,
            "end_wd": 0.1,
            "wd_incr_style": "cosine",
        },
        1,
        110,
    ),
    "constant-no-warmup": (
        {**M, "lr_decay_style": "constant", "max_lr": [1e-3, 2e-3], "lr_decay_steps": 1},
        2,
        5,
    ),
    "constant-wd-linear-short": (
        {
            **M,
            "lr_decay_style": "constant",
            "max_lr": 1e-3,
            "lr_decay_steps": 10,
            "start_wd": 0.0,
            "end_wd": [0.1, 0.2, 0.3],
            "wd_incr_style": "linear",
            "wd_incr_steps": 3,
        },
        3,
        8,
    ),
    "linear": (
        {
            **M,
            "lr_decay_style": "linear",
            "max_lr": [1e-3, 2e-3],
            "min_lr": [0.0, 1e-4],
            "lr_decay_steps": 100,
            "start_wd": 0.0,
            "end_wd": [0.1, 0.2],
            "wd_incr_style": "linear",
            "wd_incr_steps": 50,
        },
        2,
        120,
    ),
    "linear-warmup": (
        {
            **M,
            "lr_decay_style": "linear",
            "max_lr": 1e-3,
            "min_lr": 1e-5,
            "init_lr": 1e-3,
            "lr_warmup_steps": 99,
            "lr_decay_steps": 100,
        },
        1,
        105,
    ),
    "linear-min-equals-max": (
        {**M, "lr_decay_style": "linear", "max_lr": 1e-3, "min_lr": 1e-3, "lr_decay_steps": 10},
        3,
        15,
    ),
    "cosine": (
        {
            **M,
            "lr_decay_style": "cosine",
            "max_lr": 3e-4,
            "min_lr": 3e-5,
            "lr_warmup_steps": 10,
            "lr_decay_steps": 100,
        },
        1,
        130,
    ),
    "cosine-per-group-min": (
        {
            **M,
            "lr_decay_style": "cosine",
            "max_lr": 3e-4,
            "min_lr": [0.0, 3e-5, 1e-4],
            "lr_decay_steps": 7,
        },
        3,
        12,
    ),
    "cosine-wd-cosine": (
        {
            **M,
            "lr_decay_style": "cosine",
            "max_lr": 1.0,
            "lr_warmup_steps": 1,
            "lr_decay_steps": 2,
            "start_wd": 0.0,
            "end_wd": 0.5,
            "wd_incr_style": "cosine",
            "wd_incr_steps": 5,
        },
        2,
        8,
    ),
    "inverse-square-root": (
        {
            **M,
            "lr_decay_style": "inverse-square-root",
            "max_lr": 1e-3,
            "min_lr": 1e-4,
            "lr_warmup_steps": 10,
            "lr_decay_steps": 100,
        },
        1,
        110,
    ),
    "inverse-square-root-no-warmup": (
        {
            **M,
            "lr_decay_style": "inverse-square-root",
            "max_lr": [1e-3, 1e-2],
            "lr_decay_steps": 100,
        },
        2,
        110,
    ),
    "inverse-square-root-floor": (
        {
            **M,
            "lr_decay_style": "inverse-square-root",
            "max_lr": 1e-3,
            "min_lr": 5e-4,
            "lr_warmup_steps": 1,
            "lr_decay_steps": 20,
        },
        3,
        25,
    ),
    **{
        f"WSD-{s}": ({**WSD, "lr_wsd_decay_style": s}, 1 + i % 3, 110)
        for i, s in enumerate(WSD_STYLES)
    },
    "WSD-default-style-all-anneal": (
        {
            **M,
            "lr_decay_style": "WSD",
            "max_lr": 3e-4,
            "lr_decay_steps": 100,
            "wsd_decay_steps": 100,
        },
        2,
        105,
    ),
    "WSD-one-step-anneal": (
        {
            **WSD,
            "wsd_decay_steps": 1,
            "lr_wsd_decay_style": "minus_sqrt",
            "min_lr": [3e-5, 0.0, 1e-4],
        },
        3,
        105,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_closed_forms_match_megatron(name):
    spec, groups, n = CASES[name]
    lr, wd = megatron_reference(spec, groups, n)
    parsed = MegatronScheduler(**spec)
    ours = parsed.lr(torch.arange(n), torch.zeros(groups, 1, dtype=torch.float64))
    np.testing.assert_allclose(ours.numpy(), lr, rtol=1e-9, atol=0)
    np.testing.assert_allclose(parsed.weight_decay(torch.arange(n), groups).numpy(), wd, rtol=1e-9)


def test_every_style_has_three_cases():
    counts = {}
    for spec, _, _ in CASES.values():
        counts[spec["lr_decay_style"]] = counts.get(spec["lr_decay_style"], 0) + 1
    assert {s: counts.get(s, 0) for s in STYLES if counts.get(s, 0) < 3} == {}
