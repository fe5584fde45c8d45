"""Regressions found in review: inputs that got a 500 or values torch would not produce."""

from typing import Any

import pytest

STEP = {"type": "StepLR", "step_size": 3}


def assert_problem(response: Any, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


@pytest.mark.parametrize(
    "group",
    [{"lr": "abc"}, {"lr": None}, {"lr": True}, {"lr": [0.1, 0.2]}],
    ids=["string", "null", "bool", "list"],
)
def test_a_param_group_lr_that_is_not_a_number_is_a_422(client, group):
    body = {"scheduler": STEP, "steps": 10, "param_groups": [{"lr": 0.1}, group]}
    problem = assert_problem(client.post("/v1/schedules/compute", json=body))
    assert problem["errors"][0]["loc"] == ["body", "param_groups"]
    assert "param_groups[1]: lr=" in problem["detail"]
    assert "is not a number" in problem["detail"]


def test_torch_index_errors_while_building_the_optimizer_are_a_422(client):
    # torch.optim.Adam indexes betas[1] and raises IndexError for a one-element list
    body = {"scheduler": STEP, "steps": 10, "optimizer": {"type": "Adam", "betas": [0.9]}}
    problem = assert_problem(client.post("/v1/schedules/compute", json=body))
    assert problem["errors"][0]["loc"] == ["body", "optimizer"]
    assert "torch refused this optimizer" in problem["detail"]
