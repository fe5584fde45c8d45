"""Fixtures of the jobs tests: one app with two workers, stores on SQLite and PostgreSQL."""

import os
import time
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.jobs.store import Store, sqlite_url
from service.main import create_app
from service.settings import Settings

from .support import POSTGRES_URL, postgres_available


@pytest.fixture(scope="session")
def jobs_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("jobs"),
        job_workers=2,
        job_progress_every=5,
        job_events_poll_s=0.05,
    )


@pytest.fixture(scope="session")
def jobs_client(jobs_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(jobs_settings)) as client:
        deadline = time.monotonic() + 90
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.2)
        yield client


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
    """A fresh store on SQLite (in tmp_path) or PostgreSQL (tables with a unique prefix,
    dropped afterwards)."""
    if request.param == "sqlite":
        s = Store(sqlite_url(tmp_path))
    else:
        if not postgres_available():
            message = "PostgreSQL is not reachable on 127.0.0.1:5432"
            if os.environ.get("CI"):
                pytest.fail(f"{message}: CI must test the PostgreSQL store")
            pytest.skip(message)
        s = Store(POSTGRES_URL, table_prefix=f"t{uuid.uuid4().hex[:10]}_")
    s.create_schema()
    try:
        yield s
    finally:
        s.drop_schema()
        s.dispose()
