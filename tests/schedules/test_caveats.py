"""The seed's examples as requests, and the warnings for legal but surprising specs."""

import time

import pytest

from service.schedules import registry
from service.schedules.result import ScheduleResult


def compute(client, **payload):
    r = client.post("/v1/schedules/compute", json=payload)
    assert r.status_code == 200, r.text
    return r.json()


SEED_GRADUAL_WARMUP = (
    "epoch / 2500 if epoch < 2500 else 0.09996 ** (1.0001 ** (epoch - 2499)) / 0.1"
)


def seed_loop() -> list[float]:
    """The seed's own simulation, verbatim in spirit: 2500 warmup steps, then lr ** 1.0001."""
    warmup_steps, init_lr, learning_rate, out = 2500, 0.1, 0.0, []
    for train_steps in range(15000):
        if warmup_steps and train_steps < warmup_steps:
            learning_rate = init_lr * (train_steps / warmup_steps)
        else:
            learning_rate = learning_rate**1.0001
        out.append(learning_rate)
    return out


def test_the_seeds_gradual_warmup_is_one_lambda_lr(client):
    body = compute(
        client,
        optimizer={"type": "SGD", "lr": 0.1},
        scheduler={"type": "LambdaLR", "lr_lambda": SEED_GRADUAL_WARMUP},
        steps=15000,
    )
    expected = seed_loop()
    got = body["lr"][0]
    assert got[:2500] == pytest.approx(expected[:2500], rel=1e-15, abs=0)
    # lr ** 1.0001 repeated 12 500 times against its closed form: rounding differs in the last bits
    assert got == pytest.approx(expected, rel=1e-9, abs=0)


