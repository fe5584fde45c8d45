"""A real server for the client and CLI tests: uvicorn on a free port with two worker
processes, API keys and Prometheus multiprocess mode, as a deployment would run it."""

import hashlib

import pytest

from tests.servers import serve

API_KEY = "client-tests-key-7f3a"
OTHER_KEY = "client-tests-other-key-91c2"


@pytest.fixture(scope="session")
def prom_dir(tmp_path_factory: pytest.TempPathFactory):
    """The server's PROMETHEUS_MULTIPROC_DIR, where each worker process writes its samples."""
    return tmp_path_factory.mktemp("prom")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, prom_dir):
    """Yield the base URL of a running service that accepts API_KEY and OTHER_KEY."""
    digests = ",".join(hashlib.sha256(k.encode()).hexdigest() for k in (API_KEY, OTHER_KEY))
    env = {
        "LRS_API_KEYS": digests,
        "LRS_JOB_PROGRESS_EVERY": "10",
        "LRS_JOB_EVENTS_POLL_S": "0.05",
        "LRS_ACCESS_LOG": "false",
        "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
    }
    data_dir = tmp_path_factory.mktemp("client-live")
    with serve(data_dir, env, flags=["--workers", "2"]) as running:
        yield running.url


@pytest.fixture
def lrs(server):
    from lrs_client import Client

    with Client(server, api_key=API_KEY, retries=1, backoff=0.05) as client:
        yield client
