"""A bounded schemathesis run against the app: no 500 and no status the spec does not list.

The app runs in-process (ASGI) with one job worker and a temporary data folder; its lifespan
is entered once for the module (schemathesis would start and stop it, and so a worker
process, for every operation). Each operation gets a few generated cases, positive and
negative, and no coverage phase (hundreds of boundary cases each), so the run stays well
under a minute and a half.
"""

import tempfile
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, settings

from service.main import create_app
from service.settings import Settings

APP = create_app(
    Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="lrs-schemathesis-")),
        job_workers=1,
        job_max_seconds=5.0,
    )
)


async def _without_lifespan(scope, receive, send):
    """The app for schemathesis: requests go to APP; lifespan events are acknowledged only
    (the module fixture runs APP's own lifespan once)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await APP(scope, receive, send)


schema = schemathesis.openapi.from_asgi("/openapi.json", _without_lifespan)
schema.config.phases.coverage.enabled = False


def no_bug(ctx, response, case):
    """A 500 is a bug; a documented 503 (not ready, queue full) is an answer."""
    if response.status_code == 500:
        raise AssertionError(f"500 on {case.method} {case.path}: {response.text[:500]}")


CHECKS = [
    no_bug,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
]


@pytest.fixture(scope="module", autouse=True)
def _lifespan():
    with TestClient(APP):  # the worker warms up meanwhile; jobs queue until it is ready
        yield


@schema.parametrize()
@settings(
    max_examples=8,
    phases=[Phase.explicit, Phase.generate],
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_no_server_error_and_no_undocumented_status(case):
    case.call_and_validate(checks=CHECKS)
