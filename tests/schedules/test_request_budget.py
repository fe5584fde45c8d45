"""One abusive client must not exhaust the schedule endpoints (issue 15, items 1, 2, 3, 6).

Each test drives the real server (uvicorn on a free port, small limits set through LRS_
variables so the abuse is quick) and asserts the bound a user would notice: answered or
refused (4xx problem+json saying what to change) within the limit, no 5xx, the server's RSS
growth bounded, and /healthz answering while it runs.
"""

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.servers import serve

MAX_SECONDS = 1.5
SEND_TIMEOUT = 2.0
STREAM_SECONDS = 10.0
ENV = {
    "LRS_COMPUTE_MAX_SECONDS": str(MAX_SECONDS),
    # room for a probe that takes several times the limit on any machine (PROBE_STEPS ×
    # PROBE_GROUPS distinct lr_lambdas: a cost of 6.7e10, 4.6 s on the fastest machine yet)
    "LRS_VECTORIZED_MAX_COST": "100000000000",
    # every request costing over 800 000 (0.1% of the default cost limit) takes the one
    # expensive lane
    "LRS_COMPUTE_HEAVY_SHARE": str(800_000 / 100_000_000_000),
    "LRS_BATCH_MAX_POINTS": "500000",
    "LRS_TORCH_MAX_WORK": "100000",
    "LRS_CACHE_MAX_BYTES": str(128 * 1024),
    "LRS_STREAM_SEND_TIMEOUT_S": str(SEND_TIMEOUT),
    "LRS_STREAM_MAX_SECONDS": str(STREAM_SECONDS),
}


def _balanced_sum(terms: list[str]) -> str:
    if len(terms) == 1:
        return terms[0]
    half = len(terms) // 2
    return f"({_balanced_sum(terms[:half])}+{_balanced_sum(terms[half:])})"


PROBE = _balanced_sum(["exp(sin(epoch))"] * 42)
"""The issue's 753-character lr_lambda: a balanced sum of 42 exp(sin(epoch))."""
PROBE_STEPS = 4_000_000
PROBE_GROUPS = 8
"""The probe that must run into the time limit: 4M steps × 8 groups, each with its own
lr_lambda (each distinct expression is evaluated for every step): a cost of 6.7e10 under this
server's 1e11. One lr_lambda over 1.4M steps took 1.7-1.9 s on the EPYC dev machine (one
thread), over 4M 0.57 s on the Xeon one (two threads): one probe of one expression no longer
ran into the 1.5 s limit; eight take about eight times as long."""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("budget-data")
    with serve(data_dir, ENV, ready_path="/healthz", ready_timeout=90) as running:
        url = running.url
        httpx.post(f"{url}/v1/schedules/compute", json=probe(1000), timeout=30)  # first-call costs
        yield url, running.pid


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Latencies(list):
    """/healthz latencies (seconds) while a block ran, and ``baseline``: the same server's
    latencies just before it, sampled the same way (the machine's load at the time)."""

    baseline: list[float]


def _healthz_samples(client: httpx.Client, url: str, count: int) -> list[float]:
    out = []
    for _ in range(count):
        start = time.monotonic()
        assert client.get(f"{url}/healthz").status_code == 200
        out.append(time.monotonic() - start)
        time.sleep(0.02)
    return out


