"""optax parity: both engines against optax 0.2.8 itself, called in float64 (x64).

optax is JAX, not torch: the torch engine sets our closed form on a real optimizer, the
vectorized engine evaluates it on tensors; both must be within 1e-9 relative of optax.
optax's default float32 differs from float64 by float32 rounding (~1e-7 relative); x64 is
switched on once for the process, at the first reference call.
"""

import numpy as np
import pytest

from service.schedules.families.optax import NAMES
from tests.schedules.families.api import compute, lr
from tests.schedules.families.references import optax_reference

OPTAX = {"type": "optax"}
LIN = {
    **OPTAX,
    "schedule": "linear_schedule",
    "init_value": 0.0,
    "end_value": 0.1,
    "transition_steps": 10,
}
COS = {**OPTAX, "schedule": "cosine_decay_schedule", "init_value": 0.1, "decay_steps": 90}

CASES = {
    "constant": ({**OPTAX, "schedule": "constant_schedule", "value": 0.01}, 1, 5),
    "constant-per-group": (
        {**OPTAX, "schedule": "constant_schedule", "value": [0.01, 0.2, 0.0]},
        3,
        5,
    ),
    "constant-zero": ({**OPTAX, "schedule": "constant_schedule", "value": 0.0}, 2, 3),
    "linear-begin": (
        {
            **OPTAX,
            "schedule": "linear_schedule",
            "init_value": 0.0,
            "end_value": 0.1,
            "transition_steps": 50,
            "transition_begin": 5,
        },
        1,
        70,
    ),
    "linear-no-steps": (
        {
            **OPTAX,
            "schedule": "linear_schedule",
            "init_value": 0.3,
            "end_value": 0.1,
            "transition_steps": 0,
        },
        2,
        5,
    ),
    "linear-negative-begin": (
        {
            **OPTAX,
            "schedule": "linear_schedule",
            "init_value": [0.3, 0.2],
            "end_value": 0.1,
            "transition_steps": 7,
            "transition_begin": -4,
        },
        2,
        12,
    ),
    "polynomial": (
        {
            **OPTAX,
            "schedule": "polynomial_schedule",
            "init_value": 0.1,
            "end_value": [0.001, 0.01],
            "power": 2.5,
            "transition_steps": 100,
            "transition_begin": 3,
        },
        2,
        110,
    ),
    "polynomial-power-0": (
        {
            **OPTAX,
            "schedule": "polynomial_schedule",
            "init_value": 0.1,
            "end_value": 0.0,
            "power": 0.0,
            "transition_steps": 10,
        },
        1,
        15,
    ),
    "polynomial-no-steps": (
        {
            **OPTAX,
            "schedule": "polynomial_schedule",
            "init_value": 0.1,
            "end_value": 0.0,
            "power": 2.0,
            "transition_steps": -1,
        },
        3,
        5,
    ),
    "cosine_decay": (
        {**OPTAX, "schedule": "cosine_decay_schedule", "init_value": 0.1, "decay_steps": 100},
        1,
        120,
    ),
    "cosine_decay-alpha-exponent": (
        {
            **OPTAX,
            "schedule": "cosine_decay_schedule",
            "init_value": [0.1, 1.0],
            "decay_steps": 100,
            "alpha": 0.1,
            "exponent": 2.0,
        },
        2,
        120,
    ),
    "cosine_decay-one-step": (
        {**OPTAX, "schedule": "cosine_decay_schedule", "init_value": 0.1, "decay_steps": 1},
        1,
        4,
    ),
    "cosine_onecycle": (
        {
            **OPTAX,
            "schedule": "cosine_onecycle_schedule",
            "transition_steps": 100,
            "peak_value": 0.1,
        },
        1,
        110,
    ),
    "cosine_onecycle-short": (
        {
            **OPTAX,
            "schedule": "cosine_onecycle_schedule",
            "transition_steps": 7,
            "peak_value": [0.1, 1.0],
            "pct_start": 0.5,
            "div_factor": 3,
            "final_div_factor": 10,
        },
        2,
        10,
    ),
    "cosine_onecycle-pct-0": (
        {
            **OPTAX,
            "schedule": "cosine_onecycle_schedule",
            "transition_steps": 20,
            "peak_value": 0.1,
            "pct_start": 0.0,
        },
        3,
        25,
    ),
    "linear_onecycle": (
        {
            **OPTAX,
            "schedule": "linear_onecycle_schedule",
            "transition_steps": 100,
            "peak_value": 0.1,
        },
        1,
        110,
    ),
    "linear_onecycle-collapsed": (
        {
            **OPTAX,
            "schedule": "linear_onecycle_schedule",
            "transition_steps": 10,
            "peak_value": 0.1,
            "pct_start": 0.5,
            "pct_final": 0.55,
        },
        2,
        15,
    ),
    "linear_onecycle-pct-final-1": (
        {
            **OPTAX,
            "schedule": "linear_onecycle_schedule",
            "transition_steps": 10,
            "peak_value": [0.1, 0.2, 0.3],
            "pct_final": 1.0,
        },
        3,
        15,
    ),
    "exponential_decay-staircase-end": (
        {
            **OPTAX,
            "schedule": "exponential_decay",
            "init_value": 0.1,
            "transition_steps": 10,
            "decay_rate": 0.5,
            "staircase": True,
            "end_value": 0.01,
        },
        1,
        60,
    ),
    "exponential_decay-growing-cap": (
        {
            **OPTAX,
            "schedule": "exponential_decay",
            "init_value": [0.1, 0.2],
            "transition_steps": 7,
            "decay_rate": 1.1,
            "transition_begin": 20,
            "end_value": 0.5,
        },
        2,
        120,
    ),
    "exponential_decay-rate-0": (
        {
            **OPTAX,
            "schedule": "exponential_decay",
            "init_value": 0.1,
            "transition_steps": 7,
            "decay_rate": 0.0,
        },
        1,
        5,
    ),
    "exponential_decay-no-steps": (
        {
            **OPTAX,
            "schedule": "exponential_decay",
            "init_value": 0.1,
            "transition_steps": 0,
            "decay_rate": 0.5,
        },
        3,
        5,
    ),
    "piecewise_constant": (
        {
            **OPTAX,
            "schedule": "piecewise_constant_schedule",
            "init_value": 0.1,
            "boundaries_and_scales": {"30": 0.1, "60": 0.5, "0": 2.0},
        },
        1,
        70,
    ),
    "piecewise_constant-none": (
        {**OPTAX, "schedule": "piecewise_constant_schedule", "init_value": [0.1, 0.3]},
        2,
        5,
    ),
    "piecewise_constant-zero-scale": (
        {
            **OPTAX,
            "schedule": "piecewise_constant_schedule",
            "init_value": 0.1,
            "boundaries_and_scales": {"3": 0.0, "5": 4.0},
        },
        3,
        8,
    ),
    "piecewise_interpolate-linear": (
        {
            **OPTAX,
            "schedule": "piecewise_interpolate_schedule",
            "interpolate_type": "linear",
            "init_value": 0.1,
            "boundaries_and_scales": {"40": 0.1, "80": 0.1},
        },
        1,
        90,
    ),
    "piecewise_interpolate-cosine-at-0": (
        {
            **OPTAX,
            "schedule": "piecewise_interpolate_schedule",
            "interpolate_type": "cosine",
            "init_value": [0.1, 0.2],
            "boundaries_and_scales": {"0": 3.0, "40": 0.1, "41": 10.0},
        },
        2,
        50,
    ),
    "piecewise_interpolate-empty": (
        {
            **OPTAX,
            "schedule": "piecewise_interpolate_schedule",
            "interpolate_type": "linear",
            "init_value": 0.1,
        },
        3,
        4,
    ),
    "warmup_constant": (
        {
            **OPTAX,
            "schedule": "warmup_constant_schedule",
            "init_value": 0.0,
            "peak_value": 0.1,
            "warmup_steps": 10,
        },
        1,
        15,
    ),
    "warmup_constant-no-warmup": (
        {
            **OPTAX,
            "schedule": "warmup_constant_schedule",
            "init_value": 0.0,
            "peak_value": [0.1, 0.2],
            "warmup_steps": 0,
        },
        2,
        5,
    ),
    "warmup_constant-down": (
        {
            **OPTAX,
            "schedule": "warmup_constant_schedule",
            "init_value": 0.5,
            "peak_value": 0.1,
            "warmup_steps": 3,
        },
        3,
        6,
    ),
    "warmup_cosine_decay": (
        {
            **OPTAX,
            "schedule": "warmup_cosine_decay_schedule",
            "init_value": 0.0,
            "peak_value": 0.1,
            "warmup_steps": 10,
            "decay_steps": 100,
        },
        1,
        120,
    ),
    "warmup_cosine_decay-zero-peak": (
        {
            **OPTAX,
            "schedule": "warmup_cosine_decay_schedule",
            "init_value": 0.01,
            "peak_value": [0.0, 0.1],
            "warmup_steps": 0,
            "decay_steps": 50,
            "end_value": 0.001,
            "exponent": 0.5,
        },
        2,
        60,
    ),
    "warmup_cosine_decay-one-step-cosine": (
        {
            **OPTAX,
            "schedule": "warmup_cosine_decay_schedule",
            "init_value": 0.0,
            "peak_value": 0.1,
            "warmup_steps": 9,
            "decay_steps": 10,
            "end_value": 0.05,
        },
        3,
        14,
    ),
    "warmup_exponential_decay": (
        {
            **OPTAX,
            "schedule": "warmup_exponential_decay_schedule",
            "init_value": 0.0,
            "peak_value": 0.1,
            "warmup_steps": 10,
            "transition_steps": 20,
            "decay_rate": 0.5,
        },
        1,
        80,
    ),
    "warmup_exponential_decay-all": (
        {
            **OPTAX,
            "schedule": "warmup_exponential_decay_schedule",
            "init_value": 0.0,
            "peak_value": [0.1, 0.3],
            "warmup_steps": 10,
            "transition_steps": 20,
            "decay_rate": 0.5,
            "transition_begin": 5,
            "staircase": True,
            "end_value": 0.02,
        },
        2,
        120,
    ),
    "warmup_exponential_decay-no-warmup": (
        {
            **OPTAX,
            "schedule": "warmup_exponential_decay_schedule",
            "init_value": 0.0,
            "peak_value": 0.1,
            "warmup_steps": 0,
            "transition_steps": 1,
            "decay_rate": 0.9,
        },
        3,
        20,
    ),
    "sgdr": (
        {
            **OPTAX,
            "schedule": "sgdr_schedule",
            "cosine_kwargs": [
                {"init_value": 0.0, "peak_value": 0.1, "warmup_steps": 5, "decay_steps": 50},
                {
                    "init_value": 0.0,
                    "peak_value": 0.05,
                    "warmup_steps": 5,
                    "decay_steps": 40,
                    "end_value": 0.001,
                },
            ],
        },
        1,
        100,
    ),
    "sgdr-one-cycle-per-group": (
        {
            **OPTAX,
            "schedule": "sgdr_schedule",
            "cosine_kwargs": [
                {
                    "init_value": [0.0, 0.01],
                    "peak_value": [0.1, 0.2],
                    "warmup_steps": 0,
                    "decay_steps": 10,
                }
            ],
        },
        2,
        15,
    ),
    "sgdr-three-cycles": (
        {
            **OPTAX,
            "schedule": "sgdr_schedule",
            "cosine_kwargs": [
                {"init_value": 0.1, "peak_value": 0.1, "warmup_steps": 0, "decay_steps": 3}
            ]
            * 3,
        },
        3,
        12,
    ),
    "join": (
        {**OPTAX, "schedule": "join_schedules", "schedules": [LIN, COS], "boundaries": [10]},
        1,
        110,
    ),
    "join-nested-per-group": (
        {
            **OPTAX,
            "schedule": "join_schedules",
            "schedules": [
                {**LIN, "end_value": [0.1, 0.2]},
                {**OPTAX, "schedule": "join_schedules", "schedules": [COS, LIN], "boundaries": [5]},
            ],
            "boundaries": [10],
        },
        2,
        30,
    ),
    "join-groups-shared-and-distinct": (
        {
            **OPTAX,
            "schedule": "join_schedules",
            "schedules": [
                {**LIN, "end_value": [0.1, 0.2, 0.1, 0.2]},
                {**COS, "init_value": [0.1, 0.1, 0.3, 0.1]},
            ],
            "boundaries": [10],
        },
        4,
        110,
    ),
    "join-single-and-zero-boundary": (
        {
            **OPTAX,
            "schedule": "join_schedules",
            "schedules": [LIN, COS, LIN],
            "boundaries": [0, 20],
        },
        3,
        30,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_both_engines_match_optax_float64(client, name):
    spec, groups, n = CASES[name]
    expected = optax_reference(spec, groups, n)
    for engine in ("torch", "vectorized"):
        body = compute(client, spec, n, engine, param_groups=[{}] * groups)
        np.testing.assert_allclose(lr(body), expected, rtol=1e-9, atol=0, err_msg=engine)
    assert body["families"] == [{"family": "optax", "library": "optax", "version": "0.2.8"}]


def test_every_schedule_has_three_cases():
    counts = {}
    for spec, _, _ in CASES.values():
        counts[spec["schedule"]] = counts.get(spec["schedule"], 0) + 1
    assert {s: counts.get(s, 0) for s in NAMES if counts.get(s, 0) < 3} == {}


WARMUP_COSINE = {
    **OPTAX,
    "schedule": "warmup_cosine_decay_schedule",
    "init_value": 0.0,
    "peak_value": 0.1,
    "warmup_steps": 1000,
    "decay_steps": 9000,
    "end_value": 0.001,
}

CYCLE = {k: v for k, v in WARMUP_COSINE.items() if k not in ("type", "schedule")}


@pytest.mark.parametrize(
    "spec",
    [
        WARMUP_COSINE,
        {**OPTAX, "schedule": "sgdr_schedule", "cosine_kwargs": [CYCLE] * 2},
        {**OPTAX, "schedule": "join_schedules", "schedules": [LIN, COS], "boundaries": [10]},
    ],
    ids=["warmup_cosine", "sgdr", "join"],
)
def test_identical_groups_get_the_one_group_values_to_the_bit(client, spec):
    # 16 groups of the same values over 10k steps (several chunks of 4096 steps): every row
    # is the 1-group answer bit for bit, and optax's own values within the parity tolerance
    n = 10_000
    one = lr(compute(client, spec, n, "vectorized", param_groups=[{}]))
    many = lr(compute(client, spec, n, "vectorized", param_groups=[{}] * 16))
    assert many.shape == (16, n)
    assert (many.view(np.int64) == one.view(np.int64)).all()
    np.testing.assert_allclose(many, optax_reference(spec, 16, n), rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    "scheduler",
    [
        {
            "type": "optax",
            "schedule": "warmup_cosine_decay_schedule",
            "init_value": [],
            "peak_value": 0.1,
            "warmup_steps": 2,
            "decay_steps": 10,
        },
        {
            "type": "optax",
            "schedule": "join_schedules",
            "boundaries": [],
            "schedules": [
                {
                    "type": "optax",
                    "schedule": "piecewise_interpolate_schedule",
                    "interpolate_type": "cosine",
                    "init_value": [],
                    "boundaries_and_scales": {"100": 0.1},
                }
            ],
        },
    ],
)
def test_an_empty_per_group_list_is_a_422_naming_it(client, scheduler):
    """The cost model reads per-group lists before the per-group check: an empty one was a
    500 (integer modulo by zero), found by schemathesis."""
    response = client.post("/v1/schedules/compute", json={"scheduler": scheduler, "steps": 3})
    assert response.status_code == 422, response.text
    assert "init_value: 0 values for 1 param group" in response.json()["detail"]
