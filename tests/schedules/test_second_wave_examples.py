"""The OpenAPI examples of compare and resume, as committed, are answered with 200."""

import json
from pathlib import Path

import pytest

SPEC = json.loads((Path(__file__).parents[2] / "openapi" / "openapi.json").read_text())


def _examples(path: str) -> list[dict]:
    body = SPEC["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    name = body["schema"]["$ref"].rsplit("/", 1)[-1]
    return SPEC["components"]["schemas"][name]["examples"]


@pytest.mark.parametrize("path", ["/v1/schedules/compare", "/v1/schedules/resume"])
def test_examples_work(client, path):
    examples = _examples(path)
    assert examples
    for example in examples:
        r = client.post(path, json=example)
        assert r.status_code == 200, (example, r.text)
