"""Fixtures of the dropout tests: an app with the default limits, its data in a temp folder."""

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def dropout_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("dropout-data"))


@pytest.fixture(scope="module")
def client(dropout_settings: Settings):
    with TestClient(create_app(dropout_settings)) as test_client:
        yield test_client
