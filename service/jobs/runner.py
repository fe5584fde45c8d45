"""One job from claim to finished record, inside whatever process runs it.

:func:`run_job` trains a claimed job, reports progress to the store, stages the artifacts,
records the result, then publishes the artifacts (or discards them when the job is no longer
this run's) and retargets ``latest``. While it runs, a heartbeat thread renews the job's lease
in the store. It needs only the store, the artifacts folder and a cancel flag, so any executor
(the local process pool, a Celery worker) can call it.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.devices import resolve_device
from service.errors import ServiceError
from service.jobs import lease, specs, trainer
from service.jobs.artifacts import Artifacts
from service.jobs.store import LEASE_S, JobRecord, Store, sqlite_url

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("service.jobs")

STORE_CANCEL_POLL_S = 0.5
"""How often a running job also reads the store's cancel flag (for executors without a
shared-memory flag)."""
HEARTBEAT_GRACE_S = 60.0
"""How long past its wall-time limit a run still renews its lease (staging, publishing)."""


@dataclass(frozen=True)
class RunConfig:
    """What a worker needs to run jobs, picklable for spawned processes."""

    database_url: str
    table_prefix: str
    data_dir: Path
    max_seconds: float
    progress_every: int
    lease_s: float = LEASE_S
    heartbeat_s: float = LEASE_S / 3

    @classmethod
    def from_settings(cls, settings: "Settings") -> "RunConfig":
        """Return the config the ``LRS_*`` ``settings`` name (creating the data directory;
        the store is ``database_url``, or SQLite in the data directory when that is unset)."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            database_url=settings.database_url or sqlite_url(settings.data_dir),
            table_prefix=settings.job_table_prefix,
            data_dir=settings.data_dir,
            max_seconds=settings.job_max_seconds,
            progress_every=settings.job_progress_every,
            lease_s=settings.job_lease_s,
            heartbeat_s=settings.job_heartbeat_s,
        )

    def store(self) -> Store:
        """Open the store this config names (in a worker process)."""
        return Store(self.database_url, self.table_prefix, lease_s=self.lease_s)


def run_job(
    store: Store,
    artifacts: Artifacts,
    job: JobRecord,
    config: RunConfig,
    cancelled: Callable[[], bool] = lambda: False,
) -> str:
    """Train the claimed ``job`` and record how it ended; return the final status."""
    assert job.run_token is not None
    token = job.run_token
    started = time.monotonic()
    deadline = started + config.max_seconds
    last_store_check = started
    where: dict[str, Any] = {"epoch": 1, "step": 0}

    heartbeat = lease.Heartbeat(
        lambda: store.heartbeat(job.id, token),
        config.heartbeat_s,
        until=deadline + HEARTBEAT_GRACE_S,
    )

    def check() -> None:
        nonlocal last_store_check
        if heartbeat.lost.is_set():
            raise trainer.JobStopped("lost", "the job is no longer this worker's run")
        now = time.monotonic()
        if now - last_store_check >= STORE_CANCEL_POLL_S:
            last_store_check = now
            if store.cancel_requested(job.id):
                raise trainer.JobStopped("cancelled", _stopped_at("cancelled", where))
        if cancelled():
            raise trainer.JobStopped("cancelled", _stopped_at("cancelled", where))
        if now > deadline:
            raise trainer.JobStopped(
                "time_limit",
                f"the job ran longer than its wall-time limit of {config.max_seconds:g} s "
                f"(LRS_JOB_MAX_SECONDS) and was stopped at epoch {where['epoch']}, optimizer "
                f"step {where['step']}; lower epochs or the data size",
            )

    def on_progress(progress: dict[str, Any], _epoch_end: bool) -> None:
        where.update(progress)
        if not store.report_progress(job.id, token, progress):
            raise trainer.JobStopped("lost", "the job is no longer this worker's run")

    with heartbeat:
        return _run(store, artifacts, job, token, config, check, on_progress)


def _run(
    store: Store,
    artifacts: Artifacts,
    job: JobRecord,
    token: str,
    config: RunConfig,
    check: Callable[[], None],
    on_progress: Callable[[dict[str, Any], bool], None],
) -> str:
    try:
        spec = specs.JobSpec.model_validate(job.spec)
        device = resolve_device(spec.device)
        result, net = trainer.train(spec, device, on_progress, check, config.progress_every)
        staged = artifacts.stage(
            job.id, net.state_dict(), {"id": job.id, "spec": job.spec, **result}
        )
    except trainer.JobStopped as stop:
        if stop.kind == "lost":
            return "lost"
        status = "cancelled" if stop.kind == "cancelled" else "failed"
        store.finish(job.id, status, token=token, error={"type": stop.kind, "detail": stop.detail})
        return status
    except ServiceError as exc:
        store.finish(job.id, "failed", token=token, error={"type": exc.slug, "detail": exc.detail})
        return "failed"
    except Exception as exc:
        log.exception("job %s failed", job.id)
        error = {"type": "error", "detail": f"{type(exc).__name__}: {exc}"}
        store.finish(job.id, "failed", token=token, error=error)
        return "failed"
    if not store.finish(job.id, "succeeded", token=token, result=result):
        artifacts.discard(staged)
        return "lost"
    artifacts.publish(job.id, staged)
    artifacts.point_latest(job.id)
    if store.get(job.id) is None:  # deleted meanwhile, maybe before publish or point_latest
        artifacts.unpublish(job.id, store.latest_succeeded)
    return "succeeded"


def _stopped_at(what: str, where: dict[str, Any]) -> str:
    return f"{what} on request at epoch {where['epoch']}, optimizer step {where['step']}"
