"""Issue 15, item 4 across replicas: two API processes sharing one store (SQLite in a shared
data directory, or PostgreSQL tables) never admit more than the queue caps between them, and
the data quota counts the job records wherever the store keeps them.

The replica is a second uvicorn on the hardened server's store (its tables, its data
directory), with no job workers of its own (the first server's worker runs every job) and a
small data quota: 6 MB, so a few big job records fill it.
"""

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from service.jobs.store import Store, sqlite_url

from .conftest import (
    FINISHED,
    LONG,
    QUICK,
    Server,
    new_address,
    start_server,
    wait_ready,
    wait_status,
)
from .test_event_loop import _add_big_jobs

REPLICA_QUOTA = 6 << 20


@pytest.fixture(scope="module")
def replica(server: Server) -> Iterator[Server]:
    extra = {"LRS_JOB_WORKERS": "0", "LRS_JOB_DATA_MAX_BYTES": str(REPLICA_QUOTA)}
    if server.database_url:
        extra["DATABASE_URL"] = server.database_url
    twin = start_server(server.data_dir, server.store, extra, prefix=server.prefix)
    try:
        yield wait_ready(twin)
    finally:
        twin.stop()  # its tables are the first server's: leave them


def _active(server: Server) -> int:
    store = Store(server.database_url or sqlite_url(server.data_dir), server.prefix)
    try:
        return store.count_active()
    finally:
        store.dispose()


def _race(servers: list[Server], addresses: list[str], per_address: int) -> list[httpx.Response]:
    """Send ``per_address`` LONG submits from each address, alternating between the servers,
    all released at once; return the responses."""
    jobs = [
        (servers[(k + i) % len(servers)], address)
        for k, address in enumerate(addresses)
        for i in range(per_address)
    ]
    clients = [s.client(address) for s, address in jobs]
    for c in clients:  # connect first, so the submits race each other, not the handshakes
        c.get("/healthz")
    start = threading.Barrier(len(jobs))
    answers: list[httpx.Response | None] = [None] * len(jobs)

    def submit(index: int) -> None:
        start.wait()
        answers[index] = clients[index].post("/v1/jobs", json={**QUICK, **LONG})

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    assert all(a is not None for a in answers)
    return answers  # type: ignore[return-value]


def _cancel_all(server: Server, answers: list[httpx.Response]) -> None:
    with server.client() as client:
        ids = [a.json()["id"] for a in answers if a.status_code == 202]
        for job_id in ids:
            client.post(f"/v1/jobs/{job_id}/cancel")
        for job_id in ids:
            wait_status(client, job_id, FINISHED)


def test_two_replicas_racing_never_admit_more_than_the_caps(server, replica):
    """CAPS: 8 queued or running in all, 3 per client; 24 submits at once from 12 addresses
    over both processes, then 8 at once from one address."""
    assert _active(server) == 0
    answers = _race([server, replica], [new_address() for _ in range(12)], 2)
    try:
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [202] * 8 + [503] * 16, statuses
        assert _active(server) == 8
        for refused in (a for a in answers if a.status_code == 503):
            assert refused.headers["retry-after"] == "7"
            assert "LRS_JOB_QUEUE_MAX" in refused.json()["detail"]
    finally:
        _cancel_all(server, answers)

    answers = _race([server, replica], [new_address()], 8)
    try:
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [202] * 3 + [429] * 5, statuses
        assert all(
            "LRS_JOB_QUEUE_MAX_PER_CLIENT" in a.json()["detail"]
            for a in answers
            if a.status_code == 429
        )
    finally:
        _cancel_all(server, answers)


def test_the_data_quota_counts_the_records_in_the_store_and_frees_on_delete(server, replica):
    """16 job records of ~1 MB each (counted at their uncompressed length on PostgreSQL): the
    replica (quota 6 MB) refuses submits with 503 until they are deleted, whichever store
    holds them (on PostgreSQL the data directory holds none of them)."""
    with server.client() as client:
        blocker = client.post("/v1/jobs", json={**QUICK, **LONG}).json()["id"]
        wait_status(client, blocker, {"running"})  # the worker is busy: the big jobs stay ours
        big = _add_big_jobs(server, 16, 25_000)
        client.post(f"/v1/jobs/{blocker}/cancel")
        wait_status(client, blocker, FINISHED)
        done = client.post("/v1/jobs", json=QUICK).json()["id"]  # a publish: measured now
        assert wait_status(client, done, FINISHED)["status"] == "succeeded"
    try:
        with replica.client() as client:
            deadline = time.monotonic() + 15
            while True:
                r = client.post("/v1/jobs", json=QUICK)
                if r.status_code == 503:
                    break
                assert r.status_code == 202, r.text
                wait_status(client, r.json()["id"], FINISHED)
                assert time.monotonic() < deadline, "the records did not count in the quota"
                time.sleep(0.5)
            assert r.headers["retry-after"] == "7"
            detail = r.json()["detail"]
            assert "LRS_JOB_DATA_MAX_BYTES" in detail and "delete finished jobs" in detail
            # the first server (a 2 GB quota) still takes jobs: the quota is the replica's
            with server.client() as first:
                ok = first.post("/v1/jobs", json=QUICK)
                assert ok.status_code == 202
                wait_status(first, ok.json()["id"], FINISHED)
            for job_id in big:
                assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
            big = []
            deadline = time.monotonic() + 15
            while (r := client.post("/v1/jobs", json=QUICK)).status_code == 503:
                assert time.monotonic() < deadline, "deleting the jobs did not free the quota"
                time.sleep(0.3)
            assert r.status_code == 202, r.text
            wait_status(client, r.json()["id"], FINISHED)
    finally:
        with server.client() as client:
            for job_id in big:
                client.delete(f"/v1/jobs/{job_id}")
