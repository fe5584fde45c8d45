"""POST /v1/schedules/resume with a real scheduler state: made here by stepping real torch
schedulers, sent as JSON (json.dumps of state_dict()) and as a .pt (torch.save), and the next
steps' lrs compared bit for bit with continuing that scheduler here."""

import io
import json
import math
import pickle
import random
import time
import warnings

import pytest
import torch
from fastapi.testclient import TestClient
from torch.optim import lr_scheduler as S

from service.main import create_app
from service.settings import Settings

URL = "/v1/schedules/resume"
N, K, NEXT = 60, 25, 20
METRICS = [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8] * 6

CASES = {
    "StepLR": (
        {"type": "StepLR", "step_size": 10, "gamma": 0.5},
        None,
        lambda o: S.StepLR(o, step_size=10, gamma=0.5),
    ),
    "MultiStepLR": (
        {"type": "MultiStepLR", "milestones": [20, 30, 30], "gamma": 0.5},
        None,
        lambda o: S.MultiStepLR(o, milestones=[20, 30, 30], gamma=0.5),
    ),
    "CosineAnnealingLR": (
        {"type": "CosineAnnealingLR", "T_max": 40, "eta_min": 0.001},
        None,
        lambda o: S.CosineAnnealingLR(o, T_max=40, eta_min=0.001),
    ),
    "OneCycleLR": (
        {"type": "OneCycleLR", "max_lr": 0.5, "total_steps": N},
        None,
        lambda o: S.OneCycleLR(o, max_lr=0.5, total_steps=N),
    ),
    "SequentialLR-warmup": (
        {"type": "CosineAnnealingLR", "T_max": 50},
        {"type": "linear", "steps": 10, "start_factor": 0.1},
        lambda o: S.SequentialLR(
            o,
            [
                S.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=10),
                S.CosineAnnealingLR(o, T_max=50),
            ],
            milestones=[10],
        ),
    ),
    "CosineAnnealingWarmRestarts": (
        {"type": "CosineAnnealingWarmRestarts", "T_0": 10, "T_mult": 2},
        None,
        lambda o: S.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2),
    ),
    "ReduceLROnPlateau": (
        {"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 2},
        None,
        lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=2),
    ),
    # the user's lambda is a Python function (saved as None); the spec's expression is it
    "LambdaLR": (
        {"type": "LambdaLR", "lr_lambda": "0.95 ** epoch"},
        None,
        lambda o: S.LambdaLR(o, lambda epoch: 0.95**epoch),
    ),
    "ChainedScheduler": (
        {
            "type": "ChainedScheduler",
            "schedulers": [
                {"type": "ConstantLR", "factor": 0.5, "total_iters": 30},
                {"type": "ExponentialLR", "gamma": 0.97},
            ],
        },
        None,
        lambda o: S.ChainedScheduler([S.ConstantLR(o, 0.5, 30), S.ExponentialLR(o, 0.97)]),
    ),
    "CyclicLR": (
        {"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 7},
        None,
        lambda o: S.CyclicLR(o, 0.01, 0.1, step_size_up=7),
    ),
}


def _optimizer(groups=(0.1,), momentum=0.9):
    params = [{"params": [torch.nn.Parameter(torch.zeros(1, 1))], "lr": lr} for lr in groups]
    return torch.optim.SGD(params, lr=groups[0], momentum=momentum)


def _step(opt, sched, j):
    opt.step()
    if isinstance(sched, S.ReduceLROnPlateau):
        sched.step(METRICS[j - 1])
    else:
        sched.step()


