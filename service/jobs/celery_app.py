"""The Celery app that runs training jobs: ``celery -A service.jobs.celery_app worker``.

Start workers on any machine that reaches the broker (``LRS_CELERY_BROKER_URL``), the shared
job store (``DATABASE_URL``, PostgreSQL) and the shared data directory (``LRS_DATA_DIR``, a
volume); they read the same ``LRS_*`` settings as the API. Each task names one job: the
worker claims it in the store (a conditional UPDATE, so a duplicate task or one for a job
cancelled meanwhile does nothing), holds its lease with a heartbeat and runs
:func:`runner.run_job`, which polls the store's cancel flag before every batch.

Delivery: acks late (a task is acknowledged after the job ends) and one task per worker
process at a time (prefetch 1, so a long job never holds others back on one process). Time
limits come from ``LRS_JOB_MAX_SECONDS``: the job stops itself at that limit and records
``time_limit``; Celery's soft limit is that plus 30 s and its hard limit (the pool process
is killed) that plus 60 s, for a job stuck where it cannot check. A job whose worker dies is
not redelivered by Celery in time to matter: its lease expires and the API takes it away
(interrupted, or queued and sent again when the spec asks for retries).
"""

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery import Celery, signals

from service.jobs.artifacts import Artifacts
from service.jobs.runner import RunConfig, run_job
from service.jobs.store import Store
from service.settings import Settings, get_settings

log = logging.getLogger("service.jobs")

TASK_NAME = "service.jobs.run"
SOFT_LIMIT_GRACE_S = 30.0
HARD_LIMIT_GRACE_S = 60.0


def queue_name(table_prefix: str) -> str:
    """Return the broker queue of the store whose tables have ``table_prefix``: apps that
    share a Redis but not a store never take each other's tasks."""
    return f"lrs-{table_prefix}jobs"


def safe_url(url: str) -> str:
    """Return ``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def make_app(settings: Settings) -> Celery:
    """Return a Celery app configured from ``settings`` (the API sends with one, workers
    run the tasks of :data:`app`)."""
    celery = Celery("service.jobs", broker=settings.celery_broker_url, set_as_current=False)
    celery.conf.update(
        task_default_queue=queue_name(settings.job_table_prefix),
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_soft_time_limit=settings.job_max_seconds + SOFT_LIMIT_GRACE_S,
        task_time_limit=settings.job_max_seconds + HARD_LIMIT_GRACE_S,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        broker_transport_options={
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
            # redelivery of an unacknowledged task: never while its job could still run
            "visibility_timeout": max(3600, 2 * (settings.job_max_seconds + HARD_LIMIT_GRACE_S)),
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return celery


@dataclass
class _WorkerState:
    pid: int
    name: str
    store: Store
    artifacts: Artifacts
    config: RunConfig


_state: _WorkerState | None = None


def _worker_state() -> _WorkerState:
    """The store and config of this worker process (built after the fork, once per process)."""
    global _state
    if _state is None or _state.pid != os.getpid():
        settings = get_settings()
        config = RunConfig.from_settings(settings)
        store = config.store()
        store.create_schema()
        name = f"celery:{socket.gethostname()}:{os.getpid()}"
        _state = _WorkerState(os.getpid(), name, store, Artifacts(settings.data_dir), config)
    return _state


app = make_app(get_settings())


@app.task(name=TASK_NAME, ignore_result=True)
def run(job_id: str) -> str:
    """Claim job ``job_id`` in the store and run it; return its final status, or
    ``"skipped"`` when it was not queued (cancelled, deleted, or run by another copy)."""
    state = _worker_state()
    job = state.store.claim(job_id, state.name)
    if job is None:
        return "skipped"
    log.info("job %s claimed by %s", job_id, state.name)
    return run_job(state.store, state.artifacts, job, state.config)


@signals.worker_process_init.connect
def _init_pool_process(**_: Any) -> None:
    """A pool process dies with its worker (Linux), so killing the worker stops its jobs
    (their leases then expire), and trains with one torch thread."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    import torch

    torch.set_num_threads(1)
