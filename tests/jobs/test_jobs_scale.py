"""Scale-out with real processes: API replicas (uvicorn) on one PostgreSQL store, Celery
workers on a redis-server of the test's own (so the last test can take it down), and the
local executor's API processes started at once. Leases are 8 s, heartbeats 0.5 s.

The Celery tests share one cluster and run in order: each leaves it as the next expects."""

import json
import os
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
import torch

from service.jobs.specs import JobSpec
from service.jobs.store import Store

from .cluster import Cluster, Proc, free_port, start_redis
from .support import POSTGRES_URL, postgres_available

pytestmark = pytest.mark.slow

http = httpx.Client(timeout=30)  # a loaded 2-core machine answers slowly at times
LONG = {"data": {"type": "noisy_sine", "n": 200, "n_train": 120}, "epochs": 1000, "batch_size": 1}
"""Runs for minutes: a job that is still running when the test acts on it."""
SMALL = {"data": {"type": "noisy_sine", "n": 200, "n_train": 120}, "epochs": 2}
"""Done in a fraction of a second."""
MEDIUM = {"data": {"type": "noisy_sine", "n": 200, "n_train": 120}, "epochs": 40, "batch_size": 8}
"""600 optimizer steps: a few seconds, long enough to act on while it runs."""
SMALL_RUNNING = {"data": {"type": "noisy_sine", "n": 200, "n_train": 120}, "epochs": 4}
"""32 optimizer steps."""
FINISH = {"succeeded", "failed", "cancelled", "interrupted"}


def _services_or_skip() -> None:
    problems = []
    if not postgres_available():
        problems.append("PostgreSQL is not reachable on 127.0.0.1:5432")
    try:
        redis.Redis(socket_connect_timeout=2).ping()
    except redis.RedisError:
        problems.append("Redis is not reachable on 127.0.0.1:6379")
    if problems:
        if os.environ.get("CI"):
            pytest.fail("; ".join(problems) + ": CI must run the scale-out tests")
        pytest.skip("; ".join(problems))


def sse(base: str, job_id: str, stop_after: str | None = None) -> Iterator[tuple[str, dict]]:
    """Yield (event, data) of the job's event stream until ``done`` (or ``stop_after``)."""
    with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events", timeout=60) as response:
        assert response.status_code == 200
        event = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event:
                data = json.loads(line.split(":", 1)[1])
                yield event, data
                if event == "done" or event == stop_after:
                    return


