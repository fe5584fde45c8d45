"""Helpers shared by the jobs tests."""

import time
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
FINISHED = {"succeeded", "failed", "cancelled", "interrupted"}


def postgres_available() -> bool:
    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


def wait_for(client: TestClient, job_id: str, statuses: set[str], timeout: float = 60) -> Any:
    """Poll the job until its status is one of ``statuses``; return its JSON."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