@contextmanager
def healthz_latencies(url: str) -> Iterator[Latencies]:
    """Take a baseline of 10 /healthz answers, then ask every 20 ms while the block runs;
    yield the latencies (seconds), with the baseline."""
    latencies = Latencies()
    with httpx.Client(timeout=5) as client:
        latencies.baseline = _healthz_samples(client, url, 10)
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                start = time.monotonic()
                assert client.get(f"{url}/healthz").status_code == 200
                latencies.append(time.monotonic() - start)
                stop.wait(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        yield latencies
    finally:
        # On a quiet machine the probed request can finish before the poller's third
        # sample; take the rest right after it rather than asserting on one sample.
        deadline = time.monotonic() + 5
        while len(latencies) < 3 and poller.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        poller.join()


def p95(values: list[float]) -> float:
    """Return the 95th percentile by nearest rank, but never the largest of two or more
    values (of fewer than 20, the second largest): one slow answer on a shared machine is
    for the half-second bound on every answer to catch."""
    ordered = sorted(values)
    rank = min(math.ceil(0.95 * len(ordered)), len(ordered) - 1) if len(ordered) > 1 else 1
    return ordered[rank - 1]


def assert_healthz_fast(latencies: Latencies, url: str) -> None:
    """The 100 ms bound over the whole sample: its p95 (of a short sample, every answer but
    the slowest) within 100 ms, or 4× the p95 of the baseline taken just before when the
    machine alone makes that slower (2 cores other test runs share: load 10-20 while this
    was written), and no answer slower than half a second (the issue's probes stalled
    /healthz for 18.9 s and 31.8 s)."""
    assert len(latencies) >= 3, latencies
    bound = max(0.1, 4 * p95(latencies.baseline))
    summary = (
        f"p95 {p95(latencies) * 1000:.0f} ms of {len(latencies)}, baseline p95 "
        f"{p95(latencies.baseline) * 1000:.0f} ms: {sorted(latencies)}"
    )
    assert p95(latencies) <= bound, summary
    assert max(latencies) <= 0.5, summary


def probe(steps: int, groups: int = 1, distinct: bool = False) -> dict:
    """The issue's probe over ``groups`` param groups, one lr_lambda for all, or (``distinct``)
    one each, the same function written differently (``+ 0 * i``)."""
    texts = [f"{PROBE}+0*{i}" if distinct else PROBE for i in range(groups)]
    return {
        "scheduler": {"type": "LambdaLR", "lr_lambda": PROBE if groups == 1 else texts},
        "param_groups": [{"lr": 0.1}] * groups,
        "steps": steps,
        "sample": {"points": 1000},
    }


def is_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


# --------------------------------------------------------------------------- item 1


def test_the_cost_model_refuses_the_probe_up_front(server, tmp_path):
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import Settings

    url, _ = server
    # costs of 2.1e10 and 1.25e10 (about 1 ns of CPU each) against the default 8e8 (this
    # module's server allows 1e11, for a probe that runs into its time limit)
    with TestClient(create_app(Settings(data_dir=tmp_path, job_workers=0))) as client:
        for body, params in ((probe(10_000_000), "?format=npy"), (probe(6_000_000), "")):
            start = time.monotonic()
            r = client.post(f"/v1/schedules/compute{params}", json=body)
            assert time.monotonic() - start < 1.0  # refused before any work
            assert r.headers["content-type"].startswith("application/problem+json")
            detail = r.json()["detail"]
            assert r.status_code == 422, detail
            assert "LRS_VECTORIZED_MAX_COST" in detail and "Lower steps" in detail, detail
    limits = httpx.get(f"{url}/v1/info").json()["limits"]
    assert limits["compute_max_seconds"] == MAX_SECONDS
    assert limits["vectorized_max_cost"] > 0


def test_two_probes_stop_at_the_limit_while_other_requests_are_served(server):
    url, _ = server
    results: list[tuple[int, float, str]] = []
    ended: list[float] = []

    def expensive() -> None:
        start = time.monotonic()
        r = httpx.post(
            f"{url}/v1/schedules/compute",
            json=probe(PROBE_STEPS, PROBE_GROUPS, distinct=True),
            timeout=30,
        )
        ended.append(time.monotonic())
        results.append((r.status_code, ended[-1] - start, r.text))

    step_size = iter(range(1000, 2000))

    answered: list[float] = []

    def cheap_request() -> float:
        start = time.monotonic()  # a distinct spec each time: computed, not cached
        r = httpx.get(f"{url}/v1/schedules/StepLR?step_size={next(step_size)}&steps=100")
        assert r.status_code == 200 and r.headers["x-cache"] == "miss"
        answered.append(time.monotonic())
        return answered[-1] - start

    for _ in range(3):
        cheap_request()
    workers = [threading.Thread(target=expensive) for _ in range(2)]
    cheap: list[float] = []
    with healthz_latencies(url) as latencies:
        for worker in workers:
            worker.start()
        time.sleep(0.3)
        while any(w.is_alive() for w in workers):
            cheap.append(cheap_request())
            time.sleep(0.05)
    for worker in workers:
        worker.join()
    assert_healthz_fast(latencies, url)
    # Never queued behind the probes: had the two held both compute threads, no cheap
    # request could be answered before one of them ended (at its limit, MAX_SECONDS).
    assert sum(t < min(ended) for t in answered[3:]) >= 2, (cheap, results)
    assert max(cheap) < MAX_SECONDS, cheap
    for status, seconds, text in results:
        # stopped at the limit (422), or refused while the other held the expensive lane (429)
        assert status in (422, 429), text
        assert ("LRS_COMPUTE_MAX_SECONDS" if status == 422 else "retry later") in text
        # (its limit, plus one waiting for the other's, plus a chunk and the HTTP round trip
        # on a machine shared with other test runs)
        assert seconds < 2 * MAX_SECONDS + 2.5, results


def test_a_client_that_disconnects_stops_its_computation(server):
    url, _ = server
    # Another expensive-lane request (cheap to compute, but above the heavy share)
    other = f"{url}/v1/schedules/CosineAnnealingLR?T_max=10&steps=300000&points=5"
    alone = []
    for i in range(2):
        start = time.monotonic()
        assert httpx.get(f"{other}&eta_min={i}e-9").status_code == 200
        alone.append(time.monotonic() - start)
    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{url}/v1/schedules/compute",
            json=probe(PROBE_STEPS, PROBE_GROUPS, distinct=True),
            timeout=0.3,
        )
    r = httpx.get(f"{other}&eta_min=1e-6")
    assert r.status_code == 200 and r.headers["x-cache"] == "miss"
    # had the probe kept computing after its client left, it would have held the expensive
    # lane until its limit, MAX_SECONDS after it started, and the other request after that
    assert time.monotonic() - start < MAX_SECONDS + min(alone) - 0.1


