"""Shared fixtures: an app per test session with its data in a temporary folder."""

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def client(settings: Settings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client