def real_run(make, k=K, n=NEXT, groups=(0.1,)):
    """Step a real scheduler k times; return its state_dict() then and every group's lr over
    the next n optimizer steps of the same run (what continuing it gives)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = _optimizer(groups)
        sched = make(opt)
        for j in range(1, k + 1):
            _step(opt, sched, j)
        buffer = io.BytesIO()
        torch.save(sched.state_dict(), buffer)
        state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
        lrs = [[] for _ in groups]
        for j in range(k + 1, k + n + 1):
            for g, group in enumerate(opt.param_groups):
                lrs[g].append(group["lr"])
            _step(opt, sched, j)
    return state, buffer.getvalue(), lrs


def spec_of(case, steps=N, **extra):
    scheduler, warmup, _ = CASES[case]
    spec = {
        "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
        "scheduler": scheduler,
        "steps": steps,
        **extra,
    }
    if warmup:
        spec["warmup"] = warmup
    if case == "ReduceLROnPlateau":
        spec["metrics"] = METRICS[: steps - 1]
    return spec


def post_json(client, body):
    """POST as a client sending json.dumps output does (Infinity tokens included)."""
    return client.post(URL, content=json.dumps(body), headers={"content-type": "application/json"})


def post_pt(client, data: bytes, spec, next_steps=None, filename="state.pt"):
    form = {"spec": json.dumps(spec)}
    if next_steps is not None:
        form["next_steps"] = str(next_steps)
    return client.post(URL, files={"state": (filename, data)}, data=form)


def problem(response, status):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


@pytest.mark.parametrize("source", ["json", "pt"])
@pytest.mark.parametrize("case", CASES)
def test_next_steps_equal_continuing_the_real_scheduler(client, case, source):
    state, data, lrs = real_run(CASES[case][2])
    spec = spec_of(case)
    if source == "json":
        r = post_json(client, {"spec": spec, "state": state, "next_steps": NEXT})
    else:
        r = post_pt(client, data, spec, NEXT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["steps"] == list(range(K, K + NEXT))
    assert body["resume_at"] == K
    assert body["recipes"]["state"]["lr"] == lrs  # bit for bit
    # the same spec run uninterrupted: the state matches it and so do the next lrs
    assert body["uninterrupted"] == lrs
    assert body["recipes"]["state"]["first_difference"] is None
    assert body["recipes"]["state"]["verdict"] == "identical"
    check = body["state"]
    assert check["source"] == source and check["last_epoch"] == K
    assert check["matches_uninterrupted"] is True, check
    assert check["differences"] == []


def test_json_state_with_infinity_as_a_string(client):
    # ReduceLROnPlateau's best and mode_worse are inf: JavaScript clients send "Infinity"
    state, _, lrs = real_run(CASES["ReduceLROnPlateau"][2], k=0)
    assert state["best"] == math.inf
    sent = {**state, "best": "Infinity", "mode_worse": "Infinity"}
    r = client.post(
        URL, json={"spec": spec_of("ReduceLROnPlateau"), "state": sent, "next_steps": NEXT}
    )
    assert r.status_code == 200, r.text
    assert r.json()["recipes"]["state"]["lr"] == lrs


def test_two_param_groups_and_the_default_window(client):
    make = CASES["CosineAnnealingLR"][2]
    state, _, lrs = real_run(make, n=N - K, groups=(0.1, 0.01))
    spec = spec_of("CosineAnnealingLR", param_groups=[{"lr": 0.1}, {"lr": 0.01}])
    r = post_json(client, {"spec": spec, "state": state})  # next_steps: to the end of spec.steps
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["steps"] == list(range(K, N))
    assert body["recipes"]["state"]["lr"] == lrs


def test_a_state_with_another_horizon_is_loaded_and_the_difference_named(client):
    # saved by CosineAnnealingLR(T_max=80): loaded into the spec's T_max=40 scheduler, torch's
    # load_state_dict restores T_max=80, as a real resume would
    make = lambda o: S.CosineAnnealingLR(o, T_max=80, eta_min=0.001)  # noqa: E731
    _, data, lrs = real_run(make)
    r = post_pt(client, data, spec_of("CosineAnnealingLR"), NEXT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recipes"]["state"]["lr"] == lrs
    check = body["state"]
    assert check["matches_uninterrupted"] is False
    keys = [d["key"] for d in check["differences"]]
    assert keys[0] == "T_max" and check["differences"][0] == {
        "key": "T_max",
        "state": 80,
        "uninterrupted": 40,
    }
    assert "_last_lr[0]" in keys
    assert check["verdict"].startswith(
        "differs from the uninterrupted run's state at scheduler step 25: T_max 80 instead of 40"
    )
    recipe = body["recipes"]["state"]
    assert recipe["first_difference"] == K  # the lr it holds already differs
    assert recipe["verdict"].startswith(f"differs from step {K}: lr ")
    assert recipe["max_abs_diff"] > 0


def test_epoch_interval_counts_last_epoch_in_epochs(client):
    state, _, lrs = real_run(CASES["StepLR"][2], k=5, n=3)
    spec = spec_of("StepLR", steps=100, interval="epoch", steps_per_epoch=4)
    r = post_json(client, {"spec": spec, "state": state, "next_steps": 12})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resume_at"] == 20 and body["steps"] == list(range(20, 32))
    assert body["recipes"]["state"]["lr"] == [[lr for lr in lrs[0] for _ in range(4)]]


def test_counters_with_a_state(client):
    state, _, lrs = real_run(CASES["StepLR"][2], k=6, n=4)
    spec = {
        **spec_of("StepLR", steps=10),
        "skipped_steps": [0, 4],
        "counter": {"type": "samples", "global_batch_size": 32, "at": [100]},
    }
    r = post_json(client, {"spec": spec, "state": state, "next_steps": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recipes"]["state"]["lr"] == lrs  # AMP's skips still step the scheduler
    assert body["counters"]["updates"] == [4, 5, 6, 7]
    assert body["counters"]["at"][0]["optimizer_step"] == 3
    assert any("Adam's state['step']) is 4, not 6" in w for w in body["warnings"])


def test_transformers_schedule_state(client):
    optimization = pytest.importorskip("transformers.optimization")
    make = lambda o: optimization.get_scheduler(  # noqa: E731
        "cosine", o, num_warmup_steps=10, num_training_steps=N
    )
    _, data, lrs = real_run(make)
    scheduler = {
        "type": "transformers",
        "name": "cosine",
        "num_warmup_steps": 10,
        "num_training_steps": N,
    }
    spec = {
        "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
        "scheduler": scheduler,
        "steps": N,
    }
    r = post_pt(client, data, spec, NEXT)
    assert r.status_code == 200, r.text
    assert r.json()["recipes"]["state"]["lr"] == lrs


def test_a_checkpoint_dict_uses_its_scheduler_entry(client):
    state, _, lrs = real_run(CASES["StepLR"][2])
    buffer = io.BytesIO()
    torch.save({"epoch": 3, "model": {"w": torch.zeros(2)}, "scheduler": state}, buffer)
    r = post_pt(client, buffer.getvalue(), spec_of("StepLR"), NEXT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recipes"]["state"]["lr"] == lrs
    assert any("'scheduler' entry" in w for w in body["warnings"])


# --------------------------------------------------------------------------- refusals


class Custom:
    def __init__(self):
        self.last_epoch = 3


def a_function(epoch):
    return 0.9**epoch


@pytest.mark.parametrize("payload", [Custom(), a_function], ids=["class-instance", "function"])
def test_a_pt_holding_an_object_is_refused_by_weights_only(client, payload):
    buffer = io.BytesIO()
    torch.save({"scheduler": payload, "last_epoch": 3}, buffer)
    body = problem(post_pt(client, buffer.getvalue(), spec_of("StepLR")), 422)
    assert "weights_only=True" in body["detail"]
    assert "Save the scheduler's state_dict() itself" in body["detail"]
    name = "Custom" if isinstance(payload, Custom) else "a_function"
    assert name in body["detail"]
    assert body["errors"][0]["loc"] == ["body", "state"]


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _shared_lists(depth: int) -> list:
    x = [1.0]
    for _ in range(depth):
        x = [x, x]  # pickle's memo writes each level once: a small file, 2**depth leaves
    return x


def _self_referencing() -> list:
    a: list = []
    a.append(a)
    return a


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (_shared_lists(60), "more than 20000 values"),
        (_self_referencing(), "nests deeper than 32 levels"),
        ({(1, 2): 3}, "a key of type tuple"),
    ],
    ids=["memo-bomb", "self-reference", "tuple-key"],
)
def test_a_pt_whose_contents_are_not_a_small_state_is_refused_quickly(client, payload, words):
    data = _saved({"last_epoch": 1, "_last_lr": payload})
    assert len(data) < 4096
    start = time.monotonic()
    body = problem(post_pt(client, data, spec_of("StepLR")), 422)
    assert time.monotonic() - start < 5
    assert words in body["detail"], body["detail"]


def test_a_spec_field_nested_too_deeply_is_refused(client):
    data = _saved({"last_epoch": 1})
    r = client.post(URL, files={"state": ("state.pt", data)}, data={"spec": "[" * 30000})
    assert "nests too deeply" in problem(r, 422)["detail"]


def test_a_pt_over_the_size_limit_is_413(tmp_path):
    settings = Settings(data_dir=tmp_path, max_state_bytes=2000)
    big = io.BytesIO()
    torch.save({"last_epoch": 1, "pad": torch.zeros(2000)}, big)
    with TestClient(create_app(settings)) as small:
        # by Content-Length
        body = problem(post_pt(small, big.getvalue(), spec_of("StepLR")), 413)
        assert "LRS_MAX_STATE_BYTES" in body["detail"] and "2000" in body["detail"]
        # streamed without a length: counted while it is read
        boundary = "b0undary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n'
            f"{json.dumps(spec_of('StepLR'))}\r\n--{boundary}\r\nContent-Disposition: form-data; "
            f'name="state"; filename="state.pt"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()

        def chunks():
            yield head
            for _ in range(100):  # 100 KB of file, well past the 2000-byte limit
                yield b"\0" * 1024
            yield f"\r\n--{boundary}--\r\n".encode()

        r = small.post(
            URL,
            content=chunks(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        body = problem(r, 413)
        assert "the state file is over 2000 bytes (LRS_MAX_STATE_BYTES)" in body["detail"]
        info = small.get("/v1/info").json()
        assert info["limits"]["max_state_bytes"] == 2000


def test_big_part_headers_are_400_and_a_body_over_the_body_limit_is_413_without_an_error(
    tmp_path,
):
    settings = Settings(data_dir=tmp_path, max_body_bytes=256 * 1024)
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="spec"\r\nX-Pad: '.encode()
    form = {"content-type": f"multipart/form-data; boundary={boundary}"}
    # raise_server_exceptions: an exception escaping the route would fail the test
    with TestClient(create_app(settings)) as small:
        # one part header of 100 KB, or 80 of 1 KB: the multipart parser's limits refuse them
        r = small.post(URL, content=head + b"a" * 100_000 + b"\r\n\r\n{}", headers=form)
        assert "header size" in problem(r, 400)["detail"]
        many = head + b"a\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 1000) for i in range(80))
        r = small.post(URL, content=many + b"\r\n{}", headers=form)
        assert "header count" in problem(r, 400)["detail"]

        # streamed past LRS_MAX_BODY_BYTES inside the state file: the body limit answers
        def chunks():
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="state"; '
                'filename="state.pt"\r\n\r\n'
            ).encode()
            for _ in range(40):
                yield b"\0" * 16 * 1024

        big = Settings(data_dir=tmp_path, max_body_bytes=256 * 1024, max_state_bytes=1 << 20)
        with TestClient(create_app(big)) as client:
            r = client.post(URL, content=chunks(), headers=form)
            assert r.status_code == 413, r.text


def test_a_state_of_another_scheduler_is_refused_naming_the_keys(client):
    state, data, _ = real_run(CASES["StepLR"][2])
    for r in (
        post_pt(client, data, spec_of("CosineAnnealingLR")),
        post_json(client, {"spec": spec_of("CosineAnnealingLR"), "state": state}),
    ):
        body = problem(r, 422)
        detail = body["detail"]
        assert "does not fit the spec's scheduler (CosineAnnealingLR)" in detail
        assert "missing T_max, eta_min" in detail and "unexpected gamma, step_size" in detail
        assert "it looks like a StepLR state" in detail
        assert body["errors"][0]["loc"] == ["body", "state"]


def test_a_nested_state_is_checked_child_by_child(client):
    # a SequentialLR whose main scheduler was a StepLR, for a spec with a cosine after warmup
    make = lambda o: S.SequentialLR(  # noqa: E731
        o, [S.LinearLR(o, start_factor=0.1, total_iters=10), S.StepLR(o, 10)], milestones=[10]
    )
    state, _, _ = real_run(make)
    body = problem(post_json(client, {"spec": spec_of("SequentialLR-warmup"), "state": state}), 422)
    assert body["detail"].startswith("state._schedulers[1] does not fit")
    assert body["errors"][0]["loc"] == ["body", "state", "_schedulers", 1]
    # the main scheduler's state alone, for a spec with a warmup
    cosine, _, _ = real_run(CASES["CosineAnnealingLR"][2])
    body = problem(
        post_json(client, {"spec": spec_of("SequentialLR-warmup"), "state": cosine}), 422
    )
    assert "send that SequentialLR's state_dict(), or drop spec.warmup" in body["detail"]


def test_a_state_with_other_param_groups_says_to_set_them(client):
    state, _, _ = real_run(CASES["StepLR"][2], groups=(0.1, 0.01))
    body = problem(post_json(client, {"spec": spec_of("StepLR"), "state": state}), 422)
    assert "one per param group, but the spec has 1 param group" in body["detail"]
    assert "set spec.param_groups to 2 groups" in body["detail"]


def test_wrong_types_in_a_json_state_are_refused(client):
    state, _, _ = real_run(CASES["StepLR"][2])
    body = problem(
        post_json(client, {"spec": spec_of("StepLR"), "state": {**state, "gamma": "x"}}), 422
    )
    assert body["detail"].startswith("state.gamma: expected a number")
    body = problem(
        post_json(client, {"spec": spec_of("StepLR"), "state": {**state, "last_epoch": 2.5}}), 422
    )
    assert "state.last_epoch: must be a whole number" in body["detail"]
    body = problem(
        post_json(client, {"spec": spec_of("StepLR"), "state": {**state, "last_epoch": -3}}), 422
    )
    assert "last_epoch ≥ 0" in body["detail"]


@pytest.mark.parametrize(
    "data",
    [
        b"this is not a torch file",
        b"PK\x03\x04 truncated zip",
        b"\x80\x02}q\x00",
        random.Random(0).randbytes(1000),
        pickle.dumps({"last_epoch": 3}),
    ],
    ids=["text", "broken-zip", "truncated-pickle", "random", "plain-pickle"],
)
def test_bytes_that_are_not_a_pt_are_refused(client, data):
    body = problem(post_pt(client, data, spec_of("StepLR"), filename="state.pt"), 422)
    assert "not a file torch.save wrote" in body["detail"]


def test_an_empty_upload_is_refused(client):
    body = problem(post_pt(client, b"", spec_of("StepLR")), 422)
    assert "empty" in body["detail"]


def test_malformed_multipart_is_400(client):
    spec = json.dumps(spec_of("StepLR"))
    r = client.post(
        URL, content=b"--x\r\nno headers here", headers={"content-type": "multipart/form-data"}
    )
    body = problem(r, 400)
    assert "boundary" in body["detail"]
    r = client.post(
        URL,
        content=b'--xyz\r\nContent-Disposition: form-data; name="spec"\r\n\r\n'
        + spec.encode()
        + b"\r\n--xyz\r\nbroken",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    body = problem(r, 400)
    assert "malformed" in body["detail"] and "curl -F state=@state.pt" in body["detail"]


def test_form_fields_missing_unknown_or_bad(client):
    _, data, _ = real_run(CASES["StepLR"][2])
    r = client.post(URL, files={"state": ("state.pt", data)})
    assert "no 'spec' field" in problem(r, 422)["detail"]
    r = client.post(URL, data={"spec": json.dumps(spec_of("StepLR"))}, files={"other": ("x", b"1")})
    assert "unknown form field 'other'" in problem(r, 422)["detail"]
    r = client.post(URL, files={"state": ("state.pt", data)}, data={"spec": "{not json"})
    assert "'spec' is not JSON" in problem(r, 422)["detail"]
    r = post_pt(client, data, spec_of("StepLR"), next_steps="ten")
    assert "'next_steps' is 'ten'" in problem(r, 422)["detail"]
    # the spec is validated as the JSON body's is, its loc pointing into it
    bad = {**spec_of("StepLR"), "stepz": 3}
    body = problem(post_pt(client, data, bad), 422)
    assert ["body", "spec", "stepz"] in [e["loc"] for e in body["errors"]]


def test_state_and_resume_at_exclude_each_other(client):
    state, _, _ = real_run(CASES["StepLR"][2])
    spec = spec_of("StepLR")
    body = problem(post_json(client, {"spec": spec, "state": state, "resume_at": 3}), 422)
    assert "either resume_at" in body["detail"]
    body = problem(
        post_json(client, {"spec": spec, "state": state, "recipes": ["last_epoch"]}), 422
    )
    assert "recipes go with resume_at" in body["detail"]
    body = problem(post_json(client, {"spec": spec, "resume_at": 3, "next_steps": 4}), 422)
    assert "next_steps goes with state" in body["detail"]


def test_families_without_a_torch_state_are_refused_naming_those_that_have_one(client):
    state, _, _ = real_run(CASES["StepLR"][2])
    timm = {
        "type": "timm",
        "sched": "cosine",
        "num_epochs": 10,
        "updates_per_epoch": 10,
        "step_on_epochs": False,
    }
    body = problem(
        post_json(client, {"spec": {"scheduler": timm, "steps": 100}, "state": state}), 422
    )
    assert "spec uses timm" in body["detail"]
    assert "torch's own schedulers" in body["detail"] and "transformers" in body["detail"]
    assert "Use resume_at instead" in body["detail"]


def test_limits_on_the_window(client, settings):
    state, _, _ = real_run(CASES["StepLR"][2])
    body = problem(
        post_json(
            client,
            {"spec": spec_of("StepLR"), "state": state, "next_steps": settings.torch_max_steps},
        ),
        422,
    )
    assert "LRS_TORCH_MAX_STEPS" in body["detail"] and body["errors"][0]["loc"] == [
        "body",
        "next_steps",
    ]
    # past spec.steps without next_steps
    far, _, _ = real_run(CASES["StepLR"][2], k=N, n=1)
    body = problem(post_json(client, {"spec": spec_of("StepLR"), "state": far}), 422)
    assert "give next_steps" in body["detail"]
    # a plateau state needs metrics for every step it answers
    plateau, _, _ = real_run(CASES["ReduceLROnPlateau"][2])
    spec = spec_of("ReduceLROnPlateau")
    body = problem(post_json(client, {"spec": spec, "state": plateau, "next_steps": 100}), 422)
    assert "spec.metrics has 59" in body["detail"]
    # OneCycleLR stepped past its total_steps: torch's refusal, as a 422
    onecycle, _, _ = real_run(CASES["OneCycleLR"][2])
    body = problem(
        post_json(client, {"spec": spec_of("OneCycleLR"), "state": onecycle, "next_steps": 50}), 422
    )
    assert "torch refused" in body["detail"] and "total" in body["detail"]


def test_resume_and_compare_run_under_the_compute_budget(tmp_path):
    # LRS_COMPUTE_MAX_SECONDS bounds them as it bounds compute (checked every 256 steps)
    settings = Settings(data_dir=tmp_path, compute_max_seconds=1e-6)
    spec = {"scheduler": {"type": "StepLR", "step_size": 10}, "steps": 5000}
    torch_spec = {**spec, "engine": "torch"}
    state, _, _ = real_run(CASES["StepLR"][2])
    with TestClient(create_app(settings)) as strict:
        r = strict.post(URL, json={"spec": spec, "resume_at": 100, "recipes": ["fast_forward"]})
        assert "LRS_COMPUTE_MAX_SECONDS" in problem(r, 422)["detail"]
        r = post_json(strict, {"spec": spec, "state": state, "next_steps": 4000})
        assert "LRS_COMPUTE_MAX_SECONDS" in problem(r, 422)["detail"]
        r = strict.post("/v1/schedules/compare", json={"specs": [torch_spec, torch_spec]})
        assert "LRS_COMPUTE_MAX_SECONDS" in problem(r, 422)["detail"]


def test_expensive_resume_and_compare_take_the_expensive_lane(tmp_path):
    # cost above 0.1% of LRS_TORCH_MAX_WORK: expensive; with the one expensive lane taken
    # they wait LRS_COMPUTE_MAX_SECONDS for it, then get 429 busy, as compute does
    settings = Settings(data_dir=tmp_path, compute_max_seconds=1e-6, compute_heavy_share=0.001)
    spec = {"scheduler": {"type": "StepLR", "step_size": 10}, "steps": 5000}
    torch_spec = {**spec, "engine": "torch"}
    state, _, _ = real_run(CASES["StepLR"][2])
    with TestClient(create_app(settings)) as strict:
        limiter = strict.app.state.heavy_limiter
        strict.portal.call(limiter.acquire_on_behalf_of, "test")
        try:
            r = post_json(strict, {"spec": spec, "state": state, "next_steps": 4000})
            assert problem(r, 429)["type"].endswith("/busy")
            r = strict.post(URL, json={"spec": spec, "resume_at": 100})
            assert problem(r, 429)["type"].endswith("/busy")
            r = strict.post("/v1/schedules/compare", json={"specs": [torch_spec, torch_spec]})
            assert problem(r, 429)["type"].endswith("/busy")
            # a cheap one is still served
            r = post_json(strict, {"spec": {**spec, "steps": 40}, "state": state, "next_steps": 5})
            assert r.status_code == 200, r.text
        finally:
            strict.portal.call(limiter.release_on_behalf_of, "test")


def test_openapi_documents_the_multipart_upload(client):
    operation = client.get("/openapi.json").json()["paths"][URL]["post"]
    content = operation["requestBody"]["content"]
    assert "application/json" in content
    form = content["multipart/form-data"]
    assert form["schema"]["properties"]["state"]["format"] == "binary"
    assert form["schema"]["required"] == ["state", "spec"]
    assert "example" in form
    assert "413" in operation["responses"]
