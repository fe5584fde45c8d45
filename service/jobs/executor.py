"""Where jobs run: the :class:`Executor` interface, the local worker-process pool and Celery.

The API only ever calls ``start``, ``submit``, ``resume``, ``cancel``, ``supervise``,
``status`` and ``stop``; job state lives in the store, which every executor shares.
:func:`make_executor` picks one by ``LRS_JOB_EXECUTOR``:

- ``local``: :class:`ProcessExecutor` runs ``job_workers`` spawned processes (spawn, not
  fork, so CUDA is safe in them) that claim queued jobs from the store oldest first (FIFO)
  and train them with :func:`runner.run_job`; ``python -m service.jobs.worker`` runs the same
  pool outside the API.
- ``celery``: :class:`CeleryExecutor` sends one task per job to the Redis broker; Celery
  workers (:mod:`service.jobs.celery_app`) claim the job in the store and run it.

Both reap in ``supervise``: a running job whose lease expired is interrupted or requeued
(:meth:`Store.reap`), whoever ran it.
"""

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import queue
import signal
import socket
import sys
import time
from typing import Any, Protocol

import torch

from service.errors import Unavailable
from service.jobs import specs, trainer
from service.jobs.artifacts import Artifacts
from service.jobs.runner import RunConfig, run_job
from service.jobs.store import JobRecord, Store
from service.settings import Settings

log = logging.getLogger("service.jobs")

_PR_SET_PDEATHSIG = 1
NICENESS = 19
"""How much lower than the API's a worker's CPU priority is (``nice`` increment): at 19 the
scheduler gives a busy API about 98% of a shared core (weight 1024 against 15)."""


class Executor(Protocol):
    """Runs queued jobs somewhere; the store holds all job state."""

    def start(self) -> None:
        """Start the workers (returns without waiting for them to be ready)."""

    def submit(self, job_id: str) -> None:
        """Tell the workers a job was queued; Unavailable (503) when they cannot be told."""

    def resume(self) -> None:
        """After a start: hand the jobs already queued in the store to the workers."""

    def cancel(self, job: JobRecord) -> None:
        """Ask the worker running ``job`` to stop it before its next batch."""

    def supervise(self) -> None:
        """Replace dead workers, fail the job a dead worker was running, and take away jobs
        whose lease expired (called about every second)."""

    def status(self) -> tuple[bool, str]:
        """Return whether jobs can run now, and a sentence saying why (not)."""

    def stop(self) -> None:
        """Stop the workers; jobs they were running become interrupted."""


def make_executor(settings: Settings, store: Store, config: RunConfig) -> Executor:
    """Return the executor ``LRS_JOB_EXECUTOR`` names."""
    if settings.job_executor == "celery":
        return CeleryExecutor(store, settings)
    return ProcessExecutor(store, config, settings.job_workers)


class Reaper:
    """Calls :meth:`Store.reap` at most every ``every_s`` seconds; returns requeued ids."""

    def __init__(self, store: Store, every_s: float) -> None:
        self.store = store
        self.every_s = every_s
        self._last = float("-inf")

    def __call__(self) -> list[str]:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return []
        self._last = now
        try:
            requeued, finished = self.store.reap()
        except Exception:
            log.warning("could not reap expired job leases (store down?)", exc_info=True)
            return []
        for job_id in requeued:
            log.warning("job %s lost its worker (lease expired); queued again", job_id)
        for job_id in finished:
            log.warning("job %s lost its worker (lease expired); interrupted", job_id)
        return requeued