FAMILIES = {
    "timm": {"type": "timm", "sched": "cosine", "num_epochs": 1000, "cycle_mul": 0.999999,
             "cycle_limit": 1000000, "step_on_epochs": False, "updates_per_epoch": 100},
    "optax": {"type": "optax", "schedule": "warmup_cosine_decay_schedule", "init_value": 0.0,
              "peak_value": 0.1, "warmup_steps": 10, "decay_steps": 100000},
    "megatron": {"type": "megatron", "lr_decay_style": "cosine", "max_lr": 3e-4,
                 "min_lr": 3e-5, "lr_warmup_steps": 100, "lr_decay_steps": 1000000},
    "transformers": {"type": "transformers", "name": "cosine_with_restarts",
                     "num_warmup_steps": 100, "num_training_steps": 2000000,
                     "scheduler_specific_kwargs": {"num_cycles": 5}},
}  # fmt: skip
"""Closed forms that took 22-65 s computed whole at load 12 on the 2 shared cores (optax's the
slowest), 2.5M steps × 16 groups: this server's cost limit (1e11) accepts them (costs
0.7e9-4.1e9, about 1 ns of CPU each); the default limit (8e8) refuses all but megatron's
cosine up front (test_a_family_request_over_the_default_cost_is_refused_up_front)."""


def _family_body(name: str) -> dict:
    return {"scheduler": FAMILIES[name], "param_groups": [{"lr": 0.1}] * 16, "steps": 2_500_000}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_family_closed_form_is_answered_or_stopped_within_the_limit(server, name):
    url, _ = server
    with healthz_latencies(url) as latencies:
        start = time.monotonic()
        r = httpx.post(
            f"{url}/v1/schedules/compute?format=npy", json=_family_body(name), timeout=90
        )
        seconds = time.monotonic() - start
    # a quiet machine computes some of these inside the 1.5 s limit (then the whole answer
    # comes back); a busy one stops them at it: either way no later than the limit, a chunk
    # (4096 steps × 16 groups: tens of ms) and the round trip (and the 22-65 s they took
    # computed whole at load 12 is ruled out)
    # an answer computed inside the limit (transformers' bounded factors are, since they skip
    # the dense check) is 320 MB of npy: its transfer, at 100 MB/s at least, is added
    transfer = 0.0
    if r.status_code == 200:
        assert len(r.content) > 16 * 2_500_000 * 8
        transfer = len(r.content) / 100e6
    else:
        detail = is_problem(r, 422)["detail"]
        assert "LRS_COMPUTE_MAX_SECONDS" in detail, detail
    assert seconds < MAX_SECONDS + 2.5 + transfer, (seconds, r.status_code)
    assert_healthz_fast(latencies, url)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_family_closed_form_stops_at_a_limit_shorter_than_it_takes(name, tmp_path):
    """With a 20 ms limit (far less than 40M values take on any machine) every family's
    closed form stops between its chunks with the limit's 422, long before computing whole."""
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import Settings

    # (a cost limit that accepts them all: the default refuses most of them up front)
    settings = Settings(
        data_dir=tmp_path, job_workers=0, compute_max_seconds=0.02, vectorized_max_cost=10**11
    )
    app = create_app(settings)
    with TestClient(app) as client:
        start = time.monotonic()
        r = client.post("/v1/schedules/compute?format=npy", json=_family_body(name))
        seconds = time.monotonic() - start
    detail = is_problem(r, 422)["detail"]
    assert "LRS_COMPUTE_MAX_SECONDS" in detail and "0.02 s" in detail, detail
    assert seconds < 2.5, seconds


