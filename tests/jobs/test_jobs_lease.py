"""Job ownership as a lease in the store, on SQLite and PostgreSQL: only a lease that expired
(or whose owner process is gone) lets another process take a running job away."""

import subprocess
import sys
import time

import sqlalchemy as sa

from service.jobs import lease
from service.jobs.store import Store

SPEC = {"epochs": 1}
RETRY = {"epochs": 1, "device": "cpu", "retries": 1}
ELSEWHERE = "other-host/abcd1234/4026531836/1/123"
"""A lease owner on another machine: only its lease's expiry counts."""


def _claim(store: Store, spec=SPEC, owner: str | None = ELSEWHERE):
    job, _ = store.create(spec, "h")
    run = store.claim(job.id, "w")
    assert run is not None and run.status == "running" and run.attempts == 1
    if owner is not None:  # pretend another machine holds it
        with store.engine.begin() as conn:
            conn.execute(sa.update(store.jobs).values(lease_owner=owner))
    return run


def test_a_live_lease_is_never_taken_and_an_expired_one_is(store: Store):
    store.lease_s = 0.6
    run = _claim(store)
    assert store.reap() == ([], [])
    for _ in range(4):  # heartbeats keep it alive past several lease periods
        time.sleep(0.3)
        assert store.heartbeat(run.id, run.run_token)
        assert store.reap() == ([], [])
    time.sleep(0.9)
    assert store.reap() == ([], [run.id])
    record = store.get(run.id)
    assert record.status == "interrupted" and record.error["type"] == "interrupted"
    assert "LRS_JOB_LEASE_S" in record.error["detail"]
    # The old run can neither renew nor finish over what the reaper decided.
    assert not store.heartbeat(run.id, run.run_token)
    assert not store.finish(run.id, "succeeded", token=run.run_token, result={})
    assert [e.event for e in store.events_after(run.id)][-1] == "done"


def test_a_spec_with_retries_is_queued_again_then_interrupted(store: Store):
    store.lease_s = 0.2
    run = _claim(store, RETRY)
    time.sleep(0.4)
    assert store.reap() == ([run.id], [])
    record = store.get(run.id)
    assert record.status == "queued" and record.run_token is None and record.progress is None
    last = store.events_after(run.id)[-1]
    assert last.data["status"] == "queued" and "run 1 of at most 2" in last.data["detail"]
    again = store.claim(run.id, "w2")
    assert again.attempts == 2 and again.run_token != run.run_token
    with store.engine.begin() as conn:
        conn.execute(sa.update(store.jobs).values(lease_owner=ELSEWHERE))
    time.sleep(0.4)
    assert store.reap() == ([], [run.id])
    assert "2 runs" in store.get(run.id).error["detail"]


def test_a_pending_cancel_is_honoured_when_the_lease_expires(store: Store):
    store.lease_s = 0.2
    run = _claim(store, RETRY)
    assert store.request_cancel(run.id)
    time.sleep(0.4)
    assert store.reap() == ([], [run.id])
    assert store.get(run.id).status == "cancelled"


def test_an_owner_on_this_machine_keeps_its_job_while_alive_and_loses_it_at_once(store: Store):
    store.lease_s = 0.2
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        run = _claim(store, owner=lease.identity(child.pid))
        time.sleep(0.4)
        assert store.reap() == ([], [])  # expired, but its owner lives (a late heartbeat)
    finally:
        child.kill()
        child.wait()
    assert not lease.owner_gone(lease.identity())  # this process
    assert lease.owner_gone(store.get(run.id).lease_owner)
    assert store.reap() == ([], [run.id])
    assert "is gone" in store.get(run.id).error["detail"]


def test_claim_takes_only_a_queued_job(store: Store):
    job, _ = store.create(SPEC, "h")
    assert store.claim(job.id, "a") is not None
    assert store.claim(job.id, "b") is None  # a duplicate task does nothing
    assert store.claim("nope", "b") is None


def test_withdraw_deletes_only_a_queued_job(store: Store):
    job, _ = store.create(SPEC, "h", idempotency_key="k")
    assert store.withdraw(job.id) and store.get(job.id) is None
    assert store.create(SPEC, "h", idempotency_key="k")[1]  # the key is free again
    run = _claim(store)
    assert not store.withdraw(run.id)


def test_create_schema_adds_the_lease_columns_to_an_older_store(store: Store):
    with store.engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {store.jobs.name} DROP COLUMN lease_owner"))
    store.create_schema()
    columns = {c["name"] for c in sa.inspect(store.engine).get_columns(store.jobs.name)}
    assert {"lease_owner", "lease_expires", "attempts"} <= columns
    _claim(store)


def test_retries_need_a_deterministic_device(jobs_client):
    response = jobs_client.post("/v1/jobs", json={"epochs": 1, "retries": 1})
    assert response.status_code == 422
    assert "device to 'cpu'" in response.json()["detail"]
    response = jobs_client.post("/v1/jobs", json={"epochs": 1, "retries": 9, "device": "cpu"})
    assert response.status_code == 422 and response.json()["errors"][0]["loc"][-1] == "retries"
