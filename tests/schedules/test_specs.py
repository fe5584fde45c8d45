"""Schedule specs: the app's own limits, applied alike to schedules and training jobs."""

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.problems import assert_problem

EXP = {"type": "ExponentialLR", "gamma": 0.9}


def chained(n: int) -> dict:
    """Return a ChainedScheduler of ``n - 1`` children: ``n`` schedulers in all."""
    return {"type": "ChainedScheduler", "schedulers": [EXP] * (n - 1)}


def nested(depth: int) -> dict:
    spec = EXP
    for _ in range(depth - 1):
        spec = {"type": "SequentialLR", "schedulers": [spec], "milestones": []}
    return spec


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """An app created with limits below the defaults (no lifespan: refusals come first)."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("small"),
        max_schedulers=4,
        max_nesting_depth=2,
        max_param_groups=2,
    )
    return TestClient(create_app(settings))


@pytest.mark.parametrize(
    "spec,setting",
    [
        ({"scheduler": chained(5)}, "LRS_MAX_SCHEDULERS"),
        ({"scheduler": nested(3)}, "LRS_MAX_NESTING_DEPTH"),
        ({"scheduler": EXP, "param_groups": [{"lr": 0.1}] * 3}, "LRS_MAX_PARAM_GROUPS"),
    ],
    ids=["schedulers", "nesting", "param-groups"],
)
@pytest.mark.parametrize("endpoint", ["/v1/schedules/compute", "/v1/jobs"])
def test_the_apps_own_limits_refuse_schedules_and_jobs_alike(small, spec, setting, endpoint):
    body = {**spec, "steps": 3} if endpoint.endswith("compute") else spec
    problem = assert_problem(small.post(endpoint, json=body), 422, "limit-exceeded", setting)
    assert problem["title"] == "Limit exceeded"


def test_the_default_limits_accept_what_the_small_app_refuses(client):
    r = client.post("/v1/schedules/compute", json={"scheduler": chained(5), "steps": 3})
    assert r.status_code == 200, r.text


def test_info_reports_the_limits_that_are_enforced(small):
    assert small.get("/v1/info").json()["limits"]["max_schedulers"] == 4
    refused = small.post("/v1/schedules/compute", json={"scheduler": chained(5), "steps": 3})
    assert "the limit is 4 (LRS_MAX_SCHEDULERS)" in refused.json()["detail"]
