"""A real server for the client and CLI tests: uvicorn on a free port with two worker
processes, API keys and Prometheus multiprocess mode, as a deployment would run it."""

import hashlib
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

API_KEY = "client-tests-key-7f3a"
OTHER_KEY = "client-tests-other-key-91c2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prom_dir(tmp_path_factory: pytest.TempPathFactory):
    """The server's PROMETHEUS_MULTIPROC_DIR, where each worker process writes its samples."""
    return tmp_path_factory.mktemp("prom")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, prom_dir):
    """Yield the base URL of a running service that accepts API_KEY and OTHER_KEY."""
    port = free_port()
    digests = ",".join(hashlib.sha256(k.encode()).hexdigest() for k in (API_KEY, OTHER_KEY))
    env = {
        **os.environ,
        "LRS_DATA_DIR": str(tmp_path_factory.mktemp("client-live")),
        "LRS_API_KEYS": digests,
        "LRS_JOB_PROGRESS_EVERY": "10",
        "LRS_JOB_EVENTS_POLL_S": "0.05",
        "LRS_ACCESS_LOG": "false",
        "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
    }
    for name in ("DATABASE_URL", "LRS_DATABASE_URL", "LRS_URL", "LRS_API_KEY"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "2", "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # a loaded 2-core machine takes a while to import torch
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the service did not start")
        time.sleep(0.2)
    yield url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def lrs(server):
    from lrs_client import Client

    with Client(server, api_key=API_KEY, retries=1, backoff=0.05) as client:
        yield client
