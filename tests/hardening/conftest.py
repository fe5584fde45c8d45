"""The real server (uvicorn on a free port) on SQLite and on PostgreSQL, for abuse tests.

One server per store for the whole run, with small caps so the tests reach them quickly.
Each test speaks from its own loopback address (127.0.0.N: all of 127/8 is loopback on
Linux), so the per-client caps of one test never count another's requests.
"""

import contextlib
import itertools
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.jobs.store import Store
from tests import servers
from tests.jobs.support import POSTGRES_URL, postgres_available
from tests.servers import ROOT, uvicorn_flags

__all__ = ["ROOT", "uvicorn_flags"]  # test_http_edges reads them from here

CAPS = {
    "LRS_JOB_WORKERS": "1",
    "LRS_JOB_QUEUE_MAX_PER_CLIENT": "3",
    "LRS_JOB_QUEUE_MAX": "8",
    "LRS_JOB_RETRY_AFTER_S": "7",
    "LRS_JOB_EVENTS_MAX_STREAMS_PER_CLIENT": "30",
    "LRS_JOB_EVENTS_MAX_STREAMS_PER_JOB": "40",
    "LRS_JOB_EVENTS_MAX_STREAMS": "400",
    "LRS_JOB_EVENTS_POLL_S": "0.05",
    "LRS_JOB_ARTIFACTS_KEEP": "3",
    "LRS_JOB_PAGE_MAX_BYTES": "2000000",
    "LRS_JOB_PROGRESS_EVERY": "5",
    "LRS_ACCESS_LOG": "false",
    # glibc's own trim and mmap thresholds: the RSS bounds here measure what requests hold,
    # not the freed memory the default keeps per heap for the next response (service/memory.py)
    "LRS_MALLOC_RETAIN_MB": "0",
}
"""The caps the tests run against (the defaults are larger; README says why)."""

_addresses = itertools.count(2)


class Server(servers.Server):
    """A hardened server: its store (``sqlite`` or ``postgresql``), the PostgreSQL URL if
    any, and the prefix of its job tables."""

    store: str
    database_url: str | None
    prefix: str

    def client(self, address: str | None = None, timeout: float = 30) -> httpx.Client:
        """Return an HTTP client speaking from ``address`` (a fresh 127.0.0.N by default)."""
        address = address or new_address()
        transport = httpx.HTTPTransport(local_address=address)
        return httpx.Client(base_url=self.url, transport=transport, timeout=timeout)


def new_address() -> str:
    """Return a loopback address no other test of this run speaks from."""
    n = next(_addresses)
    return f"127.0.{n // 250}.{n % 250 + 2}"


def start_server(
    data_dir: Path,
    store: str,
    extra: dict[str, str] | None = None,
    prefix: str | None = None,
    *,
    flags: list[str] | None = None,
    log: Path | None = None,
) -> Server:
    """Start uvicorn as `make serve` does; :func:`wait_ready` waits for it. With ``prefix``
    it shares that server's job tables (a replica; SQLite: give it the same data_dir).
    ``flags`` follow the Makefile's (a later flag wins); ``log`` takes the server's output
    (by default a file beside ``data_dir``, see :func:`tests.servers.start_server`)."""
    prefix = prefix or f"h{uuid.uuid4().hex[:10]}_"
    database_url = POSTGRES_URL if store == "postgresql" else None
    env = {**CAPS, **(extra or {}), "LRS_JOB_TABLE_PREFIX": prefix}
    env.pop("DATABASE_URL", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    flags = [*uvicorn_flags(), *(flags or [])]
    server = servers.start_server(data_dir, env, flags=flags, log=log, server_class=Server)
    assert isinstance(server, Server)
    server.store, server.database_url, server.prefix = store, database_url, prefix
    return server


def wait_ready(server: Server, timeout: float = 300) -> Server:
    """Wait until /readyz says the store and the workers are up; return the server."""
    server.wait_ready("/readyz", timeout)
    return server


def stop_server(server: Server) -> None:
    server.stop()
    if server.database_url:  # its tables, the owners' and the usage total's, and triggers
        store = Store(server.database_url, server.prefix)
        try:
            store.drop_schema()
        finally:
            store.dispose()


@contextlib.contextmanager
def serving(*args, **kwargs) -> Iterator[Server]:
    """:func:`start_server` (same arguments), :func:`wait_ready`, then :func:`stop_server`
    when the block ends."""
    server = start_server(*args, **kwargs)
    try:
        yield wait_ready(server)
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def _servers(tmp_path_factory) -> Iterator[dict[str, Server]]:
    """Both servers, started at once (each takes ~20 s to import torch and warm a worker)."""
    stores = ["sqlite"]
    if postgres_available():
        stores.append("postgresql")
    started = {s: start_server(tmp_path_factory.mktemp(f"hard-{s}"), s) for s in stores}
    try:
        yield started
    finally:
        for running in started.values():
            stop_server(running)


@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def server(request: pytest.FixtureRequest, _servers: dict[str, Server]) -> Server:
    """The hardened server on SQLite, then on PostgreSQL (tables with a unique prefix,
    dropped afterwards)."""
    if request.param not in _servers:
        message = "PostgreSQL is not reachable on 127.0.0.1:5432"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must test the PostgreSQL store")
        pytest.skip(message)
    return wait_ready(_servers[request.param])


class HealthProbe:
    """Asks /healthz every ``every`` seconds from a thread; ``latencies`` in seconds."""

    def __init__(self, url: str, every: float = 0.02) -> None:
        self.url = url
        self.every = every
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while True:  # at least one answer, however short the test
                start = time.perf_counter()
                try:
                    status = client.get(f"{self.url}/healthz").status_code
                    if status != 200:
                        self.failures.append(str(status))
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.latencies.append(time.perf_counter() - start)
                if self._stop.wait(self.every):
                    return

    def __enter__(self) -> "HealthProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def worst(self) -> float:
        return max(self.latencies)


def wait_status(client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 30):
    """Poll the job until its status is one of ``statuses``; return its JSON."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


FINISHED = {"succeeded", "failed", "cancelled", "interrupted"}
QUICK = {"epochs": 1, "data": {"type": "noisy_sine", "n": 100, "n_train": 60}}
LONG = {"epochs": 1000, "batch_size": 1}