def test_a_family_computation_stops_when_its_client_disconnects(server):
    url, _ = server
    other = f"{url}/v1/schedules/CosineAnnealingLR?T_max=10&steps=300000&points=5"
    alone = []
    for i in range(2):
        start = time.monotonic()
        assert httpx.get(f"{other}&eta_min={i}e-8").status_code == 200
        alone.append(time.monotonic() - start)
    start = time.monotonic()
    # 16 distinct groups: equal ones are evaluated once, which a fast machine computes and
    # starts sending within the client's 0.3 s
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{url}/v1/schedules/compute?format=npy", json=OVER_DEFAULT_COST["optax"], timeout=0.3
        )
    r = httpx.get(f"{other}&eta_min=1e-5")
    assert r.status_code == 200 and r.headers["x-cache"] == "miss"
    # computing on after its client left, optax would have held the expensive lane until
    # its limit, MAX_SECONDS after it started
    assert time.monotonic() - start < MAX_SECONDS + min(alone) - 0.1


OVER_DEFAULT_COST = {
    **{name: _family_body(name) for name in ("timm", "transformers")},
    # 16 distinct groups (equal ones are evaluated once: 16 equal groups cost about 5e8)
    "optax": {**_family_body("optax"), "scheduler": {**FAMILIES["optax"],
                                                   "peak_value": [0.1 + i / 100 for i in range(16)]}},
    "megatron": {**_family_body("megatron"), "scheduler": {**FAMILIES["megatron"],
                                                         "lr_decay_style": "WSD",
                                                         "wsd_decay_steps": 100_000}},
    "pytorch_warmup": {"scheduler": {"type": "noam", "d_model": 512, "warmup_steps": 4000},
                       "warmup": {"type": "radam"}, "optimizer": {"type": "Adam", "lr": 1.0},
                       "param_groups": [{"lr": 1.0}] * 16, "steps": 2_500_000},
}  # fmt: skip
"""Family requests the default cost limit (8e8: about 0.8 s of CPU on the quiet machine)
refuses: 2.5M steps × 16 groups cost 1.0e9 (timm, Megatron's WSD) to 4.1e9 (optax); they took
0.7-4 s of CPU each measured on a loaded machine (bench/bench_cost.py), 22-65 s at load 12,
and were accepted (costs of 1.6e8 each) when every closed form weighed 4 per value."""


@pytest.mark.parametrize("name", sorted(OVER_DEFAULT_COST))
def test_a_family_request_over_the_default_cost_is_refused_up_front(live_server, name):
    # the real server with its default limits (LRS_COMPUTE_MAX_SECONDS 5,
    # LRS_VECTORIZED_MAX_COST 8e8); the cost's 422 names the setting, the time limit's
    # (LRS_COMPUTE_MAX_SECONDS) would have come only after computing for 5 s
    r = httpx.post(
        f"{live_server}/v1/schedules/compute?format=npy", json=OVER_DEFAULT_COST[name], timeout=60
    )
    detail = is_problem(r, 422)["detail"]
    assert "LRS_VECTORIZED_MAX_COST" in detail and "Lower steps" in detail, detail
    assert "LRS_COMPUTE_MAX_SECONDS" not in detail, detail
    assert "16 param groups" in detail and "2500000 scheduler steps" in detail, detail
    limits = httpx.get(f"{live_server}/v1/info").json()["limits"]
    assert limits["vectorized_max_cost"] == 800_000_000
    assert limits["compute_max_seconds"] == 5.0


