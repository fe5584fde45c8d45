"""The committed OpenAPI document is the app's, and its examples work."""

import json
from pathlib import Path

import pytest

from service.main import create_app

SPEC_PATH = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads(SPEC_PATH.read_text())


def test_committed_openapi_matches_the_app(spec):
    assert spec == create_app().openapi(), "openapi/openapi.json is stale: run `make openapi`"


def test_every_operation_documents_an_example(spec):
    missing = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            text = json.dumps(operation)
            if '"example' not in text and not _schema_has_examples(spec, operation):
                missing.append(f"{method.upper()} {path}")
    assert missing == []


def _schema_has_examples(spec: dict, operation: dict) -> bool:
    contents = list(operation.get("requestBody", {}).get("content", {}).values())
    for response in operation.get("responses", {}).values():
        contents += list(response.get("content", {}).values())
    for content in contents:
        ref = content.get("schema", {}).get("$ref", "")
        schema = spec["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {}) if ref else {}
        if "examples" in schema:
            return True
    return False


def test_the_compute_examples_in_the_spec_all_work(client, spec):
    content = spec["paths"]["/v1/schedules/compute"]["post"]["requestBody"]["content"]
    examples = content["application/json"]["examples"]
    assert len(examples) >= 5
    for name, example in examples.items():
        r = client.post("/v1/schedules/compute", json=example["value"])
        assert r.status_code == 200, (name, r.text)
