"""Bad timm, optax and Megatron specs get a 422 problem+json naming the field (and, for a
misspelt name, what was meant)."""

import pytest

OPTAX_COS = {
    "type": "optax",
    "schedule": "cosine_decay_schedule",
    "init_value": 0.1,
    "decay_steps": 10,
}
MEGATRON = {"type": "megatron", "lr_decay_style": "linear", "max_lr": 0.1, "lr_decay_steps": 100}

# (id, scheduler, request extras, words the problem must contain, the loc's last part)
CASES = [
    (
        "timm-unknown-sched",
        {"type": "timm", "sched": "cosin"},
        {},
        ["did you mean 'cosine'"],
        "sched",
    ),
    (
        "timm-other-scheds-argument",
        {"type": "timm", "sched": "step", "cycle_mul": 2.0},
        {},
        ["cycle_mul"],
        None,
    ),
    (
        "timm-unknown-argument",
        {"type": "timm", "sched": "cosine", "warmup_t": 3},
        {},
        ["warmup_t"],
        "warmup_t",
    ),
    (
        "timm-negative-epochs",
        {"type": "timm", "sched": "cosine", "num_epochs": -1},
        {},
        ["num_epochs"],
        "num_epochs",
    ),
    (
        "timm-updates-without-count",
        {"type": "timm", "sched": "cosine", "step_on_epochs": False},
        {},
        ["updates_per_epoch"],
        None,
    ),
    (
        "timm-wsd-decay-longer",
        {"type": "timm", "sched": "wsd", "num_epochs": 10, "decay_epochs": 20},
        {},
        ["decay_epochs", "10"],
        None,
    ),
    (
        "timm-unsorted-milestones",
        {"type": "timm", "sched": "multistep", "decay_milestones": [30, 10]},
        {},
        ["sorted", "[10, 30]"],
        None,
    ),
    (
        "timm-shrinking-cycles-run-out",
        {"type": "timm", "sched": "cosine", "num_epochs": 7, "cycle_mul": 0.5, "cycle_limit": 3},
        {"steps": 30, "engine": "vectorized"},
        ["cycle_mul", "math domain error"],
        None,
    ),
    (
        "timm-plateau-needs-metrics",
        {"type": "timm", "sched": "plateau"},
        {},
        ["metrics"],
        "metrics",
    ),
    (
        "optax-unknown-schedule",
        {"type": "optax", "schedule": "cosine_decay", "init_value": 0.1, "decay_steps": 10},
        {},
        ["did you mean 'cosine_decay_schedule'"],
        "schedule",
    ),
    (
        "optax-other-schedules-argument",
        {**OPTAX_COS, "peak_value": 0.2},
        {},
        ["peak_value"],
        "peak_value",
    ),
    (
        "optax-negative-decay-steps",
        {**OPTAX_COS, "decay_steps": -5},
        {},
        ["decay_steps"],
        "decay_steps",
    ),
    (
        "optax-decay-shorter-than-warmup",
        {
            "type": "optax",
            "schedule": "warmup_cosine_decay_schedule",
            "init_value": 0.0,
            "peak_value": 0.1,
            "warmup_steps": 20,
            "decay_steps": 10,
        },
        {},
        ["decay_steps", "warmup_steps"],
        None,
    ),
    (
        "optax-join-boundaries",
        {
            "type": "optax",
            "schedule": "join_schedules",
            "schedules": [OPTAX_COS, OPTAX_COS],
            "boundaries": [],
        },
        {},
        ["boundaries", "1"],
        None,
    ),
    (
        "optax-negative-scale",
        {
            "type": "optax",
            "schedule": "piecewise_constant_schedule",
            "init_value": 0.1,
            "boundaries_and_scales": {"5": -1.0},
        },
        {},
        ["greater than or equal to 0"],
        None,
    ),
    (
        "optax-groups-mismatch",
        {**OPTAX_COS, "init_value": [0.1, 0.2]},
        {"param_groups": [{}, {}, {}]},
        ["init_value", "3 param groups"],
        "init_value",
    ),
    (
        "megatron-unknown-style",
        {**MEGATRON, "lr_decay_style": "cosin"},
        {},
        ["did you mean 'cosine'"],
        None,
    ),
    (
        "megatron-negative-steps",
        {**MEGATRON, "lr_decay_steps": -1},
        {},
        ["lr_decay_steps"],
        "lr_decay_steps",
    ),
    (
        "megatron-warmup-past-decay",
        {**MEGATRON, "lr_warmup_steps": 100},
        {},
        ["lr_warmup_steps", "lr_decay_steps"],
        None,
    ),
    (
        "megatron-wsd-longer-than-decay",
        {**MEGATRON, "lr_decay_style": "WSD", "wsd_decay_steps": 200},
        {},
        ["wsd_decay_steps", "100"],
        None,
    ),
    (
        "megatron-wsd-without-steps",
        {**MEGATRON, "lr_decay_style": "WSD"},
        {},
        ["wsd_decay_steps"],
        None,
    ),
    (
        "megatron-wsd-argument-on-cosine",
        {**MEGATRON, "lr_decay_style": "cosine", "wsd_decay_steps": 10},
        {},
        ["wsd_decay_steps"],
        None,
    ),
    ("megatron-min-above-max", {**MEGATRON, "min_lr": 0.2}, {}, ["max_lr", "min_lr"], None),
    # an empty per-group list was an IndexError (500) found by schemathesis
    (
        "megatron-empty-group-list",
        {**MEGATRON, "start_wd": []},
        {},
        ["start_wd", "one value per group"],
        None,
    ),
    (
        "megatron-constant-wd-ramp",
        {**MEGATRON, "start_wd": 0.0, "end_wd": 0.1},
        {},
        ["wd_incr_style", "start_wd"],
        None,
    ),
    (
        "megatron-weight-decay-elsewhere",
        OPTAX_COS,
        {"include": ["weight_decay"]},
        ["weight_decay", "megatron"],
        "include",
    ),
]


@pytest.mark.parametrize(
    ("name", "scheduler", "extra", "words", "field"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_family_input_is_a_422_naming_the_field(client, name, scheduler, extra, words, field):
    body = {"scheduler": scheduler, "steps": 20, **extra}
    response = client.post("/v1/schedules/compute", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    text = (problem["detail"] + " " + " ".join(e["msg"] for e in problem.get("errors", []))).lower()
    for word in words:
        assert word.lower() in text, (word, problem)
    if field is not None:
        assert any(e["loc"][-1] == field for e in problem["errors"]), problem["errors"]