MID_SIZE = {
    "optax": {"type": "optax", "schedule": "warmup_cosine_decay_schedule", "init_value": 0.0,
              "peak_value": 0.1, "warmup_steps": 1000, "decay_steps": 199_000},
    "timm": {"type": "timm", "sched": "cosine", "num_epochs": 200_000, "warmup_epochs": 1000,
             "warmup_lr": 0.0},
    "megatron": {"type": "megatron", "lr_decay_style": "cosine", "max_lr": 0.1,
                 "min_lr": 0.0, "lr_warmup_steps": 1000, "lr_decay_steps": 199_000},
    "transformers": {"type": "transformers", "name": "cosine_with_restarts",
                     "num_warmup_steps": 1000, "num_training_steps": 200_000,
                     "scheduler_specific_kwargs": {"num_cycles": 1}},
    "noam": {"type": "noam", "d_model": 1, "warmup_steps": 1000},
    "rex": {"type": "rex", "total_steps": 200_000},
}  # fmt: skip
"""Mid-size family schedules, 200k steps × 16 groups (3.2M values), each with its peak at step
1000 (noam's d_model 1: its peak is warmup_steps ** -0.5): costs 4.6e7 (rex) to 3.3e8 (optax),
under the default 8e8 (optax's and transformers' above the heavy lane's 8e7)."""


@pytest.mark.parametrize("name", sorted(MID_SIZE))
def test_a_mid_size_family_request_runs_inside_the_limit(live_server, name):
    import numpy as np

    body = {"scheduler": MID_SIZE[name], "param_groups": [{"lr": 0.1}] * 16, "steps": 200_000}
    if name == "noam":
        body["warmup"] = {"type": "linear", "warmup_period": 100}  # pytorch_warmup's
        body["optimizer"] = {"type": "Adam", "lr": 0.1}
    r = httpx.post(f"{live_server}/v1/schedules/compute?format=npy", json=body, timeout=60)
    assert r.status_code == 200, r.text[:500]  # computed whole, not stopped at the 5 s limit
    assert r.headers["x-engine"] == "vectorized"
    import io

    lr = np.load(io.BytesIO(r.content))
    assert lr.shape == (16, 200_000)
    peak = 0.1 * (1000**-0.5 if name == "noam" else 1.0)
    if name == "rex":  # no warmup: z / (1/2 + z/2) with z = 1 - 1000 / 200 000
        peak, z = 0.1, 1 - 1000 / 200_000
        assert lr[:, 0] == pytest.approx([0.1] * 16, rel=1e-12)
        assert lr[:, 1000] == pytest.approx([0.1 * z / (0.5 + 0.5 * z)] * 16, rel=1e-12)
    elif name == "timm":  # its warmup is inside num_epochs: the cosine is at t = 1000 already
        at = 0.05 * (1 + math.cos(math.pi * 1000 / 200_000))
        assert lr[:, 1000] == pytest.approx([at] * 16, rel=1e-12)
    else:
        assert lr[:, 1000] == pytest.approx([peak] * 16, rel=1e-6)  # the end of the warmup
    if name != "noam":  # decayed (rex: (1 - 0.99) / (0.5 + 0.5 * 0.01) of the lr)
        assert lr[:, -1].max() < 0.01 * 0.1
    assert (lr[:, :1000] <= peak * (1 + 1e-9)).all()


CACHED = {
    "scheduler": {"type": "optax", "schedule": "warmup_cosine_decay_schedule",
                  "init_value": 0.0, "peak_value": 0.1, "warmup_steps": 100,
                  "decay_steps": 4900},
    "param_groups": [{"lr": 0.1}] * 4,
    "steps": 5000,
    "sample": {"points": 11},
}  # fmt: skip
"""A spec whose compiled plan stays cached (20 000 values, cost 1.0e6)."""


