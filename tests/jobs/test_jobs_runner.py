"""One job inside a worker: limits, cancellation and what it records."""

import json

import pytest

from service.jobs.artifacts import Artifacts
from service.jobs.runner import RunConfig, run_job
from service.jobs.service import JobService
from service.jobs.store import Store, sqlite_url
from service.settings import Settings

SPEC = {
    "data": {"type": "noisy_sine", "n": 200, "n_train": 120},
    "epochs": 50,
    "batch_size": 4,
}


@pytest.fixture
def parts(tmp_path):
    store = Store(sqlite_url(tmp_path))
    store.create_schema()
    yield store, Artifacts(tmp_path)
    store.dispose()


def _run(parts, tmp_path, max_seconds=60.0, cancelled=lambda: False):
    store, artifacts = parts
    job, _ = store.create(SPEC, "h")
    claimed = store.claim_next("w")
    config = RunConfig(sqlite_url(tmp_path), "", tmp_path, max_seconds, progress_every=10)
    return run_job(store, artifacts, claimed, config, cancelled), store.get(job.id)


def test_a_job_over_its_wall_time_fails_with_a_clear_error(parts, tmp_path):
    status, record = _run(parts, tmp_path, max_seconds=0.05)
    assert status == record.status == "failed"
    assert record.error["type"] == "time_limit"
    assert "wall-time limit of 0.05 s (LRS_JOB_MAX_SECONDS)" in record.error["detail"]


def test_a_cancel_flag_stops_the_job_before_the_next_batch(parts, tmp_path):
    calls = 0

    def cancelled():
        nonlocal calls
        calls += 1
        return calls > 25

    status, record = _run(parts, tmp_path, cancelled=cancelled)
    assert status == record.status == "cancelled" and calls == 26
    assert record.progress["step"] == 20  # the last report before batch 26 was at step 20
    assert not parts[1].folder(record.id).exists()


def test_success_records_the_result_writes_artifacts_and_moves_latest(parts, tmp_path):
    store, artifacts = parts
    spec_small = {**SPEC, "epochs": 2}
    job, _ = store.create(spec_small, "h")
    config = RunConfig(sqlite_url(tmp_path), "", tmp_path, 60.0, progress_every=10)
    assert run_job(store, artifacts, store.claim_next("w"), config) == "succeeded"
    record = store.get(job.id)
    metrics = json.loads((artifacts.folder(job.id) / "metrics.json").read_text())
    assert metrics["train_loss"] == record.result["train_loss"]
    assert artifacts.latest() == job.id


def test_a_run_that_lost_its_job_to_recovery_leaves_no_artifacts(parts, tmp_path, monkeypatch):
    store, artifacts = parts
    job, _ = store.create({**SPEC, "epochs": 2}, "h")
    finish = store.finish

    def recovery_first(job_id, status, **kwargs):
        if status == "succeeded":  # a restart marks the job interrupted before the run ends
            store.interrupt_running("restarted")
        return finish(job_id, status, **kwargs)

    monkeypatch.setattr(store, "finish", recovery_first)
    config = RunConfig(sqlite_url(tmp_path), "", tmp_path, 60.0, progress_every=10)
    assert run_job(store, artifacts, store.claim_next("w"), config) == "lost"
    assert store.get(job.id).status == "interrupted"
    assert artifacts.path(job.id, "model.pt") is None
    assert list(artifacts.runs.iterdir()) == []  # nor a staging folder


@pytest.mark.parametrize("after", ["finish", "publish", "point_latest"])
def test_deleting_a_job_as_it_succeeds_leaves_latest_at_an_existing_job(
    parts, tmp_path, monkeypatch, after
):
    store, artifacts = parts
    jobs = JobService(Settings(data_dir=tmp_path), store, executor=None, artifacts=artifacts)
    config = RunConfig(sqlite_url(tmp_path), "", tmp_path, 60.0, progress_every=10)
    older, _ = store.create({**SPEC, "epochs": 1}, "h")
    assert run_job(store, artifacts, store.claim_next("w"), config) == "succeeded"
    job, _ = store.create({**SPEC, "epochs": 1}, "h")
    owner = store if after == "finish" else artifacts
    original = getattr(owner, after)

    def then_delete(job_id, *args, **kwargs):
        done = original(job_id, *args, **kwargs)
        if job_id == job.id and store.get(job.id).status == "succeeded":
            jobs.delete(job.id)  # the DELETE request lands right after this step of the run
        return done

    monkeypatch.setattr(owner, after, then_delete)
    assert run_job(store, artifacts, store.claim_next("w"), config) == "succeeded"
    assert store.get(job.id) is None and not artifacts.folder(job.id).exists()
    assert artifacts.latest() == older.id and (artifacts.runs / "latest" / "model.pt").is_file()
    assert sorted(p.name for p in artifacts.runs.iterdir()) == sorted([older.id, "latest"])
