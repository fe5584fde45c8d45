"""POST /v1/schedules/compare: real torch and real optax, measured in the test."""

import numpy as np
import torch

from tests.schedules.families.references import optax_reference
from tests.schedules.helpers import torch_loop

N = 100
TORCH_ONECYCLE = {
    "optimizer": {"type": "SGD", "lr": 0.1},
    "scheduler": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": N},
    "steps": N,
    "engine": "torch",
}
HF_COSINE = {
    "scheduler": {
        "type": "transformers",
        "name": "cosine",
        "num_warmup_steps": 30,
        "num_training_steps": N,
    },
    "steps": N,
}
OPTAX_ONECYCLE_SCHED = {
    "type": "optax",
    "schedule": "cosine_onecycle_schedule",
    "transition_steps": N,
    "peak_value": 0.1,
}
OPTAX_ONECYCLE = {"scheduler": OPTAX_ONECYCLE_SCHED, "steps": N}


def _check_peak_offset(client, other_spec, other_lr, torch_lr):
    measured = int(np.argmax(other_lr)) - int(np.argmax(torch_lr[0]))
    assert measured != 0  # the two libraries really do peak at different steps
    r = client.post(
        "/v1/schedules/compare",
        json={"specs": [TORCH_ONECYCLE, other_spec], "labels": ["torch", "other"]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["steps"] == list(range(N))
    assert [s["label"] for s in body["series"]] == ["torch", "other"]
    assert body["series"][0]["lr"][0] == torch_lr[0]
    np.testing.assert_allclose(body["series"][1]["lr"][0], other_lr, rtol=1e-9, atol=1e-15)
    (pair,) = body["pairs"]
    assert (pair["a"], pair["b"]) == (0, 1)
    assert pair["peak_offset"] == measured
    assert body["series"][0]["peak_step"] == int(np.argmax(torch_lr[0]))
    diff = np.abs(np.asarray(torch_lr[0]) - other_lr)
    np.testing.assert_allclose(pair["max_abs_diff"], diff.max(), rtol=1e-6)
    beyond = diff > 1e-12 * np.maximum(np.abs(torch_lr[0]), np.abs(other_lr))
    assert pair["first_difference"] == int(np.argmax(beyond))
    return measured


def _torch_onecycle():
    return torch_loop(
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=N), N
    )[0]


def test_torch_onecycle_against_transformers_warmup_cosine_peak_offset(client):
    import transformers

    real, _ = torch_loop(
        lambda opt: transformers.get_scheduler(
            "cosine", opt, num_warmup_steps=30, num_training_steps=N
        ),
        N,
    )
    assert _check_peak_offset(client, HF_COSINE, real[0], _torch_onecycle())


def test_torch_onecycle_against_optax_reports_the_measured_peak_offset(client):
    optax_lr = optax_reference(OPTAX_ONECYCLE_SCHED, 1, N)[0]
    assert _check_peak_offset(client, OPTAX_ONECYCLE, optax_lr, _torch_onecycle()) == 1


def test_identical_specs_and_alignment_on_common_steps(client):
    step = {"scheduler": {"type": "StepLR", "step_size": 10}, "steps": 50}
    sampled = {**step, "sample": {"every": 5}}
    body = client.post("/v1/schedules/compare", json={"specs": [step, sampled]}).json()
    assert body["steps"] == list(range(0, 50, 5))
    assert body["pairs"][0]["first_difference"] is None
    assert body["pairs"][0]["max_abs_diff"] == 0.0
    assert body["series"][0]["label"].startswith("0: StepLR(")
    assert any("compared at the 10 optimizer steps" in w for w in body["warnings"])


def test_overlay_plot_names_every_spec(client):
    r = client.post(
        "/v1/schedules/compare?format=svg",
        json={"specs": [TORCH_ONECYCLE, HF_COSINE], "labels": ["torch one", "hf cosine"]},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("image/svg+xml")
    assert "torch one" in r.text and "hf cosine" in r.text


def test_bad_input_is_problem_json_pointing_into_specs(client):
    step = {"scheduler": {"type": "StepLR", "step_size": 10}, "steps": 50}
    one = client.post("/v1/schedules/compare", json={"specs": [step]})
    assert one.status_code == 422
    assert one.headers["content-type"] == "application/problem+json"
    assert one.json()["errors"][0]["loc"] == ["body", "specs"]
    labels = client.post("/v1/schedules/compare", json={"specs": [step, step], "labels": ["a"]})
    assert labels.status_code == 422 and "one label per spec" in labels.text
    refused = {"scheduler": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 10}, "steps": 20}
    r = client.post("/v1/schedules/compare", json={"specs": [step, refused]})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"][:3] == ["body", "specs", 1]
    disjoint = {**step, "sample": {"at": [1]}}
    r = client.post(
        "/v1/schedules/compare", json={"specs": [{**step, "sample": {"at": [0]}}, disjoint]}
    )
    assert r.status_code == 422 and "share no optimizer step" in r.json()["detail"]
