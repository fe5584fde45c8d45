"""Where jobs run: the :class:`Executor` interface and the local worker-process pool.

The API only ever calls ``start``, ``submit``, ``cancel``, ``supervise``, ``status`` and
``stop``; job state lives in the store, which any executor shares. :class:`ProcessExecutor`
runs ``job_workers`` spawned processes (spawn, not fork, so CUDA is safe in them) that claim
queued jobs from the store oldest first (FIFO) and train them with :func:`runner.run_job`.
A task-queue executor (Celery on Redis) would implement the same interface: ``submit`` sends
a task that claims the job, ``cancel`` relies on the store's cancel flag, which running jobs
read too.
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
from typing import Any, Protocol

import torch

from service.jobs import specs, trainer
from service.jobs.artifacts import Artifacts
from service.jobs.runner import RunConfig, run_job
from service.jobs.store import JobRecord, Store

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
        """Tell the workers a job was queued."""

    def cancel(self, job: JobRecord) -> None:
        """Ask the worker running ``job`` to stop it before its next batch."""

    def supervise(self) -> None:
        """Replace dead workers and fail the job a dead worker was running."""

    def status(self) -> tuple[bool, str]:
        """Return whether jobs can run now, and a sentence saying why (not)."""

    def stop(self) -> None:
        """Stop the workers; jobs they were running become interrupted."""


class ProcessExecutor:
    """``workers`` spawned processes claiming queued jobs from the store, oldest first."""

    def __init__(self, store: Store, config: RunConfig, workers: int) -> None:
        self.store = store
        self.config = config
        self.workers = workers
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
        self._wake.put(job_id)

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

    def status(self) -> tuple[bool, str]:
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
    store = Store(config.database_url, config.table_prefix)
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
