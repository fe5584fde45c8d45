"""Bad input gets a 4xx problem+json that says what to change, never a 5xx."""

import json

import pytest

SCHED = {"type": "StepLR", "step_size": 3}


def body(**overrides):
    out = {"scheduler": SCHED, "steps": 10}
    out.update(overrides)
    return out


def deep_json(depth: int) -> bytes:
    inner = '{"type": "ExponentialLR", "gamma": 0.9}'
    head = '{"type": "SequentialLR", "milestones": [], "schedulers": [' * depth
    return ('{"steps": 3, "scheduler": ' + head + inner + "]}" * depth + "}").encode()


def deep_sequential(depth: int) -> dict:
    spec: dict = {"type": "ExponentialLR", "gamma": 0.9}
    for _ in range(depth):
        spec = {"type": "SequentialLR", "schedulers": [spec], "milestones": []}
    return spec


# (id, request body as JSON-able object or raw bytes, expected status, words the detail must contain)
CASES = [
    ("malformed-json", b'{"scheduler": {"type": "StepLR",', 422, ["JSON"]),
    ("not-an-object", b"[1, 2, 3]", 422, ["valid dictionary"]),
    ("empty-body", b"", 422, ["body", "required"]),
    ("nan", b'{"scheduler": {"type": "ExponentialLR", "gamma": NaN}, "steps": 3}', 422, ["gamma", "finite"]),
    ("infinity", b'{"scheduler": {"type": "StepLR", "step_size": 2, "gamma": Infinity}, "steps": 3}', 422, ["finite"]),
    ("nan-in-metrics", b'{"scheduler": {"type": "ReduceLROnPlateau"}, "steps": 3, "metrics": [1, NaN]}', 422, ["metrics", "finite"]),
    ("nan-optimizer-arg", b'{"optimizer": {"type": "SGD", "momentum": NaN}, "scheduler": {"type": "StepLR", "step_size": 2}, "steps": 3}', 422, ["finite"]),
    ("unknown-scheduler", body(scheduler={"type": "StepLr", "step_size": 3}), 422, ["StepLR"]),
    ("unknown-optimizer", body(optimizer={"type": "SDG"}), 422, ["unknown optimizer", "SGD"]),
    ("typo-top-level", {"scheduler": SCHED, "step": 10}, 422, ["step"]),
    ("typo-in-scheduler", body(scheduler={"type": "StepLR", "stepsize": 3}), 422, ["stepsize"]),
    ("typo-optimizer-arg", body(optimizer={"type": "SGD", "momentun": 0.9}), 422, ["momentun", "momentum"]),
    ("missing-steps", {"scheduler": SCHED}, 422, ["steps", "required"]),
    ("missing-required-param", body(scheduler={"type": "ExponentialLR"}), 422, ["gamma", "required"]),
    ("steps-zero", body(steps=0), 422, ["steps"]),
    ("steps-over-limit", body(steps=100_001, engine="torch"), 422, ["100000", "LRS_TORCH_MAX_STEPS"]),
    ("vectorized-values-over-limit", body(steps=10_000_000, param_groups=[{}] * 5, engine="vectorized"), 422, ["50000000", "LRS_VECTORIZED_MAX_VALUES"]),
    ("work-over-limit", body(steps=100_000, engine="torch", param_groups=[{}] * 16, warmup={"type": "linear", "steps": 5}), 422, ["LRS_TORCH_MAX_WORK"]),
    ("constant-factor-above-1", body(scheduler={"type": "ConstantLR", "factor": 2}), 422, ["factor"]),
    ("constant-factor-0-divides", body(scheduler={"type": "ConstantLR", "factor": 0, "total_iters": 3}), 422, ["step 3", "division by zero"]),
    ("onecycle-past-total", body(scheduler={"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 5}, steps=10), 422, ["total steps is 5"]),
    ("linear-start-0", body(scheduler={"type": "LinearLR", "start_factor": 0}), 422, ["start_factor"]),
    ("negative-lr", body(optimizer={"type": "SGD", "lr": -0.1}), 422, ["lr"]),
    ("torch-refuses-momentum", body(optimizer={"type": "SGD", "momentum": -1}), 422, ["optimizer", "momentum"]),
    ("plateau-without-metrics", body(scheduler={"type": "ReduceLROnPlateau"}), 422, ["metrics", "9"]),
    ("plateau-too-few-metrics", body(scheduler={"type": "ReduceLROnPlateau"}, metrics=[1.0, 2.0]), 422, ["metrics", "2 given"]),
    ("plateau-inside-sequential", body(scheduler={"type": "SequentialLR", "milestones": [2], "schedulers": [SCHED, {"type": "ReduceLROnPlateau"}]}), 422, ["ReduceLROnPlateau"]),
    ("sequential-milestone-count", body(scheduler={"type": "SequentialLR", "milestones": [2, 4], "schedulers": [SCHED, SCHED]}), 422, ["milestone"]),
    ("sequential-nested-restart", body(scheduler={"type": "SequentialLR", "milestones": [3], "schedulers": [SCHED, {"type": "ChainedScheduler", "schedulers": [SCHED]}]}), 422, ["NotImplementedError", "flatten"]),
    ("sequential-empty", body(scheduler={"type": "SequentialLR", "milestones": [], "schedulers": []}), 422, ["schedulers"]),
    ("nesting-too-deep", body(scheduler=deep_sequential(6)), 422, ["nesting", "LRS_MAX_NESTING_DEPTH"]),
    ("nesting-2000-deep", deep_json(2000), (400, 422), ["nest"]),
    ("too-many-schedulers", body(scheduler={"type": "ChainedScheduler", "schedulers": [SCHED] * 20}), 422, ["LRS_MAX_SCHEDULERS"]),
    ("too-many-groups", body(param_groups=[{}] * 17), 422, ["LRS_MAX_PARAM_GROUPS"]),
    ("unknown-group-key", body(param_groups=[{"lr": 0.1, "betas": [0.9, 0.99]}]), 422, ["betas", "SGD", "param_groups[0]"]),
    ("negative-group-lr", body(param_groups=[{"lr": 0.1}, {"lr": -0.1}]), 422, ["param_groups[1]", "negative"]),
    ("per-group-length-mismatch", body(param_groups=[{}, {}], scheduler={"type": "CyclicLR", "base_lr": [0.1, 0.2, 0.3], "max_lr": 1.0}), 422, ["base_lr"]),
    ("sample-two-ways", body(sample={"every": 2, "points": 3}), 422, ["exactly one"]),
    ("sample-at-outside", body(sample={"at": [3, 10]}), 422, ["10", "0..9"]),
    ("momentum-without-momentum", body(optimizer={"type": "Adagrad"}, include=["momentum"]), 422, ["Adagrad", "momentum"]),
    ("cuda-without-cuda", body(device="cuda"), 422, ["CUDA"]),
    ("warmup-zero-steps", body(warmup={"type": "linear", "steps": 0}), 422, ["steps"]),
    ("warm-restarts-t-mult-0", body(scheduler={"type": "CosineAnnealingWarmRestarts", "T_0": 5, "T_mult": 0}), 422, ["T_mult"]),
    ("milestones-not-ints", body(scheduler={"type": "MultiStepLR", "milestones": "30,60"}), 422, ["milestones"]),
    ("batch-size-zero", body(batch_scaling={"base_batch_size": 256, "batch_size": 0}), 422, ["batch_size"]),
    # lr_lambda attacks: parsed from an AST whitelist, never evaluated as Python
    ("lambda-import", body(scheduler={"type": "LambdaLR", "lr_lambda": "__import__('os').system('true')"}), 422, ["lr_lambda"]),
    ("lambda-attribute", body(scheduler={"type": "LambdaLR", "lr_lambda": "epoch.real"}), 422, ["lr_lambda", "attribute"]),
    ("lambda-dunder-class", body(scheduler={"type": "LambdaLR", "lr_lambda": "().__class__.__bases__"}), 422, ["lr_lambda"]),
    ("lambda-subscript", body(scheduler={"type": "LambdaLR", "lr_lambda": "[1][0]"}), 422, ["lr_lambda"]),
    ("lambda-lambda", body(scheduler={"type": "LambdaLR", "lr_lambda": "(lambda: 1)()"}), 422, ["lr_lambda"]),
    ("lambda-unknown-name", body(scheduler={"type": "LambdaLR", "lr_lambda": "step * 2"}), 422, ["step"]),
    ("lambda-power-tower", body(scheduler={"type": "LambdaLR", "lr_lambda": "9**9**9**9"}), 422, ["epoch 0"]),
    ("lambda-200k-terms", body(scheduler={"type": "LambdaLR", "lr_lambda": "+".join(["1"] * 200_000)}), 422, ["lr_lambda", "1000"]),
    ("lambda-deep-parens", body(scheduler={"type": "LambdaLR", "lr_lambda": "(" * 2000 + "1" + ")" * 2000}), 422, ["lr_lambda"]),
    ("lambda-not-finite-at-step", body(scheduler={"type": "LambdaLR", "lr_lambda": "exp(epoch)"}, steps=1000), 422, ["epoch 710"]),
    ("lambda-divides-by-zero", body(scheduler={"type": "LambdaLR", "lr_lambda": "1 / (epoch - 3)"}), 422, ["epoch 3"]),
    ("lambda-count-per-group", body(param_groups=[{}, {}], scheduler={"type": "LambdaLR", "lr_lambda": ["0.9 ** epoch"] * 3}), 422, ["lr_lambda"]),
    ("lambda-empty", body(scheduler={"type": "LambdaLR", "lr_lambda": ""}), 422, ["lr_lambda"]),
]  # fmt: skip


@pytest.mark.parametrize("payload,status,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_4xx_problem(client, payload, status, words):
    if isinstance(payload, bytes):
        r = client.post(
            "/v1/schedules/compute", content=payload, headers={"content-type": "application/json"}
        )
    else:
        r = client.post("/v1/schedules/compute", json=payload)
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == r.status_code
    assert {"type", "title", "status", "detail"} <= problem.keys()
    text = json.dumps(problem)
    for word in words:
        assert word in text, f"{word!r} not in {problem['detail']!r}"
    if r.status_code == 422 and "errors" in problem:
        assert all({"loc", "msg", "type"} <= e.keys() for e in problem["errors"])


def test_validation_errors_point_into_the_body_without_union_tags(client):
    r = client.post(
        "/v1/schedules/compute", json=body(scheduler={"type": "StepLR", "step_size": -1})
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == ["body", "scheduler", "step_size"]


def test_a_64_mib_body_is_refused_with_413(client):
    r = client.post(
        "/v1/schedules/compute",
        content=b" " * (64 << 20),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "1048576 bytes" in r.json()["detail"]


def test_a_streamed_body_without_length_is_cut_at_the_limit(client):
    def chunks():
        for _ in range(40):
            yield b" " * 65536

    r = client.post(
        "/v1/schedules/compute", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


@pytest.mark.parametrize(
    "url,status,words",
    [
        ("/v1/schedules/NoSuchLR?steps=3", 422, ["NoSuchLR", "StepLR"]),
        ("/v1/schedules/StepLR?steps=3&step_size=abc", 422, ["step_size"]),
        ("/v1/schedules/StepLR?step_size=3", 422, ["steps"]),
        ("/v1/schedules/StepLR?steps=3&step_size=2&gama=0.1", 422, ["gama"]),
        ("/v1/schedules/SequentialLR?steps=3", 422, ["POST"]),
        ("/v1/schedules/StepLR?steps=3&step_size=2&format=xml", 422, ["format"]),
        ("/v1/nothing-here", 404, ["/docs"]),
    ],
)
def test_query_form_errors(client, url, status, words):
    r = client.get(url)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    for word in words:
        assert word in json.dumps(r.json())


@pytest.mark.parametrize("accept", ["text/html", "application/x-npy;q=0"])
def test_unservable_accept_header_is_406(client, accept):
    r = client.post("/v1/schedules/compute", json=body(), headers={"accept": accept})
    assert r.status_code == 406
    assert "csv" in r.json()["detail"]


def test_wrong_method_is_405_problem(client):
    r = client.delete("/v1/schedules/compute")
    assert r.status_code == 405
    assert r.headers["content-type"].startswith("application/problem+json")


def test_curl_default_form_content_type_is_read_as_json(client):
    r = client.post(
        "/v1/schedules/compute",
        content=json.dumps(body()),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
