"""Regressions found in review: inputs that got a 500 or values torch would not produce."""

import pytest
import torch

from tests.problems import assert_problem
from tests.schedules.helpers import torch_loop

STEP = {"type": "StepLR", "step_size": 3}
BIG = 2**70


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


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"scheduler": {"type": "StepLR", "step_size": BIG}, "steps": 10}, "scheduler"),
        ({"scheduler": {"type": "MultiStepLR", "milestones": [2**63]}, "steps": 10}, "scheduler"),
        ({"scheduler": {"type": "MultiStepLR", "milestones": [-(2**63) - 1]}, "steps": 10}, None),
        ({"scheduler": STEP, "steps": 10, "sample": {"at": [BIG]}}, "sample"),
        ({"scheduler": STEP, "steps": BIG, "sample": {"points": 5}}, "steps"),
        ({"scheduler": STEP, "steps": 10, "warmup": {"type": "linear", "steps": BIG}}, "warmup"),
        ({"scheduler": STEP, "steps": 10, "optimizer": {"momentum": 10**30}}, "optimizer"),
        (
            {
                "scheduler": STEP,
                "steps": 10,
                "batch_scaling": {"base_batch_size": 1, "batch_size": BIG},
            },
            "batch_scaling",
        ),
    ],
)
def test_integers_beyond_int64_are_a_422_not_a_500(client, body, loc):
    problem = assert_problem(client.post("/v1/schedules/compute", json=body))
    assert "out of range" in problem["detail"]
    if loc is not None:
        assert problem["errors"][0]["loc"][:2] == ["body", loc]


def test_huge_steps_with_npy_is_a_422(client):
    response = client.get(
        "/v1/schedules/StepLR?step_size=3&steps=99999999999999999999999&format=npy"
    )
    assert_problem(response)


def test_a_huge_int_in_one_batch_slot_fails_only_that_slot(client):
    body = {
        "requests": [
            {"scheduler": {"type": "StepLR", "step_size": BIG}, "steps": 10},
            {"scheduler": STEP, "steps": 10},
        ]
    }
    response = client.post("/v1/schedules/batch", json=body)
    assert response.status_code == 200, response.text
    slots = response.json()["results"]
    assert [s["status"] for s in slots] == [422, 200]


def test_step_size_at_the_integer_bound_matches_torch(client):
    # Up to 2**53 the vectorized engine's int64 arithmetic agrees with torch's Python ints
    # (at 2**63 it overflowed and returned 10x the lr from step 1).
    size = 2**53
    body = {"scheduler": {"type": "StepLR", "step_size": size}, "steps": 10, "engine": "vectorized"}
    response = client.post("/v1/schedules/compute", json=body)
    assert response.status_code == 200, response.text
    expected, _ = torch_loop(lambda opt: torch.optim.lr_scheduler.StepLR(opt, size), 10)
    assert response.json()["lr"] == expected


def test_query_lr_lambda_keeps_commas_inside_a_call(client):
    response = client.get("/v1/schedules/LambdaLR?lr_lambda=min(1,%20(epoch%2B1)/3)&steps=5")
    assert response.status_code == 200, response.text
    expected, _ = torch_loop(
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: min(1, (e + 1) / 3)), 5
    )
    assert response.json()["lr"] == expected


def test_query_lr_lambda_list_still_splits_at_top_level_commas(client):
    url = "/v1/schedules/LambdaLR?lr_lambda=max(0.5,0.9**epoch),1&steps=4&engine=torch"
    # one param group: torch wants one lambda, so two are refused (a 422, not a parse error)
    problem = assert_problem(client.get(url))
    assert "Expected 1 lr_lambdas, but got 2" in problem["detail"]


def test_query_one_cycle_takes_epochs_and_steps_per_epoch(client):
    url = "/v1/schedules/OneCycleLR?max_lr=0.1&epochs=3&steps_per_epoch=10&steps=30"
    response = client.get(url)
    assert response.status_code == 200, response.text
    expected, _ = torch_loop(
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=0.1, epochs=3, steps_per_epoch=10
        ),
        30,
    )
    assert response.json()["lr"] == expected


def test_query_every_and_points_together_are_refused(client):
    problem = assert_problem(
        client.get("/v1/schedules/StepLR?step_size=3&steps=10&every=2&points=3")
    )
    assert problem["errors"][0]["loc"] == ["query", "sample"]
    assert "exactly one" in problem["detail"]


def test_query_warmup_errors_point_at_the_query_parameter(client):
    bad_type = client.get("/v1/schedules/StepLR?step_size=3&steps=10&warmup=cosine&warmup_steps=3")
    assert assert_problem(bad_type)["errors"][0]["loc"] == ["query", "warmup"]
    no_steps = client.get("/v1/schedules/StepLR?step_size=3&steps=10&warmup_factor=0.5")
    assert assert_problem(no_steps)["errors"][0]["loc"] == ["query", "warmup_steps"]


def test_responses_that_depend_on_accept_say_so_for_shared_caches(client):
    # The same GET URL answers JSON or CSV by Accept, with Cache-Control public: without
    # Vary a shared cache would hand the CSV body to a client that asked for JSON.
    url = "/v1/schedules/StepLR?step_size=3&steps=5"
    for accept in ("application/json", "text/csv"):
        response = client.get(url, headers={"accept": accept})
        assert response.status_code == 200
        assert response.headers["vary"] == "Accept"
    cached = client.get(url, headers={"accept": "text/csv"})
    assert cached.headers["x-cache"] == "hit" and cached.headers["vary"] == "Accept"
    etag = cached.headers["etag"]
    not_modified = client.get(url, headers={"accept": "text/csv", "if-none-match": etag})
    assert not_modified.status_code == 304 and not_modified.headers["vary"] == "Accept"


def test_a_bug_in_one_batch_slot_fails_that_slot_alone(client, monkeypatch):
    from service.schedules.vectorized import compile as vectorized

    real = vectorized.compile_request

    def broken_for_t_max_7(request, *args, **kwargs):
        if getattr(request.scheduler, "T_max", None) == 7:
            raise RuntimeError("simulated bug")
        return real(request, *args, **kwargs)

    monkeypatch.setattr(vectorized, "compile_request", broken_for_t_max_7)
    r = client.post(
        "/v1/schedules/batch",
        json={
            "requests": [
                {"scheduler": {"type": "CosineAnnealingLR", "T_max": 7}, "steps": 5},
                {"scheduler": {"type": "CosineAnnealingLR", "T_max": 8}, "steps": 5},
            ]
        },
    )
    assert r.status_code == 200
    first, second = r.json()["results"]
    assert first["status"] == 500 and "bug" in first["problem"]["detail"]
    assert second["status"] == 200 and len(second["result"]["lr"][0]) == 5


@pytest.mark.parametrize(
    "url,loc",
    [
        ("/v1/schedules/OneCycleLR?max_lr=0.1&total_steps=5&steps=10", ["query", "scheduler"]),
        ("/v1/schedules/StepLR?step_size=2&steps=5&device=cuda", ["query", "device"]),
        ("/v1/schedules/StepLR?step_size=2&steps=200000&engine=torch", ["query", "steps"]),
    ],
)
def test_query_form_errors_point_at_query_parameters(client, url, loc):
    import torch

    if "cuda" in url and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = client.get(url)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == loc


def test_if_none_match_star_does_not_hide_an_error(client):
    spec = {"scheduler": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 5}, "steps": 9}
    r = client.post("/v1/schedules/compute", json=spec, headers={"If-None-Match": "*"})
    assert r.status_code == 422
