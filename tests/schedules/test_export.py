"""POST /v1/schedules/export: refusals and the OpenAPI the playground reads. The scripts of
every target are run in test_export_targets.py (one interpreter per library)."""

import pytest


@pytest.mark.parametrize(
    ("body", "query", "where"),
    [
        ({"scheduler": {"type": "StepLR", "step_size": 2}, "steps": 5}, "?target=keras", "query"),
        (
            {"scheduler": {"type": "LambdaLR", "lr_lambda": "0.9 ** epoch"}, "steps": 5},
            "",
            "body",
        ),
    ],
)
def test_refusals_are_problem_json(client, body, query, where):
    r = client.post("/v1/schedules/export" + query, json=body)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["loc"][0] == where


def test_the_playground_finds_the_targets_in_openapi(client):
    """The playground shows "copy as code" from the target parameter's enum."""
    operation = client.get("/openapi.json").json()["paths"]["/v1/schedules/export"]["post"]
    (target,) = [p for p in operation["parameters"] if p["name"] == "target"]
    assert target["schema"]["enum"] == [
        "torch",
        "lightning",
        "transformers",
        "timm",
        "optax",
        "megatron",
    ]
