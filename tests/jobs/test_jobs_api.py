"""The jobs HTTP API end to end, on one app with two worker processes."""

import base64
import io
import json
import time

import pytest
import torch

from .support import FINISHED, wait_for

SMALL = {"epochs": 2, "data": {"type": "noisy_sine", "n": 200, "n_train": 120}}
LONG = {"epochs": 1000, "batch_size": 1}


def submit(client, spec, **headers):
    response = client.post("/v1/jobs", json=spec, headers=headers)
    assert response.status_code == 202, response.json()
    return response


def compute_lr(client, job, **extra):
    """Ask the schedule API for the lr of every optimizer step the job made (the torch
    engine, the one jobs step, unless ``extra`` names another)."""
    spec, result = job["spec"], job["result"]
    body = {
        "optimizer": spec["optimizer"],
        "param_groups": spec["param_groups"],
        "scheduler": spec["scheduler"],
        "warmup": spec["warmup"],
        "steps": result["optimizer_steps"],
        "interval": spec["interval"],
        "steps_per_epoch": result["steps_per_epoch"],
        "engine": "torch",
        **extra,
    }
    response = client.post("/v1/schedules/compute", json=body)
    assert response.status_code == 200, response.json()
    return response.json()["lr"]


def test_the_default_job_succeeds_its_loss_falls_and_its_lr_is_the_schedule_apis(jobs_client):
    response = submit(jobs_client, {})
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    assert response.json()["status"] in {"queued", "running"}
    job = wait_for(jobs_client, job_id, FINISHED)
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert result["optimizer_steps"] == 5 * 38 and result["effective_batch_size"] == 16
    assert result["train_loss"][-1] < result["train_loss"][0] / 5
    assert result["test_loss"][-1] < 0.01 and result["device"] == "cpu"
    assert result["lr"] == compute_lr(jobs_client, job)[0]
    # The vectorized engine ("auto") evaluates closed forms: equal to rounding.
    assert result["lr"] == pytest.approx(compute_lr(jobs_client, job, engine="auto")[0], rel=1e-12)
    assert job["progress"]["step"] == result["optimizer_steps"]
    assert job["started_at"] >= job["created_at"] and job["finished_at"] >= job["started_at"]


def test_lr_matches_with_epoch_interval_warmup_groups_and_accumulation(jobs_client):
    spec = {
        **SMALL,
        "epochs": 6,
        "optimizer": {"type": "SGD", "lr": 0.05, "momentum": 0.9},
        "param_groups": [{"lr": 0.05}, {"lr": 0.01}],
        "scheduler": {"type": "CosineAnnealingLR", "T_max": 4},
        "warmup": {"type": "linear", "steps": 2, "start_factor": 0.0},
        "interval": "epoch",
        "batch_size": 10,
        "accumulation_steps": 3,
    }
    job = wait_for(jobs_client, submit(jobs_client, spec).json()["id"], FINISHED)
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert result["steps_per_epoch"] == 4 and result["effective_batch_size"] == 30
    assert result["lr_groups"] == compute_lr(jobs_client, job)
    assert result["lr"] == result["lr_groups"][0]


