"""The torch-based families in every surface: catalog, GET form, batch, formats."""

import io

import numpy as np
import pytest

HF_COSINE = {
    "type": "transformers",
    "name": "cosine",
    "num_warmup_steps": 10,
    "num_training_steps": 100,
}


def test_the_catalog_lists_every_name_with_a_working_example(client):
    from transformers.trainer_utils import SchedulerType

    entries = client.get("/v1/schedulers").json()["schedulers"]
    ours = [e for e in entries if e["type"] in {"transformers", "noam", "rex"}]
    assert {e["name"] for e in ours if e["type"] == "transformers"} == {
        t.value for t in SchedulerType
    }
    assert {e["type"] for e in ours} == {"transformers", "noam", "rex"}
    for entry in ours:
        got = client.post("/v1/schedules/compute", json=entry["example"])
        assert got.status_code == 200, (entry["name"], got.text)
        assert got.json()["families"][0]["family"] == entry["type"]
    cosine = next(e for e in ours if e.get("name") == "cosine")
    assert cosine["torch_class"] == "transformers.optimization.get_cosine_schedule_with_warmup"
    assert cosine["required"] == ["name", "num_warmup_steps", "num_training_steps"]
    assert cosine["defaults"]["scheduler_specific_kwargs"] == {"num_cycles": 0.5}
    kwargs = cosine["parameters"]["properties"]["scheduler_specific_kwargs"]
    assert set(kwargs["properties"]) == {"num_cycles"}
    wsd = next(e for e in ours if e.get("name") == "warmup_stable_decay")
    assert (
        "num_decay_steps"
        in wsd["parameters"]["properties"]["scheduler_specific_kwargs"]["required"]
    )


def test_the_get_form_takes_scalar_arguments(client):
    got = client.get("/v1/schedules/transformers", params={
        "name": "cosine", "num_warmup_steps": 10, "num_training_steps": 100, "num_cycles": 1.0, "steps": 120,
        "warmup": "exponential", "warmup_period": 5})  # fmt: skip
    post = client.post("/v1/schedules/compute", json={
        "scheduler": {**HF_COSINE, "scheduler_specific_kwargs": {"num_cycles": 1.0}}, "steps": 120,
        "warmup": {"type": "exponential", "warmup_period": 5}})  # fmt: skip
    assert got.status_code == 200, got.text
    assert got.json()["lr"] == post.json()["lr"]
    noam = client.get(
        "/v1/schedules/noam", params={"d_model": 512, "warmup_steps": 40, "steps": 60, "lr": 1.0}
    )
    assert noam.status_code == 200 and noam.json()["families"][0]["family"] == "noam"
    bad = client.get("/v1/schedules/transformers", params={"name": "linear", "num_warmup_steps": 1,
                                                           "num_training_steps": 9, "num_cycles": 2, "steps": 5})  # fmt: skip
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["loc"] == ["query", "num_cycles"]
    typo = client.get("/v1/schedules/transformers", params={"name": "cosin", "steps": 5})
    assert typo.status_code == 422 and "Did you mean 'cosine'?" in typo.json()["detail"]


@pytest.mark.parametrize("fmt", ["csv", "npy", "svg", "png"])
def test_every_format(client, fmt):
    body = {"scheduler": HF_COSINE, "steps": 120, "warmup": {"type": "untuned_linear"},
            "optimizer": {"type": "Adam", "lr": 0.001}}  # fmt: skip
    values = np.array(client.post("/v1/schedules/compute", json=body).json()["lr"])
    got = client.post(f"/v1/schedules/compute?format={fmt}", json=body)
    assert got.status_code == 200, got.text
    if fmt == "csv":
        rows = got.text.strip().splitlines()
        assert rows[0] == "step,lr" and len(rows) == 121
        assert float(rows[50].split(",")[1]) == values[0][49]
    elif fmt == "npy":
        assert np.array_equal(np.load(io.BytesIO(got.content)), values)
    else:
        assert got.headers["content-type"].startswith("image/")


def test_batch_answers_each_slot_like_compute(client):
    specs = [
        {"scheduler": HF_COSINE, "steps": 50},
        {"scheduler": {**HF_COSINE, "num_warmup_steps": 0}, "steps": 50},
        {"scheduler": {"type": "rex", "total_steps": 40}, "steps": 50, "warmup": {"type": "linear", "warmup_period": 3}},
        {"scheduler": {**HF_COSINE, "name": "cosin"}, "steps": 50},
    ]  # fmt: skip
    got = client.post("/v1/schedules/batch", json={"requests": specs})
    assert got.status_code == 200, got.text
    results = got.json()["results"]
    for spec, slot in zip(specs[:3], results[:3], strict=True):
        assert slot["status"] == 200
        assert slot["result"]["lr"] == client.post("/v1/schedules/compute", json=spec).json()["lr"]
    assert (
        results[3]["status"] == 422 and "Did you mean 'cosine'?" in results[3]["problem"]["detail"]
    )


def test_the_catalog_lists_every_warmup_with_a_working_example(client):
    warmups = client.get("/v1/schedulers").json()["warmups"]
    kinds = {(w["type"], w["library"]) for w in warmups}
    assert kinds == {("linear", None), ("constant", None), ("linear", "pytorch-warmup"),
                     ("exponential", "pytorch-warmup"), ("untuned_linear", "pytorch-warmup"),
                     ("untuned_exponential", "pytorch-warmup"), ("radam", "pytorch-warmup")}  # fmt: skip
    for entry in warmups:
        got = client.post("/v1/schedules/compute", json=entry["example"])
        assert got.status_code == 200, (entry, got.text)
        named = [f["family"] for f in got.json()["families"]]
        assert named == (["pytorch_warmup"] if entry["library"] else [])
