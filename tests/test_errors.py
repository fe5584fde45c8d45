"""Errors a person understands: exact texts, no pydantic jargon, problem types that resolve."""

import json

import pytest

from service import errors
from tests.problems import assert_problem

TYPES = (
    "LambdaLR, MultiplicativeLR, StepLR, MultiStepLR, ConstantLR, LinearLR, ExponentialLR, "
    "SequentialLR, PolynomialLR, CosineAnnealingLR, ChainedScheduler, ReduceLROnPlateau, "
    "CyclicLR, OneCycleLR, CosineAnnealingWarmRestarts, SWALR"
)


def post(client, scheduler, **extra):
    return client.post("/v1/schedules/compute", json={"scheduler": scheduler, "steps": 3, **extra})


def only_error(problem):
    (error,) = problem["errors"]
    return error["loc"], error["msg"]


def test_a_missing_type_says_to_add_it_and_lists_the_types(client):
    loc, msg = only_error(assert_problem(post(client, {"step_size": 3}), 422, "validation-failed"))
    assert loc == ["body", "scheduler"]
    assert msg.startswith(f"add `type`: one of {TYPES}")


def test_a_misspelt_type_gets_did_you_mean(client):
    loc, msg = only_error(assert_problem(post(client, {"type": "Steplr", "step_size": 3})))
    assert loc == ["body", "scheduler", "type"]
    assert msg.startswith("unknown scheduler type 'Steplr'; did you mean 'StepLR'? one of LambdaLR")


def test_a_misspelt_field_gets_did_you_mean_and_the_fields(client):
    spec = {"type": "StepLR", "step_size": 3, "gama": 0.5}
    loc, msg = only_error(assert_problem(post(client, spec)))
    assert loc == ["body", "scheduler", "gama"]
    assert msg == "unknown field 'gama'; did you mean 'gamma'? StepLR takes: step_size, gamma"


def test_a_nested_misspelling_points_into_the_list(client):
    spec = {"type": "SequentialLR", "schedulers": [{"type": "ExponentialLR", "gamma": 0.9, "gama": 0.9}],
            "milestones": []}  # fmt: skip
    loc, msg = only_error(assert_problem(post(client, spec)))
    assert loc == ["body", "scheduler", "schedulers", 0, "gama"]
    assert msg == "unknown field 'gama'; did you mean 'gamma'? ExponentialLR takes: gamma"


@pytest.mark.parametrize(
    "body",
    [
        {"scheduler": {"step_size": 3}, "steps": 3},
        {"scheduler": {"type": "NoSuchLR"}, "steps": 3},
        {"scheduler": {"type": "StepLR", "step_size": 3}, "warmup": {"steps": 3}, "steps": 3},
        {"scheduler": {"type": "StepLR", "step_size": 3}, "warmup": {"type": "lin"}, "steps": 3},
    ],
    ids=["no-type", "unknown-type", "warmup-no-type", "warmup-unknown"],
)
def test_no_pydantic_jargon_reaches_a_user(client, body):
    text = json.dumps(assert_problem(client.post("/v1/schedules/compute", json=body)))
    for word in ("discriminator", "tag", "Input should", "union"):
        assert word not in text, (word, text)


def test_a_get_form_error_names_the_query_parameter_sent(client):
    problem = assert_problem(client.get("/v1/schedules/StepLR?step_size=3&steps=10&every=0"))
    assert [e["loc"] for e in problem["errors"]] == [["query", "every"]]


@pytest.mark.parametrize("path", ["/v1/schedules/compute", "/v1/schedules/batch"])
def test_get_on_a_post_endpoint_says_to_post(client, path):
    r = client.get(path)
    problem = assert_problem(r, 405, "method-not-allowed")
    assert problem["detail"] == (
        f"GET is not allowed on {path}; it takes POST (see /docs for the API)."
    )
    assert r.headers["allow"] == "POST"


def test_problem_types_resolve_on_the_service(client):
    problem = assert_problem(post(client, {"type": "StepLR", "step_size": 0}), 422)
    assert problem["type"] == "/problems/validation-failed"
    page = client.get(problem["type"])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "What to do" in page.text and "Validation failed" in page.text
    assert client.get("/problems/no-such-problem").status_code == 404


def test_every_problem_type_the_service_names_has_a_page():
    slugs = {cls.slug for cls in _subclasses(errors.ServiceError)}
    slugs |= {title.lower().replace(" ", "-") for title in errors._TITLES.values()}
    assert slugs - set(errors.PROBLEMS) == set()


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)