class ProcessExecutor:
    """``workers`` spawned processes claiming queued jobs from the store, oldest first.

    With ``workers=0`` the API runs no job itself: ``python -m service.jobs.worker`` processes
    (on this machine, same store and data directory) claim the jobs.
    """

    def __init__(self, store: Store, config: RunConfig, workers: int) -> None:
        self.store = store
        self.config = config
        self.workers = workers
        self._reap = Reaper(store, config.heartbeat_s)
        self.prefix = f"{socket.gethostname()}:{os.getpid()}:"
        self._ctx = mp.get_context("spawn")
        self._wake: Any = self._ctx.Queue()
        # Shared memory: the seq of the job worker i must cancel, and whether worker i is ready.
        self._cancel: Any = self._ctx.Array("q", workers, lock=False)
        self._ready: Any = self._ctx.Array("b", workers, lock=False)
        self._procs: list[Any] = [None] * workers
        self._stopping = False

    def _spawn(self, index: int) -> None:
        self._ready[index] = 0
        proc = self._ctx.Process(
            target=_worker_main,
            args=(index, self.prefix + str(index), self.config, self._wake, self._cancel),
            kwargs={"ready": self._ready},
            name=f"job-worker-{index}",
            daemon=True,
        )
        proc.start()
        self._procs[index] = proc

    def start(self) -> None:
        for index in range(self.workers):
            self._spawn(index)

    def submit(self, job_id: str) -> None:
        if self.workers:  # with none, workers elsewhere poll the store
            self._wake.put(job_id)

    def resume(self) -> None:
        if self.store.queued_ids(limit=1):
            self.submit("")

    def cancel(self, job: JobRecord) -> None:
        if job.worker and job.worker.startswith(self.prefix):
            self._cancel[int(job.worker[len(self.prefix) :])] = job.seq

    def supervise(self) -> None:
        for index, proc in enumerate(self._procs):
            if self._stopping or proc is None or proc.is_alive():
                continue
            name = self.prefix + str(index)
            log.error("job worker %s exited with code %s; replacing it", name, proc.exitcode)
            for record in self.store.list_jobs(status="running", limit=1000):
                if record.worker == name:
                    self.store.finish(
                        record.id,
                        "failed",
                        error={
                            "type": "worker_died",
                            "detail": f"the worker process running the job exited with code "
                            f"{proc.exitcode} (out of memory or killed)",
                        },
                    )
            self._spawn(index)
        if not self._stopping and self._reap():
            self.submit("")

    def status(self) -> tuple[bool, str]:
        if not self.workers:
            return True, (
                "no worker processes in the API process (LRS_JOB_WORKERS=0): jobs run on "
                "`python -m service.jobs.worker` processes"
            )
        alive = sum(1 for p in self._procs if p is not None and p.is_alive())
        ready = sum(1 for i, p in enumerate(self._procs) if p and p.is_alive() and self._ready[i])
        detail = f"{ready} of {self.workers} worker processes ready ({alive} alive)"
        return ready == self.workers, detail

    def stop(self) -> None:
        self._stopping = True
        for _ in self._procs:
            self._wake.put(None)
        for proc in self._procs:
            if proc is None:
                continue
            proc.join(timeout=1.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.store.interrupt_running(
            "the service stopped while the job was running", worker_prefix=self.prefix
        )
        self._wake.close()
        self._wake.join_thread()


# --------------------------------------------------------------------------- worker side


def _die_with_parent() -> None:
    """Have Linux SIGKILL this process when the API process dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _warm_up() -> None:
    """Run a one-epoch job once, so the first real job does not pay torch's lazy start-up."""
    spec = specs.JobSpec(epochs=1, data=specs.NoisySine(n=40, n_train=20), batch_size=10)
    trainer.train(spec, torch.device("cpu"))


def _worker_main(
    index: int, name: str, config: RunConfig, wake: Any, cancel: Any, *, ready: Any
) -> None:
    """Claim and run queued jobs until told to stop or the API process goes away."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the API, which stops us
    os.nice(NICENESS)  # training is batch work: the API's requests come first on a busy CPU
    parent = os.getppid()
    torch.set_num_threads(1)  # one core per job: leave the rest to the API and other jobs
    store = config.store()
    artifacts = Artifacts(config.data_dir)
    _warm_up()
    ready[index] = 1
    try:
        while os.getppid() == parent:
            try:
                token = wake.get(timeout=1.0)
            except queue.Empty:
                token = ""
            if token is None:
                break
            while os.getppid() == parent and (job := store.claim_next(name)) is not None:
                cancel[index] = 0  # a flag left for an earlier job must not stop this one
                run_job(store, artifacts, job, config, lambda seq=job.seq: cancel[index] == seq)
    finally:
        store.dispose()


# --------------------------------------------------------------------------- Celery


SEND_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
"""How a task send retries: briefly, since a submit waits for it (a down broker is a 503)."""


class CeleryExecutor:
    """Jobs sent as Celery tasks through the Redis broker; Celery workers run them.

    The store stays the truth: a task only names its job, and the worker claims the job with
    the same conditional UPDATE the local workers use, so a duplicate task, or one for a job
    cancelled meanwhile, does nothing. Tasks lost with the broker (a Redis restarted without
    persistence) are sent again: every ``heartbeat_s`` the executor compares the broker's
    queue with the store's queued jobs and resends them when the queue holds fewer (only
    jobs queued for two heartbeat periods, at least 2 s, so the replica that just stored a
    job has sent it, or withdrawn it, first).
    """

    def __init__(self, store: Store, settings: Settings) -> None:
        import redis

        from service.jobs import celery_app

        self.store = store
        self.settings = settings
        self.app = celery_app.make_app(settings)
        self.queue = celery_app.queue_name(settings.job_table_prefix)
        self.broker = celery_app.safe_url(settings.celery_broker_url)
        self.task_name = celery_app.TASK_NAME
        self._redis = redis.Redis.from_url(
            settings.celery_broker_url, socket_connect_timeout=1, socket_timeout=2
        )
        self._reap = Reaper(store, settings.job_heartbeat_s)
        self._check_every_s = settings.job_heartbeat_s
        self._resend_after_s = max(2.0, 2 * settings.job_heartbeat_s)
        self._last_check = float("-inf")

    def _send(self, job_id: str) -> None:
        self.app.send_task(
            self.task_name,
            args=[job_id],
            task_id=job_id,
            queue=self.queue,
            retry=True,  # a pooled connection the broker closed (a restart) is reopened
            retry_policy=SEND_RETRY,
        )

    def start(self) -> None:
        """Connect and build the message machinery now (lazily it cost the first submit 2 s)."""
        try:
            with self.app.producer_or_acquire() as producer:
                producer.connection.ensure_connection(max_retries=1, timeout=2)
                self.app.amqp.as_task_v2("warm-up", self.task_name, args=["warm-up"])
                self.app.amqp.queues[self.queue]  # declares it in the app
        except Exception as exc:
            log.warning("the Celery broker %s does not answer yet: %s", self.broker, exc)

    def submit(self, job_id: str) -> None:
        try:
            self._redis.ping()  # fails at once when nothing listens; the send may retry
            self._send(job_id)
        except Exception as exc:
            raise Unavailable(
                f"the job queue (Celery broker {self.broker}) does not answer, so the job was "
                f"not queued ({type(exc).__name__}: {exc}); try again when GET /readyz is 200",
                headers={"Retry-After": "5"},
            ) from exc

    def resume(self) -> None:
        self._resend_lost()

    def _resend_lost(self) -> None:
        """Send the queued jobs again when the broker's queue holds fewer tasks than the
        store has queued jobs (tasks lost with the broker; duplicates are harmless)."""
        try:
            queued = self.store.queued_ids(min_age_s=self._resend_after_s)
            if not queued or self._redis.llen(self.queue) >= len(queued):
                return
            log.warning(
                "the broker holds fewer tasks than the %d queued jobs; sending them again",
                len(queued),
            )
            for job_id in queued:
                self._send(job_id)
        except Exception as exc:
            log.warning("could not resend queued jobs: %s: %s", type(exc).__name__, exc)

    def cancel(self, job: JobRecord) -> None:
        # A running task stops on the store's cancel flag (recorded as cancelled, with its
        # progress); a queued one is revoked, so workers drop it unrun. (Were it not, its
        # claim would find the job cancelled and do nothing.)
        if job.status != "queued":
            return
        try:
            self.app.control.revoke(job.id)
        except Exception as exc:
            log.warning("could not revoke task %s: %s: %s", job.id, type(exc).__name__, exc)

    def supervise(self) -> None:
        for job_id in self._reap():
            with contextlib.suppress(Exception):
                self._send(job_id)
        now = time.monotonic()
        if now - self._last_check >= self._check_every_s:
            self._last_check = now
            self._resend_lost()

    def status(self) -> tuple[bool, str]:
        try:
            self._redis.ping()
        except Exception as exc:
            return False, (
                f"the Celery broker {self.broker} does not answer ({type(exc).__name__}: "
                f"{exc}): jobs cannot be queued"
            )
        return True, (
            f"the Celery broker {self.broker} answers; jobs run on Celery workers "
            f"(`celery -A service.jobs.celery_app worker`, queue {self.queue})"
        )

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._redis.close()
        with contextlib.suppress(Exception):
            self.app.close()
