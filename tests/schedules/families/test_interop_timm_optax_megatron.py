"""timm, optax and Megatron specs everywhere a torch spec goes: the GET form, every format,
batch, batch scaling and the catalog (whose examples run)."""

import io

import numpy as np
import pytest

from service.schedules.families import megatron, optax, timm
from tests.schedules.families.api import compute, lr

FAMILIES = {"timm": timm.SCHEDS, "optax": optax.NAMES, "megatron": megatron.STYLES}
TIMM = {"type": "timm", "sched": "cosine", "num_epochs": 10, "warmup_epochs": 2, "warmup_lr": 0.0}
OPTAX = {"type": "optax", "schedule": "warmup_cosine_decay_schedule", "init_value": 0.0,
         "peak_value": 0.1, "warmup_steps": 10, "decay_steps": 100}  # fmt: skip
MEGATRON = {"type": "megatron", "lr_decay_style": "WSD", "max_lr": 0.1, "min_lr": 0.01,
            "lr_warmup_steps": 5, "lr_decay_steps": 40, "wsd_decay_steps": 10, "start_wd": 0.0,
            "end_wd": 0.1, "wd_incr_style": "linear"}  # fmt: skip


@pytest.mark.parametrize(
    ("query", "scheduler", "extra"),
    [
        ("timm?sched=cosine&num_epochs=10&warmup_epochs=2&warmup_lr=0", TIMM, {}),
        ("optax?schedule=warmup_cosine_decay_schedule&init_value=0&peak_value=0.1&warmup_steps=10"
         "&decay_steps=100", OPTAX, {}),
        ("megatron?lr_decay_style=WSD&max_lr=0.1&min_lr=0.01&lr_warmup_steps=5&lr_decay_steps=40"
         "&wsd_decay_steps=10&start_wd=0&end_wd=0.1&wd_incr_style=linear&include=weight_decay",
         MEGATRON, {"include": ["weight_decay"]}),
    ],
    ids=["timm", "optax", "megatron"],
)  # fmt: skip
def test_the_get_form_is_the_post(client, query, scheduler, extra):
    got = client.get(f"/v1/schedules/{query}&steps=50")
    assert got.status_code == 200, got.text
    assert got.json() == compute(client, scheduler, 50, "auto", **extra)


def test_the_get_form_names_an_unknown_selector(client):
    got = client.get("/v1/schedules/timm?sched=cosin&steps=5")
    assert got.status_code == 422
    assert "did you mean 'cosine'" in got.json()["detail"]
    assert got.json()["errors"][0]["loc"] == ["query", "sched"]


def test_csv_and_npy_carry_every_group_and_the_weight_decay(client):
    body = {
        "scheduler": MEGATRON,
        "steps": 45,
        "param_groups": [{}, {}],
        "include": ["weight_decay"],
    }
    data = compute(client, MEGATRON, 45, "auto", param_groups=[{}, {}], include=["weight_decay"])
    csv = client.post("/v1/schedules/compute?format=csv", json=body)
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert lines[0] == "step,lr_0,lr_1,weight_decay_0,weight_decay_1"
    assert [float(v) for v in lines[44].split(",")[1:]] == [
        data["lr"][0][44], data["lr"][1][44], data["weight_decay"][0][44], data["weight_decay"][1][44]
    ]  # fmt: skip
    npy = client.post("/v1/schedules/compute?format=npy", json=body)
    assert np.array_equal(np.load(io.BytesIO(npy.content)), lr(data))


def test_batch_answers_each_family_as_compute_does(client):
    specs = [{"scheduler": s, "steps": 60} for s in (TIMM, OPTAX, MEGATRON, TIMM)]
    specs.append({"scheduler": {**OPTAX, "decay_steps": 5}, "steps": 60})
    results = client.post("/v1/schedules/batch", json={"requests": specs}).json()["results"]
    assert [r["status"] for r in results] == [200, 200, 200, 200, 422]
    for spec, result in zip(specs[:4], results[:4], strict=True):
        assert result["result"]["lr"] == compute(client, spec["scheduler"], 60, "auto")["lr"]


def test_batch_scaling_multiplies_every_lr_valued_argument(client):
    scaling = {"base_batch_size": 256, "batch_size": 1024}
    for scheduler in (TIMM, OPTAX, MEGATRON):
        base = lr(compute(client, scheduler, 60, "vectorized"))
        scaled = lr(compute(client, scheduler, 60, "vectorized", batch_scaling=scaling))
        np.testing.assert_allclose(scaled, 4 * base, rtol=1e-12, err_msg=scheduler["type"])


def test_the_catalog_lists_every_name_and_its_example_runs(client):
    entries = client.get("/v1/schedulers").json()["schedulers"]
    listed = {(e["type"], e["name"]) for e in entries}
    for kind, names in FAMILIES.items():
        for name in names:
            assert (kind, name) in listed
    for entry in entries:
        if entry["type"] in FAMILIES:
            response = client.post("/v1/schedules/compute", json=entry["example"])
            assert response.status_code == 200, (entry["name"], response.text)
