"""Real processes for the scale-out tests: uvicorn API replicas, Celery workers, redis-server.

Every process gets a free loopback port (bound to port 0 first), a log file in the test's
tmp folder (printed when a wait fails), and is stopped by :meth:`Cluster.close`. Each
cluster has its own PostgreSQL table prefix (its Celery queue follows from it), a broker
(Redis database 1, or a redis-server of the test's own), and drops its tables and Redis keys
when closed.
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

from service.jobs.celery_app import queue_name
from service.jobs.store import Store
from tests.servers import Process, free_port, start_server

from .support import POSTGRES_URL

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/1"
FINISHED = {"succeeded", "failed", "cancelled", "interrupted"}


Proc = Process
"""One child process and its log (tests/servers.py)."""


class Cluster:
    """API replicas and workers sharing one PostgreSQL store and one data directory."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.tmp = tmp
        self.prefix = f"t{uuid.uuid4().hex[:10]}_"
        self.data_dir = tmp / "data"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": POSTGRES_URL,
            "LRS_DATA_DIR": str(self.data_dir),
            "LRS_JOB_TABLE_PREFIX": self.prefix,
            "LRS_JOB_EXECUTOR": "celery",
            "LRS_CELERY_BROKER_URL": REDIS_URL,
            "LRS_JOB_LEASE_S": "8",  # a loaded 2-core machine can stall a heartbeat for seconds
            "LRS_JOB_HEARTBEAT_S": "0.5",
            "LRS_JOB_EVENTS_POLL_S": "0.05",
            "LRS_JOB_PROGRESS_EVERY": "5",
            "LRS_JOB_WORKERS": "1",
            "LRS_ACCESS_LOG": "false",
            **env,
        }
        self.env.pop("LRS_DATABASE_URL", None)
        self.procs: list[Proc] = []
        self._count = 0

    def _log(self, name: str) -> Path:
        self._count += 1
        return self.tmp / f"{self._count:02d}-{name}.log"

    def api(self, port: int | None = None, **env: str) -> tuple[Proc, str]:
        """Start an API replica (uvicorn, one process); return it and its base URL."""
        port = port or free_port()
        env = {**self.env, **env}
        proc = start_server(self.data_dir, env, port=port, log=self._log(f"api-{port}"), unset=())
        self.procs.append(proc)
        return proc, proc.url

    def celery(self, concurrency: int = 2, standby: bool = False, **env: str) -> Proc:
        """Start a Celery worker (``celery -A service.jobs.celery_app worker``); a
        ``standby`` one listens on another queue until :meth:`take_jobs` (so a test can have
        it started, and warm, before it is needed)."""
        node = f"w{self._count + 1}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        command = [sys.executable, "-m", "celery", "-A", "service.jobs.celery_app", "worker",
                   "-c", str(concurrency), "-n", node, "--loglevel", "INFO",
                   "--without-mingle", "--without-gossip"]  # fmt: skip
        if standby:
            command += ["-Q", f"{queue_name(self.prefix)}-standby"]
        proc = Proc(f"celery:{node}", command, {**self.env, **env}, self._log("celery"))
        proc.node = node  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def take_jobs(self, worker: Proc) -> None:
        """Have a standby worker consume the job queue too (Celery's add_consumer)."""
        from celery import Celery

        app = Celery(broker=self.env["LRS_CELERY_BROKER_URL"], set_as_current=False)
        try:
            replies = app.control.add_consumer(
                queue_name(self.prefix), destination=[worker.node], reply=True, timeout=10
            )
        finally:
            app.close()
        assert replies, f"{worker.node} did not answer add_consumer\n{self.tails()}"

    def tails(self) -> str:
        return "\n".join(p.tail() for p in self.procs)

    def wait_ready(self, base: str, proc: Proc, timeout: float = 90, path: str = "/readyz") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.alive(), self.tails()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}{path}", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"{base} did not become ready\n{self.tails()}")

    def wait_worker(self, proc: Proc, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while "ready." not in proc.log.read_text(errors="replace"):
            assert proc.alive() and time.monotonic() < deadline, self.tails()
            time.sleep(0.1)

    def wait_job(
        self, base: str, job_id: str, until: Any, timeout: float = 90, what: str = ""
    ) -> dict[str, Any]:
        """Poll the job until ``until(job)`` holds (a set: its status is in it)."""
        test = (lambda j: j["status"] in until) if isinstance(until, set) else until
        deadline = time.monotonic() + timeout
        while True:
            job = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=30).json()
            if test(job):
                return job
            assert time.monotonic() < deadline, f"{what or until}: {job}\n{self.tails()}"
            time.sleep(0.1)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        store = Store(POSTGRES_URL, self.prefix)
        try:
            store.drop_schema()  # the owners' and the usage total's tables too
        finally:
            store.dispose()
        with contextlib.suppress(redis.RedisError):
            clean_redis(self.env["LRS_CELERY_BROKER_URL"], queue_name(self.prefix))


def clean_redis(url: str, queue: str) -> None:
    """Delete this run's queue and bindings, and its tasks' entries in kombu's unacked hash."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"*{queue}*"))  # the queue, standby, bindings
        if keys:
            client.delete(*keys)
        for field, value in client.hscan_iter("unacked"):
            if queue.encode() in value:
                client.hdel("unacked", field)
                client.zrem("unacked_index", field)
    finally:
        client.close()


def start_redis(tmp: Path, port: int) -> subprocess.Popen:
    """Start a redis-server of the test's own (nothing on disk) and wait until it answers."""
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(redis.RedisError):
            if client.ping():
                client.close()
                return proc
        assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
