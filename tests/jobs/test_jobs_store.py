"""The job store on SQLite and on PostgreSQL: the same behaviour on both."""

from service.jobs.store import TERMINAL_EVENT, Store

SPEC = {"epochs": 1}


def test_create_get_and_idempotency_key(store: Store):
    job, created = store.create(SPEC, "h1", idempotency_key="k1")
    assert created and job.status == "queued" and job.created_at.tzinfo is not None
    again, created_again = store.create(SPEC, "h1", idempotency_key="k1")
    assert not created_again and again.id == job.id
    assert store.get(job.id).spec == SPEC
    assert store.get("nope") is None


def test_workers_claim_oldest_first_and_only_once(store: Store):
    ids = [store.create(SPEC, "h")[0].id for _ in range(3)]
    claimed = [store.claim_next(f"w{i}") for i in range(4)]
    assert [c.id for c in claimed[:3]] == ids and claimed[3] is None
    assert claimed[0].status == "running" and claimed[0].run_token


def test_a_run_writes_only_while_it_owns_the_job(store: Store):
    job, _ = store.create(SPEC, "h")
    run = store.claim_next("w")
    assert store.report_progress(job.id, run.run_token, {"epoch": 1})
    assert not store.report_progress(job.id, "another-token", {"epoch": 2})
    assert store.interrupt_running("restarted") == [job.id]
    # The old run finishing late cannot overwrite what recovery decided.
    assert not store.finish(job.id, "succeeded", token=run.run_token, result={})
    record = store.get(job.id)
    assert record.status == "interrupted" and record.error["detail"] == "restarted"
    assert record.progress == {"epoch": 1}


def test_events_are_logged_in_order_and_end_with_the_terminal_one(store: Store):
    job, _ = store.create(SPEC, "h")
    run = store.claim_next("w")
    store.report_progress(job.id, run.run_token, {"step": 1})
    store.finish(job.id, "succeeded", token=run.run_token, result={"lr": [0.1]})
    events = store.events_after(job.id)
    assert [e.event for e in events] == ["status", "status", "progress", TERMINAL_EVENT]
    assert events[-1].data == {"status": "succeeded", "error": None}
    assert [e.event for e in store.events_after(job.id, events[1].id)] == [
        "progress",
        TERMINAL_EVENT,
    ]


def test_cancel_delete_and_listing(store: Store):
    ids = [store.create(SPEC, "h")[0].id for _ in range(5)]
    assert store.finish(ids[0], "cancelled", from_status=("queued",))
    assert not store.request_cancel(ids[1])  # queued, not running
    run = store.claim_next("w")
    assert run.id == ids[1] and store.request_cancel(ids[1]) and store.cancel_requested(ids[1])
    assert not store.delete(ids[1])  # running
    assert store.delete(ids[0]) and store.get(ids[0]) is None
    assert store.events_after(ids[0]) == []
    page = store.list_jobs(limit=2)
    assert [j.id for j in page] == [ids[4], ids[3]]
    assert [j.id for j in store.list_jobs(limit=10, before_seq=page[-1].seq)] == ids[1:3][::-1]
    assert [j.id for j in store.list_jobs(status="running")] == [ids[1]]


def test_ids_are_never_reused_after_the_newest_job_is_deleted(store: Store):
    """A worker's cancel flag names a job by seq: a reused seq cancelled the next job."""
    old, _ = store.create(SPEC, "h")
    store.finish(old.id, "cancelled", from_status=("queued",))
    old_events = [e.id for e in store.events_after(old.id)]
    assert store.delete(old.id)
    new, _ = store.create(SPEC, "h")
    assert new.seq > old.seq
    assert min(e.id for e in store.events_after(new.id)) > max(old_events)
