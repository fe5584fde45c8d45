"""Shared fixtures: an app per test session with its data in a temporary folder."""

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.servers import serve


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def client(settings: Settings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory):
    """Start the real service with uvicorn on a free loopback port; yield its base URL."""
    with serve(tmp_path_factory.mktemp("live-data"), ready_path="/healthz") as server:
        yield server.url
