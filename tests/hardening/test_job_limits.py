"""Item 4 of issue 15: model size, queue caps, retention and overflow, on the real server."""

import os
import time

import pytest

from service.jobs.artifacts import Artifacts
from service.jobs.service import MODEL_PT_OVERHEAD

from .conftest import FINISHED, LONG, QUICK, HealthProbe, wait_status

ABUSIVE = [
    ({"model": {"hidden": [4096] * 8}}, ["body", "model", "hidden"], "LRS_JOB_MAX_PARAMETERS"),
    ({"optimizer": {"type": "SGD", "lr": 1e308}}, ["body", "optimizer", "lr"], "float32"),
    ({"param_groups": [{"lr": 1e300}]}, ["body", "param_groups", 0, "lr"], "float32"),
    (
        {"scheduler": {"type": "ExponentialLR", "gamma": 1e300}},
        ["body", "scheduler", "gamma"],
        "float32",
    ),
    (
        {"data": {"type": "series", "values": [0.5] * 20 + [1e308]}},
        ["body", "data", "values"],
        "values[20]",
    ),
    (
        {"data": {"type": "noisy_sine", "noise_std": 1e308}},
        ["body", "data", "noise_std"],
        "noise_std",
    ),
]


def test_what_would_overflow_or_fill_the_disk_is_a_422_at_submit(server):
    rss = server.rss_bytes()
    with server.client() as client, HealthProbe(server.url) as probe:
        for spec, loc, words in ABUSIVE:
            start = time.monotonic()
            response = client.post("/v1/jobs", json=spec)
            assert time.monotonic() - start < 2.0
            assert response.status_code == 422, (spec, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["errors"][0]["loc"] == loc, problem
            assert words in problem["detail"]
    assert probe.failures == [] and probe.worst < 0.5, probe.worst
    assert server.rss_bytes() - rss < 50 << 20  # no 470 MB model was built


def test_queue_caps_answer_429_per_client_and_503_for_everyone_with_retry_after(server):
    """CAPS: 3 queued or running jobs per client, 8 in all; Retry-After 7 s."""
    submitted: list[tuple[object, str]] = []
    clients = [server.client() for _ in range(3)]
    try:
        with HealthProbe(server.url) as probe:
            first, second, third = clients
            for _ in range(3):
                r = first.post("/v1/jobs", json={**QUICK, **LONG})
                assert r.status_code == 202, r.text
                submitted.append((first, r.json()["id"]))
            over = first.post("/v1/jobs", json=QUICK)
            assert over.status_code == 429, over.text
            assert over.headers["retry-after"] == "7"
            assert over.headers["content-type"] == "application/problem+json"
            assert "LRS_JOB_QUEUE_MAX_PER_CLIENT" in over.json()["detail"]
            # a retry of a job already queued is still answered (the idempotent replay)
            keyed = second.post("/v1/jobs", json=QUICK, headers={"Idempotency-Key": "k1"})
            submitted.append((second, keyed.json()["id"]))
            for _ in range(2):
                r = second.post("/v1/jobs", json={**QUICK, **LONG})
                submitted.append((second, r.json()["id"]))
            for _ in range(2):
                r = third.post("/v1/jobs", json={**QUICK, **LONG})
                assert r.status_code == 202, r.text
                submitted.append((third, r.json()["id"]))
            replay = second.post("/v1/jobs", json=QUICK, headers={"Idempotency-Key": "k1"})
            assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
            full = third.post("/v1/jobs", json=QUICK)
            assert full.status_code == 503, full.text
            assert full.headers["retry-after"] == "7"
            assert "LRS_JOB_QUEUE_MAX" in full.json()["detail"]
            for client, job_id in submitted:
                assert client.post(f"/v1/jobs/{job_id}/cancel").status_code in (200, 202, 409)
            for client, job_id in submitted:
                wait_status(client, job_id, FINISHED)
            again = first.post("/v1/jobs", json=QUICK)
            assert again.status_code == 202  # room again once they finished
            wait_status(first, again.json()["id"], FINISHED)
        assert probe.failures == [] and probe.worst < 0.5, probe.worst
    finally:
        for client in clients:
            client.close()


def test_retention_keeps_the_newest_artifacts_and_latest_stays_valid(server):
    """CAPS: artifacts of the 3 newest succeeded jobs are kept."""
    with server.client() as client:
        ids = []
        for _ in range(5):
            r = client.post("/v1/jobs", json=QUICK)
            ids.append(r.json()["id"])
            assert wait_status(client, ids[-1], FINISHED)["status"] == "succeeded"
        deadline = time.monotonic() + 10  # the API measures the data folder every second
        while client.get(f"/v1/jobs/{ids[1]}/artifacts/model.pt").status_code != 404:
            assert time.monotonic() < deadline, "retention did not remove the oldest artifacts"
            time.sleep(0.2)
        for job_id in ids[:2]:
            gone = client.get(f"/v1/jobs/{job_id}/artifacts/metrics.json")
            assert gone.status_code == 404 and "retention" in gone.json()["detail"]
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"  # kept
        for job_id in ids[2:]:
            assert client.get(f"/v1/jobs/{job_id}/artifacts/model.pt").status_code == 200
        latest = server.data_dir / "runs" / "latest"
        assert latest.resolve().name == ids[-1] and (latest / "model.pt").is_file()


def test_the_data_quota_removes_the_oldest_artifacts_first_and_never_latest(tmp_path):
    artifacts = Artifacts(tmp_path)
    for k, job_id in enumerate(["a" * 32, "b" * 32, "c" * 32, "d" * 32]):
        folder = artifacts.folder(job_id)
        folder.mkdir(parents=True)
        (folder / "model.pt").write_bytes(b"x" * 1000)
        os.utime(folder, (1_700_000_000 + k, 1_700_000_000 + k))  # written in this order
    artifacts.point_latest("a" * 32)  # latest is the oldest here: it must survive
    removed = artifacts.retain(keep=100, max_bytes=2500)
    assert removed == ["b" * 32, "c" * 32]
    assert artifacts.folder("a" * 32).is_dir() and artifacts.latest() == "a" * 32
    assert artifacts.retain(keep=1, max_bytes=None) == ["d" * 32]


@pytest.mark.parametrize("hidden", [[10], [1000, 1000]])
def test_the_model_size_estimate_bounds_the_real_model_pt(tmp_path, hidden):
    """The submit check's size estimate (JobService.check) is never below what torch.save
    writes."""
    import torch

    from service.jobs import specs, trainer
    from service.jobs.service import model_parameters

    spec = specs.JobSpec(model=specs.ModelSpec(hidden=hidden))
    net = trainer.make_net(spec.model, spec.data.tau)
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    estimate = 4 * model_parameters(spec.model, spec.data.tau) + MODEL_PT_OVERHEAD
    assert path.stat().st_size <= estimate < path.stat().st_size + MODEL_PT_OVERHEAD