@pytest.mark.parametrize(
    "limit, value, setting",
    [
        ("vectorized_max_steps", 4999, "LRS_VECTORIZED_MAX_STEPS"),
        ("vectorized_max_values", 19_999, "LRS_VECTORIZED_MAX_VALUES"),
        ("vectorized_max_cost", 100_000, "LRS_VECTORIZED_MAX_COST"),
    ],
)
def test_a_cached_plan_is_refused_by_an_app_with_stricter_limits(tmp_path, limit, value, setting):
    """Two apps with different settings in one process share the compiled plans; a spec the
    first computed (its plan cached) gets from the second the same 422 as a spec never
    computed. /v1/schedules/compare computes its specs without checking their limits first:
    the computation's own check (on a plan-cache hit, the plan's) is the one that refuses."""
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.schedules import service
    from service.settings import Settings

    other = {**CACHED, "optimizer": {"type": "SGD", "lr": 0.2}}
    body = {"specs": [CACHED, other]}
    loose = create_app(Settings(data_dir=tmp_path / "a", job_workers=0))
    strict = create_app(Settings(data_dir=tmp_path / "b", job_workers=0, **{limit: value}))
    with TestClient(loose) as first, TestClient(strict) as second:
        service.plans.clear()
        fresh = second.post("/v1/schedules/compare", json=body)  # no plan cached
        assert first.post("/v1/schedules/compare", json=body).status_code == 200
        assert service.plans.find(service.plans.key(_request(CACHED))) is not None
        cached = second.post("/v1/schedules/compare", json=body)
        again = first.post("/v1/schedules/compare", json=body)
    detail = is_problem(fresh, 422)["detail"]
    assert setting in detail and detail.startswith("specs[0]: "), detail
    assert is_problem(cached, 422)["detail"] == detail
    assert again.status_code == 200


def _request(body: dict):
    from service.schedules import specs

    return specs.ScheduleRequest.model_validate(body)


def test_an_lr_lambda_is_evaluated_once_per_step_for_every_group(monkeypatch):
    """The cost model counts an lr_lambda's operations per scheduler step, not per value: one
    text shared by 16 groups (or given once) is parsed once and evaluated once per step for
    all of them, as many times as for one group (values checked against torch's LambdaLR)."""
    import numpy as np
    import torch

    from service.schedules import budget, service
    from service.schedules.expressions import Expression
    from service.schedules.families.torch import LambdaLR
    from service.settings import Settings

    calls: list[int] = []
    evaluate = Expression.evaluate_tensor

    def counted(self, e):
        calls.append(int(e.numel()))
        return evaluate(self, e)

    monkeypatch.setattr(Expression, "evaluate_tensor", counted)
    text = "0.5 * (1 + cos(3.141592653589793 * epoch / 1000))"
    costs, evaluated = [], []
    for groups in (1, 16):
        for lr_lambda in (text, [text] * groups):
            body = {
                "scheduler": {"type": "LambdaLR", "lr_lambda": lr_lambda},
                "param_groups": [{"lr": 0.1 * (g + 1)} for g in range(groups)],
                "steps": 1000,
                "engine": "vectorized",
            }
            request = _request(body)
            calls.clear()
            service.plans.clear()
            result = service.compute(request, Settings())
            evaluated.append(sum(calls))
            costs.append(budget.cost(request, "vectorized"))
            params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(groups)]
            opt = torch.optim.SGD(
                [{"params": [p], "lr": 0.1 * (g + 1)} for g, p in enumerate(params)]
            )
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda e: 0.5 * (1 + math.cos(3.141592653589793 * e / 1000))
            )
            expected = []
            for _ in range(1000):
                expected.append([g["lr"] for g in opt.param_groups])
                opt.step()
                sched.step()
            np.testing.assert_allclose(result.lr.T, expected, rtol=1e-12)
    assert len(set(evaluated)) == 1, evaluated  # as many steps evaluated for 16 groups as for 1
    assert {c.nodes for c in costs} == {costs[0].nodes}
    one, sixteen = costs[0].total, costs[2].total
    lambda_part = 1000 * budget.LAMBDA_NODE_COST * costs[0].nodes
    # only the per-value weight of LambdaLR itself grows with the groups
    assert sixteen - one == 1000 * 15 * LambdaLR.cost_per_value and one > lambda_part


# --------------------------------------------------------------------------- item 2


