"""The client's lint, resume-from-a-saved-state and export methods against the real server,
checked against real torch schedulers run here; and their requests on the wire."""

import asyncio
import contextlib
import io
import json

import httpx
import pytest
import torch
from lrs_client import (
    EXPORT_TARGETS,
    AsyncClient,
    Client,
    ConnectionFailed,
    InvalidSpec,
    ProblemError,
)

from service.schedules.routes.export import EXAMPLES as EXPORT_EXAMPLES

COSINE = {"scheduler": {"type": "CosineAnnealingLR", "T_max": 40}, "steps": 60}
STOP = 25
NEXT = 10


def real_run():
    """A CosineAnnealingLR stopped after STOP steps: its state_dict() and the lrs that
    continuing it gives for the next NEXT steps."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40)
    for _ in range(STOP):
        opt.step()
        sched.step()
    state = sched.state_dict()
    following = []
    for _ in range(NEXT):
        following.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return state, following


def test_lint_gives_the_known_caveat_with_its_step_and_link(lrs):
    findings = lrs.lint(COSINE)
    cosine = next(f for f in findings if f["code"] == "cosine-rises-after-t-max")
    assert cosine["step"] == 41 and cosine["kind"] == "caveat"
    assert "T_max=40" in cosine["message"] and cosine["see"].startswith("https://")
    # the same caveat compute warns about
    assert cosine["message"] in lrs.compute(COSINE).warnings
    assert (
        lrs.lint({"scheduler": {"type": "LambdaLR", "lr_lambda": "0.9 ** epoch"}, "steps": 5}) == []
    )
    with pytest.raises(InvalidSpec) as refused:
        lrs.lint({"scheduler": {"type": "StepLR", "step_size": -1}, "steps": 5})
    assert "step_size" in str(refused.value)


def test_a_saved_pt_uploaded_gives_the_lrs_of_continuing_the_scheduler(lrs, tmp_path):
    state, following = real_run()
    path = tmp_path / "state.pt"
    torch.save(state, path)

    by_path = lrs.resume(COSINE, state_file=path, next_steps=NEXT)
    assert by_path["recipes"]["state"]["lr"][0] == following  # exactly, as torch computes
    assert by_path["steps"] == list(range(STOP, STOP + NEXT))
    assert by_path["state"]["source"] == "pt" and by_path["state"]["matches_uninterrupted"]
    assert by_path["uninterrupted"][0] == following

    # its bytes, an open file, a str path and the state as JSON: the same answer
    with path.open("rb") as f:
        by_file = lrs.resume(COSINE, state_file=f, next_steps=NEXT)
    by_bytes = lrs.resume(COSINE, state_file=path.read_bytes(), next_steps=NEXT)
    by_str = lrs.resume(COSINE, state_file=str(path), next_steps=NEXT)
    as_json = lrs.resume(COSINE, state=json.loads(json.dumps(state)), next_steps=NEXT)
    for other in (by_file, by_bytes, by_str, as_json):
        assert other["recipes"]["state"]["lr"] == by_path["recipes"]["state"]["lr"]
    assert as_json["state"]["source"] == "json"

    # a state of another scheduler: the service says what does not fit
    step_state = torch.optim.lr_scheduler.StepLR(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), step_size=3
    ).state_dict()
    buffer = io.BytesIO()
    torch.save(step_state, buffer)
    with pytest.raises(ProblemError) as refused:
        lrs.resume(COSINE, state_file=buffer.getvalue())
    assert refused.value.status == 422 and refused.value.detail


@pytest.mark.parametrize("target", EXPORT_TARGETS)
def test_export_writes_each_targets_script(lrs, target):
    spec = {
        "torch": EXPORT_EXAMPLES["cosine"],
        "lightning": EXPORT_EXAMPLES["cosine"],
        "transformers": EXPORT_EXAMPLES["transformers"],
        "timm": EXPORT_EXAMPLES["timm"],
        "optax": EXPORT_EXAMPLES["optax"],
        "megatron": EXPORT_EXAMPLES["megatron"],
    }[target]["value"]
    script = lrs.export(spec, target=target)
    marker = {
        "torch": "lr_scheduler.CosineAnnealingLR(",
        "lightning": "configure_optimizers",
        "transformers": "get_scheduler",
        "timm": "create_scheduler_v2",
        "optax": "optax.",
        "megatron": "OptimizerParamScheduler",
    }[target]
    assert marker in script
    compile(script, f"<{target}>", "exec")  # a whole Python script
    if target == "torch":  # run it here: it prints what compute returns
        assert printed_by(script) == every_step(lrs, spec)


def every_step(lrs, spec):
    """What compute's torch engine returns for every step (the examples sample; the scripts
    print every step, bit for bit what the torch engine computes)."""
    every = {k: v for k, v in spec.items() if k != "sample"}
    return lrs.compute({**every, "engine": "torch"}).lr


def printed_by(script: str):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(script, {"__name__": "__main__"})
    return json.loads(printed.getvalue().strip().splitlines()[-1])


def test_export_checkpoint_and_a_target_that_cannot_write_the_spec(lrs):
    spec = EXPORT_EXAMPLES["cosine"]["value"]
    plain, resumed = lrs.export(spec, "torch"), lrs.export(spec, "torch", checkpoint=True)
    assert resumed != plain
    assert printed_by(resumed) == every_step(lrs, spec)  # saved, reloaded: the same series
    with pytest.raises(InvalidSpec) as refused:
        lrs.export(spec, "optax")
    assert "torch" in refused.value.detail  # it names the targets that can


def test_the_upload_on_the_wire_and_a_503_retry_resends_it_whole():
    seen = []

    def handler(request):
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"status": 503})
        return httpx.Response(200, json={"ok": True})

    spec = {"scheduler": {"type": "StepLR", "step_size": 3}, "steps": 10}
    with Client("http://lrs.test", transport=httpx.MockTransport(handler), backoff=0) as c:
        assert c.resume(spec, state_file=io.BytesIO(b"PT-BYTES"), next_steps=4) == {"ok": True}
        with pytest.raises(ValueError, match="not both"):
            c.resume(spec, state={"last_epoch": 1}, state_file=b"x")
        with pytest.raises(ValueError, match="recipes"):
            c.resume(spec, state_file=b"x", recipes=["state_dict"])
    assert len(seen) == 2
    bodies = []
    for request in seen:
        kind, _, boundary = request.headers["content-type"].partition("; boundary=")
        assert kind == "multipart/form-data" and boundary
        bodies.append(request.read().replace(boundary.encode(), b"BOUNDARY"))
    assert bodies[0] == bodies[1]
    body = bodies[1]
    assert b'name="state"; filename="state.pt"' in body and b"PT-BYTES" in body
    assert b'name="spec"\r\n\r\n' + json.dumps(spec).encode() in body
    assert b'name="next_steps"\r\n\r\n4' in body

    async def upload():  # the async client builds the same form
        transport = httpx.MockTransport(handler)
        async with AsyncClient("http://lrs.test", transport=transport, backoff=0) as c:
            return await c.resume(spec, state_file=b"PT-BYTES", next_steps=4)

    assert asyncio.run(upload()) == {"ok": True}
    kind, _, boundary = seen[-1].headers["content-type"].partition("; boundary=")
    assert seen[-1].read().replace(boundary.encode(), b"BOUNDARY") == body


def test_one_retry_policy_for_both_clients():
    """Dropped connections and 503 are retried for idempotent calls only; a refused
    connection for every call; at most `retries` times."""

    def run(error, path_ok=None, retries=2):
        calls = []

        def handler(request):
            calls.append(request.url.path)
            if isinstance(error, int):
                return httpx.Response(error, json={"status": error, "title": "t"})
            raise error("boom", request=request)

        transport = httpx.MockTransport(handler)
        outcomes = []
        with Client("http://lrs.test", transport=transport, retries=retries, backoff=0) as c:
            for call in (c.info, c.ready):  # idempotent, not idempotent
                try:
                    call()
                except (ConnectionFailed, ProblemError) as exc:
                    outcomes.append(type(exc).__name__)

        async def arun():
            async with AsyncClient(
                "http://lrs.test", transport=transport, retries=retries, backoff=0
            ) as c:
                for call in (c.info, c.ready):
                    try:
                        await call()
                    except (ConnectionFailed, ProblemError) as exc:
                        outcomes.append(type(exc).__name__)

        asyncio.run(arun())
        return calls, outcomes

    calls, outcomes = run(httpx.ReadError)
    assert calls == ["/v1/info"] * 3 + ["/readyz"] + ["/v1/info"] * 3 + ["/readyz"]
    assert outcomes == ["ConnectionFailed"] * 4
    calls, _ = run(httpx.ConnectError)
    assert calls == (["/v1/info"] * 3 + ["/readyz"] * 3) * 2
    calls, outcomes = run(503)
    assert calls == (["/v1/info"] * 3 + ["/readyz"]) * 2
    assert outcomes == ["Unavailable"] * 4
    calls, _ = run(500, retries=5)
    assert calls == ["/v1/info", "/readyz"] * 2