def test_plateau_is_fed_the_training_loss_and_replays_exactly(jobs_client):
    spec = {
        **SMALL,
        "epochs": 3,
        "scheduler": {"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 0},
        "optimizer": {"type": "Adam", "lr": 0.05},
    }
    job = wait_for(jobs_client, submit(jobs_client, spec).json()["id"], FINISHED)
    result = job["result"]
    assert len(result["scheduler_metrics"]) == result["optimizer_steps"] - 1
    lr = compute_lr(jobs_client, job, metrics=result["scheduler_metrics"])
    assert result["lr"] == lr[0] and min(lr[0]) < 0.05


def test_progress_and_cancel_stop_a_running_job(jobs_client):
    job_id = submit(jobs_client, {**SMALL, **LONG}).json()["id"]
    job = wait_for(jobs_client, job_id, {"running"})
    deadline = time.monotonic() + 30
    while job["progress"] is None:
        assert time.monotonic() < deadline
        job = jobs_client.get(f"/v1/jobs/{job_id}").json()
    assert set(job["progress"]) >= {"epoch", "step", "loss", "lr"}
    response = jobs_client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code in (200, 202)
    asked = time.monotonic()
    job = wait_for(jobs_client, job_id, FINISHED, timeout=10)
    assert time.monotonic() - asked < 2
    assert job["status"] == "cancelled" and job["error"]["type"] == "cancelled"
    again = jobs_client.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"


def test_a_queued_job_is_cancelled_at_once(jobs_client):
    blockers = [submit(jobs_client, {**SMALL, **LONG}).json()["id"] for _ in range(2)]
    queued = submit(jobs_client, SMALL).json()["id"]
    response = jobs_client.post(f"/v1/jobs/{queued}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert response.json()["started_at"] is None
    for job_id in blockers:
        jobs_client.post(f"/v1/jobs/{job_id}/cancel")
        wait_for(jobs_client, job_id, FINISHED)


def test_idempotency_key_returns_the_same_job_and_refuses_another_body(jobs_client):
    first = submit(jobs_client, SMALL, **{"Idempotency-Key": "abc-123"})
    again = submit(jobs_client, SMALL, **{"Idempotency-Key": "abc-123"})
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = jobs_client.post(
        "/v1/jobs", json={**SMALL, "epochs": 3}, headers={"Idempotency-Key": "abc-123"}
    )
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["detail"]
    wait_for(jobs_client, first.json()["id"], FINISHED)


def test_pagination_with_status_filter_and_opaque_tokens(jobs_client):
    ids = [submit(jobs_client, SMALL).json()["id"] for _ in range(5)]
    for job_id in ids:
        wait_for(jobs_client, job_id, FINISHED)
    seen, tokens = [], [None]
    while True:
        params = {"status": "succeeded", "page_size": 2}
        if tokens[-1]:
            params["page_token"] = tokens[-1]
        page = jobs_client.get("/v1/jobs", params=params).json()
        assert len(page["jobs"]) <= 2
        assert all(j["status"] == "succeeded" for j in page["jobs"])
        seen += [j["id"] for j in page["jobs"]]
        if page["next_page_token"] is None:
            break
        tokens.append(page["next_page_token"])
    assert seen[:5] == ids[::-1] and len(seen) == len(set(seen))
    bad = jobs_client.get("/v1/jobs", params={"page_token": "garbage!"})
    assert bad.status_code == 422
    other_filter = jobs_client.get("/v1/jobs", params={"status": "failed", "page_token": tokens[1]})
    assert other_filter.status_code == 422
    assert "keep the same status filter" in other_filter.json()["detail"]


@pytest.mark.parametrize("before", [True, 10**30, -1, 0, "5", None, 1.5])
def test_a_forged_page_token_is_a_422_not_a_500(jobs_client, before):
    raw = json.dumps({"before": before, "status": None}).encode()
    token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    response = jobs_client.get("/v1/jobs", params={"page_token": token})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "not a token this service issued" in response.json()["detail"]


def _events(text):
    events = []
    for block in text.strip().replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


def test_sse_stream_replays_a_finished_job_and_resumes_after_last_event_id(jobs_client):
    job_id = submit(jobs_client, SMALL).json()["id"]
    with jobs_client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        live = _events(response.read().decode())
    kinds = [kind for _, kind, _ in live]
    assert kinds[:2] == ["status", "status"] and kinds[-1] == "done"
    assert live[0][2] == {"status": "queued"} and live[1][2] == {"status": "running"}
    progress = [data for _, kind, data in live if kind == "progress"]
    assert [p["epoch"] for p in progress if p["test_loss"] is not None][-1] == 2
    assert progress[-1]["step"] == 2 * 8
    assert live[-1][2]["status"] == "succeeded"
    replay = _events(jobs_client.get(f"/v1/jobs/{job_id}/events").text)
    assert replay == live
    resumed = jobs_client.get(
        f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(live[2][0])}
    )
    assert _events(resumed.text) == live[3:]
    after_end = jobs_client.get(
        f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(live[-1][0])}
    )
    assert _events(after_end.text) == []


def test_a_last_event_id_beyond_64_bits_is_a_422_not_a_broken_stream(jobs_client):
    job_id = wait_for(jobs_client, submit(jobs_client, SMALL).json()["id"], FINISHED)["id"]
    response = jobs_client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(2**64)})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["header", "Last-Event-ID"]


def test_artifacts_load_with_weights_only_and_delete_removes_them(jobs_client, jobs_settings):
    job_id = submit(jobs_client, SMALL).json()["id"]
    job = wait_for(jobs_client, job_id, FINISHED)
    model = jobs_client.get(f"/v1/jobs/{job_id}/artifacts/model.pt")
    assert model.status_code == 200
    state = torch.load(io.BytesIO(model.content), weights_only=True)
    assert list(state) == ["first.weight", "first.bias", "second.weight", "second.bias"]
    metrics = jobs_client.get(f"/v1/jobs/{job_id}/artifacts/metrics.json").json()
    assert metrics["train_loss"] == job["result"]["train_loss"] and metrics["id"] == job_id
    assert jobs_client.get(f"/v1/jobs/{job_id}/artifacts/secrets.txt").status_code == 404
    runs = jobs_settings.data_dir / "runs"
    assert (runs / job_id / "model.pt").is_file()
    assert jobs_client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert not (runs / job_id).exists()
    assert jobs_client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert jobs_client.get(f"/v1/jobs/{job_id}/artifacts/model.pt").status_code == 404