def test_batch_limits_count_groups_and_schedulers(server):
    url, pid = server
    wide = {
        "scheduler": {"type": "CosineAnnealingLR", "T_max": 100},
        "param_groups": [{"lr": 0.1}] * 16,
        "steps": 20_000,
    }
    before = rss_mb(pid)
    with healthz_latencies(url) as latencies:
        start = time.monotonic()
        r = httpx.post(f"{url}/v1/schedules/batch", json={"requests": [wide] * 100}, timeout=30)
        seconds = time.monotonic() - start
    assert r.status_code == 200
    slots = r.json()["results"]
    # 16 groups × 20k points = 320k values: one slot fits the 500k values of a batch
    assert [s["status"] for s in slots] == [200] + [422] * 99
    detail = slots[1]["problem"]["detail"]
    assert "16 param groups" in detail and "LRS_BATCH_MAX_POINTS" in detail, detail
    assert len(r.content) < 500_000 * 24 + 100 * 2_000  # bounded before any work started
    assert seconds < MAX_SECONDS + 2
    assert rss_mb(pid) - before < 150
    assert_healthz_fast(latencies, url)

    chained = {
        "scheduler": {
            "type": "ChainedScheduler",
            "schedulers": [{"type": "LambdaLR", "lr_lambda": "0.999 ** epoch"}] * 15,
        },
        "param_groups": [{"lr": 0.1}] * 16,
        "steps": 300,
        "engine": "torch",
    }
    start = time.monotonic()
    r = httpx.post(f"{url}/v1/schedules/batch", json={"requests": [chained] * 4}, timeout=30)
    assert time.monotonic() - start < MAX_SECONDS + 1
    slots = r.json()["results"]
    # 300 steps × 16 groups × 16 schedulers = 76,800 updates (+ the lambdas); two exceed 100k
    assert [s["status"] for s in slots] == [200, 422, 422, 422], slots[0]
    detail = slots[1]["problem"]["detail"]
    assert "16 param groups" in detail and "16 schedulers" in detail, detail
    assert "LRS_TORCH_MAX_WORK" in detail


# --------------------------------------------------------------------------- item 3


def _timed_download(url: str, fmt: str, body: dict, pid: int) -> tuple[float, float, httpx.Headers]:
    """Return (seconds, peak RSS growth in MB, headers) of streaming one response."""
    base = rss_mb(pid)
    peak = base
    start = time.monotonic()
    size = 0
    with httpx.stream(
        "POST", f"{url}/v1/schedules/compute?format={fmt}", json=body, timeout=60
    ) as r:
        assert r.status_code == 200
        for i, chunk in enumerate(r.iter_bytes()):
            size += len(chunk)
            if i % 16 == 0:
                peak = max(peak, rss_mb(pid))
        headers = r.headers
    return time.monotonic() - start, peak - base, headers


def test_csv_streams_in_bounded_memory_within_twice_the_json_time(server):
    url, pid = server
    body = {
        "scheduler": {"type": "CosineAnnealingLR", "T_max": 1000},
        "param_groups": [{"lr": 0.1 / (g + 1)} for g in range(16)],
        "steps": 150_000,
    }
    runs: dict[str, list[float]] = {"json": [], "csv": []}
    with healthz_latencies(url) as latencies:
        for _ in range(2):  # the faster of two runs each: the machine is shared
            for fmt in ("json", "csv"):
                seconds, grown_mb, headers = _timed_download(url, fmt, body, pid)
                runs[fmt].append(seconds)
                # the lrs themselves are 19 MB; the CSV is ~50 MB and never held whole
                assert grown_mb < 100, (fmt, grown_mb)
    # The target is 2× (it was 15×); measured 1.5-2.3× end to end while other test runs kept
    # this 2-core machine at load 13-20, so the assertion leaves that noise some room.
    assert min(runs["csv"]) <= 2.3 * min(runs["json"]), runs
    assert headers.get("content-length") is None  # streamed
    assert headers["x-cache"] == "bypass" and headers["etag"]
    assert_healthz_fast(latencies, url)

    again = httpx.post(
        f"{url}/v1/schedules/compute?format=csv",
        json=body,
        headers={"if-none-match": headers["etag"]},
    )
    assert again.status_code == 304  # the ETag is the spec's, streamed or not
    small = httpx.post(
        f"{url}/v1/schedules/compute?format=csv", json={**body, "sample": {"at": [0, 1000]}}
    )
    lines = small.text.splitlines()
    assert lines[0] == "step," + ",".join(f"lr_{g}" for g in range(16))
    assert lines[1].split(",")[:3] == ["0", "0.1", "0.05"] and lines[2].startswith("1000,")