@pytest.mark.parametrize(
    "payload,expected",
    [
        (
            {"scheduler": {"type": "MultiStepLR", "milestones": [200, 300, 320, 340, 200], "gamma": 0.8}, "steps": 400},
            "milestone 200 is listed twice: torch applies gamma twice at step 200",
        ),
        (
            {"scheduler": {"type": "MultiStepLR", "milestones": [30, 10]}, "steps": 40},
            "are not sorted",
        ),
        (
            {"scheduler": {"type": "CosineAnnealingLR", "T_max": 150}, "steps": 400},
            "rises again",
        ),
        (
            {"scheduler": {"type": "SequentialLR", "milestones": [0], "schedulers": [{"type": "StepLR", "step_size": 2}, {"type": "ExponentialLR", "gamma": 0.9}]}, "steps": 5},
            "milestone 0",
        ),
        (
            {"scheduler": {"type": "SequentialLR", "milestones": [6, 3], "schedulers": [{"type": "StepLR", "step_size": 2}, {"type": "StepLR", "step_size": 2}, {"type": "StepLR", "step_size": 2}]}, "steps": 8},
            "torch bisects them as given",
        ),
        (
            {"scheduler": {"type": "StepLR", "step_size": 2}, "warmup": {"type": "linear", "steps": 50}, "steps": 20},
            "the scheduler never starts",
        ),
        (
            {"scheduler": {"type": "OneCycleLR", "max_lr": 0.1}, "steps": 50},
            "defaults to 50",
        ),
        (
            {"scheduler": {"type": "ExponentialLR", "gamma": 1.05}, "steps": 5},
            "grows",
        ),
        (
            {"scheduler": {"type": "StepLR", "step_size": 2}, "steps": 5, "metrics": [1.0]},
            "metrics are ignored: only a metric-driven scheduler as the request's scheduler reads them (ReduceLROnPlateau, timm's plateau, transformers' reduce_lr_on_plateau and greedy)",
        ),
        (
            {"scheduler": {"type": "SequentialLR", "milestones": [2], "schedulers": [{"type": "ConstantLR"}, {"type": "timm", "sched": "plateau", "num_epochs": 5}]}, "steps": 5, "metrics": [1.0] * 4},
            "one nested in a SequentialLR or ChainedScheduler steps without a metric",
        ),
        (
            {"param_groups": [{"lr": 0.1, "lr_scale": 0.5}], "scheduler": {"type": "timm", "sched": "cosine", "num_epochs": 10}, "warmup": {"type": "linear", "steps": 3}, "steps": 12},
            "lr_scale is multiplied in only by timm's schedulers: the linear warmup sets each group's lr without it",
        ),
        (
            {"optimizer": {"type": "SGD", "momentum": 0.9}, "scheduler": {"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1}, "steps": 5},
            "overwrites the optimizer's momentum",
        ),
        (
            {"scheduler": {"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "cycle_momentum": False}, "steps": 5, "interval": "epoch", "steps_per_epoch": 2},
            "every batch",
        ),
        (
            {"optimizer": {"type": "SGD", "lr": 0.5}, "scheduler": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 10}, "steps": 10},
            "starts at max_lr / div_factor",
        ),
        (
            {"scheduler": {"type": "MultiStepLR", "milestones": [5, 50]}, "steps": 20},
            "never apply",
        ),
        (
            {"scheduler": {"type": "StepLR", "step_size": 30}, "steps": 20},
            "the lr never changes",
        ),
    ],
)  # fmt: skip
def test_surprising_but_legal_specs_are_warned_about(client, payload, expected):
    body = compute(client, **payload)
    assert any(expected in w for w in body["warnings"]), body["warnings"]


def test_plain_specs_have_no_warnings(client):
    body = compute(client, scheduler={"type": "StepLR", "step_size": 30, "gamma": 0.65}, steps=100)
    assert body["warnings"] == []


def test_onecycle_defaults_to_the_requested_length(client):
    body = compute(client, scheduler={"type": "OneCycleLR", "max_lr": 0.1}, steps=100)
    lr = body["lr"][0]
    assert max(lr) == pytest.approx(0.1)
    assert lr[-1] == pytest.approx(0.1 / 25 / 1e4)


def test_csv_and_npy_carry_the_same_values(client):
    import io

    import numpy as np

    payload = {
        "param_groups": [{"lr": 0.1}, {"lr": 0.01}],
        "scheduler": {"type": "ExponentialLR", "gamma": 0.98},
        "steps": 50,
    }
    as_json = client.post("/v1/schedules/compute", json=payload).json()
    csv = client.post("/v1/schedules/compute?format=csv", json=payload)
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert lines[0] == "step,lr_0,lr_1"
    assert [float(v) for v in lines[7].split(",")[1:]] == [as_json["lr"][0][6], as_json["lr"][1][6]]
    npy = client.post(
        "/v1/schedules/compute", json=payload, headers={"accept": "application/x-npy"}
    )
    array = np.load(io.BytesIO(npy.content))
    assert array.dtype == np.float64 and array.shape == (2, 50)
    assert array.tolist() == as_json["lr"]


@pytest.mark.parametrize("fmt,magic", [("svg", b"<?xml"), ("png", b"\x89PNG")])
def test_plots(client, fmt, magic):
    r = client.get(f"/v1/schedules/CosineAnnealingLR?T_max=50&steps=200&format={fmt}")
    assert r.status_code == 200
    assert r.content.startswith(magic)


def assert_schedule_result(body: dict) -> None:
    """Assert ``body`` is exactly the ScheduleResult model's (fields, types, values)."""
    assert set(body) == set(ScheduleResult.model_fields)
    assert ScheduleResult.model_validate(body).model_dump(mode="json") == body


def test_catalog_lists_every_type_with_a_working_example(client):
    catalog = client.get("/v1/schedulers").json()
    types = {entry["type"] for entry in catalog["schedulers"]}
    torch_types = types & set(registry.types("torch"))
    # the families' entries are tested in tests/schedules/families/
    assert "StepLR" in types and "SWALR" in types and len(torch_types) == 16
    for entry in catalog["schedulers"]:
        r = client.post("/v1/schedules/compute", json=entry["example"])
        assert r.status_code == 200, (entry["type"], r.text)
        assert entry["description"]
        assert_schedule_result(r.json())
    step = next(e for e in catalog["schedulers"] if e["type"] == "StepLR")
    assert step["defaults"] == {"gamma": 0.1}
    assert step["required"] == ["step_size"]
    assert "SGD" in catalog["optimizers"]


def test_info_reports_versions_and_limits(client):
    info = client.get("/v1/info").json()
    assert info["torch_version"] == "2.13.0"
    assert info["limits"]["torch_max_steps"] == 100_000
    assert info["cuda_available"] in (True, False)
    assert client.get("/healthz").json() == {"status": "ok"}
    deadline = time.monotonic() + 60  # job worker processes take a few seconds to spawn
    while (ready := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
        assert ready.status_code == 503 and ready.json()["detail"].startswith("not ready")
        time.sleep(0.5)
    assert ready.status_code == 200, ready.text


def test_a_sequential_childs_warnings_use_the_steps_it_runs_in_this_request(client):
    # cosine runs 3 of its T_max=2 steps here (milestone 10 lies past the request's end)
    body = compute(
        client,
        scheduler={
            "type": "SequentialLR",
            "schedulers": [{"type": "CosineAnnealingLR", "T_max": 2},
                           {"type": "ExponentialLR", "gamma": 0.9}],
            "milestones": [10],
        },
        steps=3,
    )  # fmt: skip
    assert body["warnings"] == []
    longer = compute(
        client,
        scheduler={
            "type": "SequentialLR",
            "schedulers": [{"type": "StepLR", "step_size": 4},
                           {"type": "ExponentialLR", "gamma": 0.9}],
            "milestones": [10],
        },
        steps=3,
    )  # fmt: skip
    assert longer["warnings"] == [
        "StepLR step_size=4 is not shorter than the 3 scheduler steps of this schedule: "
        "the lr never changes"
    ]


def test_steplr_growing_past_the_end_never_changes(client):
    body = compute(client, scheduler={"type": "StepLR", "step_size": 30, "gamma": 2.0}, steps=20)
    assert body["warnings"] == [
        "StepLR step_size=30 is not shorter than the 20 scheduler steps of this schedule: "
        "the lr never changes"
    ]
