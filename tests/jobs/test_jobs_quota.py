"""The data quota's count of the job records (issue 15), on SQLite and on PostgreSQL.

On PostgreSQL the count is a running total that triggers keep in the write's own transaction
(``Store.record_bytes`` reads 16 rows however many jobs there are); it must equal a recount of
every row (``Store.scan_record_bytes``) after any mix of writes, from several processes, and
on a store an earlier version filled. On SQLite it is the database's live pages. On both,
retention removes the oldest artifacts first (never ``latest``), and submits are refused
while the records alone pass the quota, until finished jobs are deleted.
"""

import os
import threading

import pytest
import sqlalchemy as sa

from service.errors import Unavailable
from service.jobs.artifacts import Artifacts
from service.jobs.service import JobService
from service.jobs.store import Store
from service.settings import Settings

SPEC = {"epochs": 1, "data": {"type": "noisy_sine", "n": 100, "n_train": 60}}
OWNER = "a" * 64


def big_result(values: int) -> dict:
    return {"lr": [0.1 / (k + 1) for k in range(values)], "test_loss": 0.01}


def counted(store: Store) -> int:
    """The quota's count; on PostgreSQL checked against a recount of every row."""
    total = store.record_bytes()
    if store.usage is not None:
        assert total == store.scan_record_bytes()
    return total


def test_the_count_follows_every_write_and_returns_when_jobs_are_deleted(store: Store):
    empty = counted(store)
    queued, _ = store.create(SPEC, "h", client="ip:t", owner=OWNER)
    run = store.claim_next("w1")
    assert run is not None and run.id == queued.id
    assert store.heartbeat(run.id, run.run_token)
    assert store.report_progress(run.id, run.run_token, {"epoch": 1, "loss": 0.5})
    before_result = counted(store)
    result = big_result(50_000)  # ~1 MB of JSON
    assert store.finish(run.id, "succeeded", token=run.run_token, result=result)
    with_result = counted(store)
    assert with_result - before_result > 500_000  # the result counts (SQLite: its pages)

    withdrawn, _ = store.create(SPEC, "h")
    assert store.withdraw(withdrawn.id)
    cancelled, _ = store.create(SPEC, "h", idempotency_key="k1")
    assert store.finish(cancelled.id, "cancelled", from_status=("queued",))
    lost, _ = store.create({**SPEC, "retries": 1}, "h")
    claimed = store.claim_next("w2")
    assert claimed is not None and store.request_cancel(claimed.id)
    store.reap(owner_state=lambda _owner: "gone")  # its worker died: cancelled
    assert store.get(lost.id).status == "cancelled"
    counted(store)

    for job_id in (queued.id, cancelled.id, lost.id):
        assert store.delete(job_id)
    after = counted(store)
    assert with_result - after > 500_000  # deleting freed the result
    if store.usage is not None:
        assert after == empty == 0  # exact on PostgreSQL: nothing left, nothing counted


def test_concurrent_writers_of_several_processes_keep_the_running_total_exact(store: Store):
    """Eight writers, each with its own engine (as API processes and workers of several
    machines have), submit, run, finish and delete at once."""
    if store.usage is None:
        pytest.skip("SQLite counts its pages: there is no running total to race")
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(k: int) -> None:
        own = Store(store.url, store.table_prefix)
        try:
            start.wait()
            for i in range(12):
                job, _ = own.create(SPEC, "h", client=f"ip:{k}", owner=OWNER if k % 2 else None)
                own.finish(job.id, "succeeded", from_status=("queued",), result=big_result(200))
                if i % 3:
                    assert own.delete(job.id)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list_jobs(limit=1000)) == 8 * 4
    assert counted(store) > 0


def test_a_store_an_earlier_version_filled_is_counted_and_its_owners_read_at_start(store: Store):
    """Before issue 15 there were no usage triggers and owners lived only in job_owners."""
    jobs = [store.create(SPEC, "h")[0] for _ in range(3)]
    store.finish(jobs[0].id, "succeeded", from_status=("queued",), result=big_result(5000))
    with store.engine.begin() as conn:
        conn.execute(sa.insert(store.owners).values(job_id=jobs[1].id, key_hash=OWNER))
        if store.usage is not None:  # as an earlier version left it: no triggers, no total
            for table in (store.jobs, store.events):
                for op in ("ins", "upd", "del"):
                    trigger = store._quote(f"{table.name}_usage_{op}")
                    conn.execute(sa.text(f"DROP TRIGGER {trigger} ON {store._quote(table.name)}"))
            conn.execute(sa.delete(store.usage))
    store.create(SPEC, "h")  # written without triggers

    again = Store(store.url, store.table_prefix)  # the next start
    try:
        again.create_schema()
        assert again.owner_of(jobs[1].id) == OWNER and again.owner_of(jobs[2].id) is None
        assert [j.id for j in again.list_jobs(owner=OWNER)] == [jobs[1].id]
        counted(again)
        assert again.delete(jobs[0].id)
        counted(again)
    finally:
        again.dispose()


def _artifact(artifacts: Artifacts, job_id: str, size: int, when: int) -> None:
    folder = artifacts.folder(job_id)
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(os.urandom(size))
    (folder / "metrics.json").write_text("{}")
    os.utime(folder, (when, when))


def test_retention_and_the_quota_on_the_real_store(store: Store, tmp_path):
    data_dir = tmp_path  # the SQLite store's file is in it, as in a deployment
    artifacts = Artifacts(data_dir)
    ids = []
    for k in range(4):
        job, _ = store.create(SPEC, "h", owner=OWNER)
        assert store.finish(job.id, "succeeded", from_status=("queued",), result=big_result(100))
        _artifact(artifacts, job.id, 200_000, 1_700_000_000 + k)
        ids.append(job.id)
    artifacts.point_latest(ids[0])  # latest is the oldest here: it must survive
    settings = Settings(data_dir=data_dir, job_data_max_bytes=1, job_artifacts_keep=1000)
    jobs = JobService(settings, store, None, artifacts)  # type: ignore[arg-type]
    records = jobs.records_bytes()
    quota = records + 2 * 200_000 + 100_000  # room for two and a half models
    jobs.settings = Settings(data_dir=data_dir, job_data_max_bytes=quota, job_artifacts_keep=1000)

    assert jobs.maintain_storage(force=True) == ids[1:3]  # the oldest, never latest
    assert artifacts.latest() == ids[0] and artifacts.path(ids[0], "model.pt") is not None
    assert artifacts.path(ids[3], "model.pt") is not None
    assert [store.get(i).status for i in ids] == ["succeeded"] * 4  # the records stay
    assert not jobs.storage_full
    jobs._check_storage()  # submits pass
    assert jobs.records_bytes() == records  # retention freed artifacts, not records

    big = []
    while jobs.records_bytes() <= quota:  # records alone past the quota: submits refused
        job, _ = store.create(SPEC, "h")
        store.finish(job.id, "succeeded", from_status=("queued",), result=big_result(20_000))
        big.append(job.id)
    jobs.maintain_storage(force=True)
    assert jobs.storage_full
    with pytest.raises(Unavailable) as refused:
        jobs._check_storage()
    assert "LRS_JOB_DATA_MAX_BYTES" in refused.value.detail
    assert artifacts.latest() == ids[0]  # latest survives even a full quota

    for job_id in big:
        assert store.delete(job_id)
    jobs.maintain_storage(force=True)
    assert not jobs.storage_full
    jobs._check_storage()
    counted(store)
