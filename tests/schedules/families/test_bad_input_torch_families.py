"""Bad family specs are 4xx problem+json naming the field, with "did you mean" for names."""

import sys

import pytest

HF = {"type": "transformers", "num_warmup_steps": 10, "num_training_steps": 100}


@pytest.mark.parametrize(
    ("scheduler", "loc", "words"),
    [
        ({**HF, "name": "cosin"}, ["body", "scheduler", "name"], "Did you mean 'cosine'?"),
        ({**HF, "name": "warmup_stable_decy"}, ["body", "scheduler", "name"], "Did you mean 'warmup_stable_decay'?"),
        ({**HF, "name": "linear", "scheduler_specific_kwargs": {"num_cycles": 2}},
         ["body", "scheduler", "scheduler_specific_kwargs", "num_cycles"], "'num_cycles' is an argument of cosine"),
        ({**HF, "name": "cosine", "scheduler_specific_kwargs": {"lr_end": 0.0}},
         ["body", "scheduler", "scheduler_specific_kwargs", "lr_end"], "is an argument of polynomial"),
        ({**HF, "name": "cosine", "num_warmup_steps": -1}, ["body", "scheduler", "num_warmup_steps"], "greater than or equal to 0"),
        ({**HF, "name": "cosine", "num_training_steps": -5}, ["body", "scheduler", "num_training_steps"], "greater than or equal to 0"),
        ({**HF, "name": "warmup_stable_decay", "scheduler_specific_kwargs": {"num_decay_steps": 95}},
         ["body", "scheduler"], "num_decay_steps"),
        ({**HF, "name": "warmup_stable_decay", "scheduler_specific_kwargs": {"num_decay_steps": -3}},
         ["body", "scheduler", "scheduler_specific_kwargs", "num_decay_steps"], "greater than or equal to 0"),
        ({"type": "transformers", "name": "cosine", "num_warmup_steps": 10}, ["body", "scheduler"], "requires num_training_steps"),
        ({"type": "transformers", "name": "linear"}, ["body", "scheduler"], "requires num_warmup_steps"),
        ({**HF, "name": "cosine_with_min_lr"}, ["body", "scheduler"], "exactly one of min_lr and min_lr_rate"),
        ({**HF, "name": "polynomial", "num_warmup_steps": 100}, ["body", "scheduler"], "num_training_steps > num_warmup_steps"),
        ({"type": "noam", "d_model": 0, "warmup_steps": 10}, ["body", "scheduler", "d_model"], "greater than 0"),
        ({"type": "rex", "total_steps": -1}, ["body", "scheduler", "total_steps"], "greater than 0"),
    ],
)  # fmt: skip
def test_bad_specs_name_the_field(client, scheduler, loc, words):
    got = client.post("/v1/schedules/compute", json={"scheduler": scheduler, "steps": 50})
    assert got.status_code == 422, got.text
    assert got.headers["content-type"] == "application/problem+json"
    problem = got.json()
    assert loc in [e["loc"] for e in problem["errors"]], problem
    assert words in problem["detail"], problem


@pytest.mark.parametrize("engine", ["torch", "vectorized"])
def test_what_the_library_refuses_at_construction_is_a_422(client, engine):
    """lr_end must be below the optimizer's lr (transformers raises ValueError)."""
    spec = {**HF, "name": "polynomial", "scheduler_specific_kwargs": {"lr_end": 0.5}}
    got = client.post(
        "/v1/schedules/compute", json={"scheduler": spec, "steps": 50, "engine": engine}
    )
    assert got.status_code == 422, got.text
    assert "lr_end (0.5) must be smaller than initial lr (0.1)" in got.json()["detail"]
    assert got.json()["errors"][0]["loc"] == [
        "body",
        "scheduler",
        "scheduler_specific_kwargs",
        "lr_end",
    ]


def test_metric_driven_names_need_metrics(client):
    spec = {"type": "transformers", "name": "reduce_lr_on_plateau"}
    got = client.post("/v1/schedules/compute", json={"scheduler": spec, "steps": 5})
    assert got.status_code == 422
    assert got.json()["errors"][0]["loc"] == ["body", "metrics"]
    assert "transformers reduce_lr_on_plateau needs metrics" in got.json()["detail"]


def test_without_the_library_torch_is_a_422_and_auto_still_answers(client, monkeypatch):
    """The service runs without transformers/pytorch_warmup: only engine 'torch' needs them."""
    monkeypatch.setitem(sys.modules, "transformers.optimization", None)  # import fails
    monkeypatch.setitem(sys.modules, "pytorch_warmup", None)
    cases = [
        ({**HF, "name": "linear"}, None),
        ({"type": "StepLR", "step_size": 5}, {"type": "radam"}),
    ]
    for scheduler, warmup in cases:
        body = {
            "scheduler": scheduler,
            "steps": 20,
            "warmup": warmup,
            "optimizer": {"type": "Adam", "lr": 0.01},
        }
        refused = client.post("/v1/schedules/compute", json={**body, "engine": "torch"})
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["loc"] == ["body", "engine"]
        assert "it is not installed on this server" in refused.json()["detail"]
        assert client.post("/v1/schedules/compute", json=body).status_code == 200