# --------------------------------------------------------------------------- item 6


def test_many_tiny_distinct_specs_keep_rss_flat(server):
    url, pid = server
    with httpx.Client() as client:
        for i in range(100):  # warm up the code paths, then fill the 128 KiB cache
            client.get(f"{url}/v1/schedules/StepLR?step_size={i + 1}&steps=10")
        before = rss_mb(pid)
        for i in range(400):
            r = client.get(f"{url}/v1/schedules/StepLR?step_size={i + 1000}&steps=10")
            assert r.status_code == 200 and r.headers["x-cache"] == "miss"
        grown = rss_mb(pid) - before
    # counted as body bytes only, ~320 entries of ~400 bytes fit and held ~1.4 MB of RSS
    assert grown < 0.8, grown


# --------------------------------------------------------------------------- item 3: slow readers

BIG_CSV = {
    "scheduler": {"type": "CosineAnnealingLR", "T_max": 1000},
    "param_groups": [{"lr": 0.1 / (g + 1)} for g in range(16)],
    "steps": 200_000,
}
"""A ~67 MB CSV: streamed (above LRS_STREAM_MIN_BYTES), in ~300 KB chunks."""


def _slow_reader(url: str, body: dict, *, read_bytes: int, every: float, limit: float):
    """POST ``body`` for CSV on a raw socket with a small receive buffer, then read
    ``read_bytes`` every ``every`` seconds (0: read nothing, then everything after ``limit``
    plus 1.5 s); return (seconds until the server closed, bytes of body, whether the chunked
    body ended properly)."""
    import json as _json
    import socket

    host, port = url.removeprefix("http://").split(":")
    payload = _json.dumps(body).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.settimeout(30)
    sock.connect((host, int(port)))
    sock.sendall(
        b"POST /v1/schedules/compute?format=csv HTTP/1.1\r\nHost: t\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(payload)).encode()
        + b"\r\n\r\n"
        + payload
    )
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, data = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    start = time.monotonic()
    if not every:
        time.sleep(limit + 1.5)
    try:
        while chunk := sock.recv(read_bytes):
            data += chunk
            if every:
                time.sleep(every)
            assert time.monotonic() - start < limit + 20, "the server kept streaming"
    except ConnectionResetError:
        pass
    seconds = time.monotonic() - start
    sock.close()
    return seconds, len(data), data.endswith(b"\r\n0\r\n\r\n")


def test_a_client_that_stops_reading_is_disconnected_after_the_send_timeout(server):
    url, _ = server
    with healthz_latencies(url) as latencies:
        seconds, size, complete = _slow_reader(
            url, BIG_CSV, read_bytes=65536, every=0, limit=SEND_TIMEOUT
        )
    assert not complete and size < 40 << 20, size  # cut mid-body: an incomplete read
    assert seconds < SEND_TIMEOUT + 1.5 + 5, seconds  # what was left came at once, then EOF
    assert_healthz_fast(latencies, url)
    limits = httpx.get(f"{url}/v1/info").json()["limits"]
    assert limits["stream_send_timeout_s"] == SEND_TIMEOUT
    assert limits["stream_max_seconds"] == STREAM_SECONDS


def test_a_client_that_trickles_is_disconnected_at_the_stream_limit(server):
    url, _ = server
    # 64 KB every 50 ms (~1.3 MB/s at best): each ~300 KB chunk is taken well within the
    # send timeout, but the 67 MB body would take ~50 s
    seconds, size, complete = _slow_reader(
        url, BIG_CSV, read_bytes=65536, every=0.05, limit=STREAM_SECONDS
    )
    assert not complete and size < 40 << 20, size
    # cut at the stream limit, not by the send timeout; the client then still reads what
    # the kernel's socket buffers hold (up to a few MB at this pace: seconds more)
    assert STREAM_SECONDS - 1 < seconds < STREAM_SECONDS + 15, seconds
    # a client that reads as fast as it can gets the whole body
    r = httpx.post(f"{url}/v1/schedules/compute?format=csv", json=BIG_CSV, timeout=60)
    assert r.status_code == 200 and r.text.count("\n") == 200_001