def test_latest_points_at_the_newest_succeeded_job_and_moves_on_delete(jobs_client, jobs_settings):
    first = submit(jobs_client, SMALL).json()["id"]
    wait_for(jobs_client, first, FINISHED)
    second = submit(jobs_client, SMALL).json()["id"]
    wait_for(jobs_client, second, FINISHED)
    latest = jobs_settings.data_dir / "runs" / "latest"
    assert latest.is_symlink() and latest.readlink().name == second
    assert jobs_client.delete(f"/v1/jobs/{second}").status_code == 204
    assert latest.readlink().name != second and (latest / "model.pt").is_file()


def test_deleting_a_running_job_is_a_conflict(jobs_client):
    job_id = submit(jobs_client, {**SMALL, **LONG}).json()["id"]
    wait_for(jobs_client, job_id, {"running"})
    response = jobs_client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 409 and "cancel it first" in response.json()["detail"]
    jobs_client.post(f"/v1/jobs/{job_id}/cancel")
    wait_for(jobs_client, job_id, FINISHED)


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({"epochs": -1}, ["body", "epochs"]),
        ({"epochs": 0}, ["body", "epochs"]),
        ({"batch_size": 0}, ["body", "batch_size"]),
        ({"batch_size": 601}, ["body"]),
        ({"accumulation_steps": 0}, ["body", "accumulation_steps"]),
        ({"data": {"type": "series", "values": [1.0, 2.0, 3.0], "tau": 3}}, ["body", "data"]),
        ({"data": {"type": "noisy_sine", "n": 10, "tau": 10}}, ["body", "data"]),
        ({"data": {"type": "noisy_sine", "n_train": 996}}, ["body", "data"]),
        ({"epochs": 100_000}, ["body", "epochs"]),
        ({"data": {"type": "noisy_sine", "n": 10_000_000}}, ["body", "data", "n"]),
        ({"param_groups": [{"lr": 0.1}] * 3}, ["body", "param_groups"]),
        ({"optimizer": {"type": "SGD", "lr": 0.1, "betas": [0.9, 0.9]}}, ["body", "optimizer"]),
        (
            {
                "scheduler": {
                    "type": "SequentialLR",
                    "schedulers": [{"type": "ExponentialLR", "gamma": 0.9}],
                    "milestones": [5],
                }
            },
            ["body", "scheduler"],
        ),
        ({"device": "cuda"}, ["body", "device"]),
        ({"seed": 2**64}, ["body", "seed"]),
        ({"data": {"type": "noisy_sine", "n": 100_000, "tau": 4000}}, ["body", "data", "tau"]),
        ({"data": {"type": "noisy_sine", "n": 20_000, "tau": 4097}}, ["body", "data", "tau"]),
        ({"optimizer": {"type": "LBFGS", "lr": 0.1}}, ["body", "optimizer", "type"]),
        ({"optimizer": {"type": "SparseAdam", "lr": 0.1}}, ["body", "optimizer", "type"]),
        ({"optimizer": {"type": "Muon", "lr": 0.1}}, ["body", "optimizer", "type"]),
        ({"epoch": 3}, ["body", "epoch"]),
    ],
)
def test_bad_input_is_a_422_problem(jobs_client, spec, where):
    if spec == {"device": "cuda"} and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    response = jobs_client.post("/v1/jobs", json=spec)
    assert response.status_code == 422, response.json()
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422 and problem["detail"]
    assert problem["errors"][0]["loc"][: len(where)] == where


def test_nan_in_a_series_is_refused(jobs_client):
    body = '{"data": {"type": "series", "values": [1.0, NaN, 2.0, 3.0, 4.0, 5.0, 6.0]}}'
    response = jobs_client.post(
        "/v1/jobs", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"][:3] == ["body", "data", "values"]


def test_batch_size_larger_than_the_training_set_names_the_sizes(jobs_client):
    response = jobs_client.post("/v1/jobs", json={"batch_size": 601})
    assert "larger than the training set (600 examples" in response.json()["detail"]


@pytest.mark.parametrize("job_id", ["nope", "x" * 500, "%2e%2e", "0" * 32])
def test_unknown_job_is_a_404_problem(jobs_client, job_id):
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("DELETE", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/artifacts/model.pt"),
    ]:
        response = jobs_client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.headers["content-type"] == "application/problem+json"


def test_readiness_reports_the_workers(jobs_client):
    checks = jobs_client.get("/readyz").json()["checks"]
    assert checks["jobs"]["ready"] and "2 of 2 worker processes" in checks["jobs"]["detail"]


def test_an_empty_idempotency_key_is_refused(jobs_client):
    response = jobs_client.post("/v1/jobs", json={"epochs": 1}, headers={"Idempotency-Key": ""})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["header", "idempotency-key"]