@pytest.fixture(scope="module")
def celery_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Two API replicas (A, B), a Celery worker (2 pool processes) and a standby worker that
    takes jobs only once the first one is killed, all started at once."""
    _services_or_skip()
    tmp = tmp_path_factory.mktemp("celery-cluster")
    port = free_port()
    broker = start_redis(tmp, port)
    cluster = Cluster(tmp, LRS_CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0")
    try:
        api_a, a = cluster.api()
        api_b, b = cluster.api()
        worker = cluster.celery()
        standby = cluster.celery(standby=True)
        cluster.wait_ready(a, api_a)
        cluster.wait_ready(b, api_b)
        cluster.wait_worker(worker)
        cluster.wait_worker(standby)
        yield {"cluster": cluster, "a": a, "b": b, "api_a": api_a, "worker": worker,
               "standby": standby, "redis": broker, "redis_port": port, "tmp": tmp}  # fmt: skip
    finally:
        cluster.close()
        broker = cluster.redis if hasattr(cluster, "redis") else broker
        broker.kill()
        broker.wait()


def test_submit_on_a_follow_and_cancel_on_b_download_from_a(celery_cluster):
    c, a, b = celery_cluster["cluster"], celery_cluster["a"], celery_cluster["b"]
    ready = http.get(f"{a}/readyz").json()["checks"]["jobs"]
    assert ready["ready"] and "Celery broker" in ready["detail"]

    done = http.post(f"{a}/v1/jobs", json=SMALL).json()["id"]
    events = list(sse(b, done))
    assert [e for e, _ in events][:2] == ["status", "status"]
    assert events[-1] == ("done", {"status": "succeeded", "error": None})
    job = http.get(f"{b}/v1/jobs/{done}").json()
    assert job["status"] == "succeeded"
    model = http.get(f"{a}/v1/jobs/{done}/artifacts/model.pt")
    assert model.status_code == 200
    path = c.tmp / "model.pt"
    path.write_bytes(model.content)
    assert set(torch.load(path, weights_only=True)) == {
        "first.weight", "first.bias", "second.weight", "second.bias"
    }  # fmt: skip
    metrics = http.get(f"{a}/v1/jobs/{done}/artifacts/metrics.json").json()
    assert metrics["id"] == done and metrics["test_loss"] == job["result"]["test_loss"]

    long = http.post(f"{a}/v1/jobs", json=LONG).json()["id"]
    stream = sse(b, long)
    progress = next(data for event, data in stream if event == "progress")  # from B
    assert progress["step"] > 0
    cancel = http.post(f"{b}/v1/jobs/{long}/cancel")
    assert (cancel.status_code, cancel.json()["status"]) in {(202, "running"), (200, "cancelled")}
    rest = list(stream)
    assert rest[-1][0] == "done" and rest[-1][1]["status"] == "cancelled"
    job = http.get(f"{a}/v1/jobs/{long}").json()
    assert job["status"] == "cancelled" and job["error"]["type"] == "cancelled"
    assert "on request" in job["error"]["detail"]
    assert http.get(f"{a}/v1/jobs/{long}/artifacts/model.pt").status_code == 404
    celery_cluster["succeeded"] = done


def test_sigkill_a_celery_worker_mid_job(celery_cluster):
    c, a, b = celery_cluster["cluster"], celery_cluster["a"], celery_cluster["b"]
    plain = http.post(f"{a}/v1/jobs", json=LONG).json()["id"]
    retried = http.post(f"{a}/v1/jobs", json={**MEDIUM, "device": "cpu", "retries": 1}).json()
    retried = retried["id"]
    for job_id in (plain, retried):
        c.wait_job(a, job_id, lambda j: (j["progress"] or {}).get("step", 0) > 0, what="progress")
    worker: Proc = celery_cluster["worker"]
    worker.kill()  # its pool processes die with it (PR_SET_PDEATHSIG)
    killed_at = time.monotonic()
    c.take_jobs(celery_cluster["standby"])
    celery_cluster["worker"] = celery_cluster["standby"]

    job = c.wait_job(b, plain, {"interrupted"}, timeout=30)
    took = time.monotonic() - killed_at
    assert took < 8 + 3, f"interrupted {took:.1f} s after the kill; the lease is 8 s"
    assert job["error"]["type"] == "interrupted"
    # The worker ran on this machine, so its death is seen at once; elsewhere the lease expires.
    assert "is gone" in job["error"]["detail"] or "LRS_JOB_LEASE_S" in job["error"]["detail"]
    assert job["progress"]["step"] > 0  # what it did stays visible
    # Requeued (not interrupted), then run again from scratch by the new worker.
    job = c.wait_job(b, retried, {"succeeded", "failed", "interrupted"}, timeout=90)
    assert job["status"] == "succeeded", job
    events = [e for e in sse(b, retried)]
    requeue = [d for e, d in events if e == "status" and d.get("detail")]
    assert requeue and "queued again" in requeue[0]["detail"]

    listed = {j["id"] for j in http.get(f"{a}/v1/jobs", params={"page_size": 100}).json()["jobs"]}
    assert {plain, retried} <= listed  # no record lost
    runs = c.data_dir / "runs"
    assert not (runs / plain).exists()  # nothing half-written was published
    assert http.get(f"{a}/v1/jobs/{plain}/artifacts/model.pt").status_code == 404
    latest = os.readlink(runs / "latest")
    assert http.get(f"{b}/v1/jobs/{latest}").json()["status"] == "succeeded"
    assert {p.name for p in (runs / "latest").iterdir()} == {"model.pt", "metrics.json"}


def test_sigkill_an_api_replica_while_its_jobs_run(celery_cluster):
    c, a, b = celery_cluster["cluster"], celery_cluster["a"], celery_cluster["b"]
    c.wait_worker(celery_cluster["worker"])
    medium = http.post(f"{a}/v1/jobs", json=MEDIUM).json()["id"]
    long = http.post(f"{a}/v1/jobs", json=LONG).json()["id"]
    for job_id in (medium, long):
        c.wait_job(b, job_id, {"running"})
    api_a: Proc = celery_cluster["api_a"]
    api_a.kill()
    api_a, a = c.api(port=int(a.rsplit(":", 1)[1]))  # restart A on its port at once
    job = c.wait_job(b, medium, {"succeeded", "failed", "interrupted"})
    assert job["status"] == "succeeded", (job, c.tails())  # it ran on while A was down
    c.wait_ready(a, api_a)
    celery_cluster["a"] = a
    time.sleep(1.5)  # a few reaper rounds of the restarted replica
    job = http.get(f"{a}/v1/jobs/{long}").json()
    assert job["status"] == "running", job  # the restart interrupted nothing
    interrupted = http.get(f"{a}/v1/jobs", params={"status": "interrupted"}).json()["jobs"]
    assert long not in {j["id"] for j in interrupted}
    assert http.post(f"{a}/v1/jobs/{long}/cancel").status_code == 202
    assert c.wait_job(a, long, FINISH)["status"] == "cancelled"


def test_redis_down_submit_503_readyz_says_why_schedules_served_queued_run_on_return(
    celery_cluster,
):
    c, a = celery_cluster["cluster"], celery_cluster["a"]
    port = celery_cluster["redis_port"]
    busy = [http.post(f"{a}/v1/jobs", json=LONG).json()["id"] for _ in range(2)]
    for job_id in busy:  # the worker's two pool processes are taken
        c.wait_job(a, job_id, {"running"})
    queued = [http.post(f"{a}/v1/jobs", json=SMALL).json()["id"] for _ in range(3)]
    cancelled = queued.pop()
    assert http.post(f"{a}/v1/jobs/{cancelled}/cancel").status_code == 200  # and revoked
    celery_cluster["redis"].kill()  # the queued jobs' tasks die with it (it keeps nothing)
    celery_cluster["redis"].wait()

    before = len(http.get(f"{a}/v1/jobs", params={"page_size": 100}).json()["jobs"])
    response = http.post(f"{a}/v1/jobs", json=SMALL)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "Celery broker" in response.json()["detail"] and str(port) in response.json()["detail"]
    after = len(http.get(f"{a}/v1/jobs", params={"page_size": 100}).json()["jobs"])
    assert after == before  # the refused job was not kept
    ready = http.get(f"{a}/readyz")
    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"
    assert "jobs: the Celery broker" in ready.json()["detail"]
    assert "does not answer" in ready.json()["detail"]
    schedule = http.post(
        f"{a}/v1/schedules/compute",
        json={"scheduler": {"type": "StepLR", "step_size": 3}, "steps": 10},
    )
    assert schedule.status_code == 200 and len(schedule.json()["lr"][0]) == 10
    for job_id in busy:  # cancel works without the broker (the store's flag)
        assert http.post(f"{a}/v1/jobs/{job_id}/cancel").status_code in (200, 202)

    c.redis = start_redis(celery_cluster["tmp"], port)  # back, empty
    for job_id in queued:  # sent again by the API, run by the reconnected worker
        assert c.wait_job(a, job_id, FINISH, timeout=90)["status"] == "succeeded"
    assert http.get(f"{a}/v1/jobs/{cancelled}").json()["status"] == "cancelled"
    assert http.get(f"{a}/readyz").status_code == 200


def test_two_local_api_processes_started_at_once_leave_each_others_jobs_alone(tmp_path):
    """Jobs are queued before both start, so one process's worker is running a job while
    the other is still in its start-up recovery."""
    _services_or_skip()
    cluster = Cluster(tmp_path, LRS_JOB_EXECUTOR="local")
    store = Store(POSTGRES_URL, cluster.prefix)
    try:
        store.create_schema()
        body = JobSpec.model_validate(SMALL_RUNNING).model_dump(mode="json")
        ids = [store.create(body, "h")[0].id for _ in range(3)]
        (api_a, _a), (api_b, b) = cluster.api(), cluster.api()
        # (their nice-19 workers warm up slowly on a busy machine: wait for the jobs instead)
        cluster.wait_ready(b, api_b, path="/healthz")
        jobs = [cluster.wait_job(b, i, FINISH, timeout=150) for i in ids]
        assert [j["status"] for j in jobs] == ["succeeded"] * 3, jobs
        runners = {r.worker.rsplit(":", 1)[0] for r in map(store.get, ids)}
        assert runners <= {f"{socket.gethostname()}:{p.pid}" for p in (api_a, api_b)}
    finally:
        store.dispose()
        cluster.close()
