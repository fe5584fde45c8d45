"""A sampled request on a closed form is priced by the steps it evaluates (the sampled points
and a few probes), not every scheduler step: a dashboard plotting 200 points of a 1M-step
schedule over 16 groups is answered under the default LRS_VECTORIZED_MAX_COST, the same
request unsampled is still refused up front, and what evaluates every step (an lr_lambda's
dense check, a ChainedScheduler's scan, metrics, counters) keeps the full price. Values are
checked against the real libraries at the sampled steps."""

import math
import warnings

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings

STEPS = 1_000_000
GROUPS = 16
POINTS = 200
LR = 0.1

OPTAX = {"type": "optax", "schedule": "warmup_cosine_decay_schedule", "init_value": 0.0,
         "peak_value": LR, "warmup_steps": 1000, "decay_steps": STEPS - 1000}  # fmt: skip
TIMM = {"type": "timm", "sched": "cosine", "num_epochs": STEPS, "warmup_epochs": 1000,
        "warmup_lr": 0.0}  # fmt: skip
TORCH = {"type": "CosineAnnealingLR", "T_max": STEPS, "eta_min": 0.0}
SCHEDULERS = {"optax": OPTAX, "timm": TIMM, "torch": TORCH}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("sampled"), job_workers=0)
    with TestClient(create_app(settings)) as running:
        yield running


def body(scheduler: dict, sample: dict | None = None, steps: int = STEPS, **more) -> dict:
    out = {"scheduler": scheduler, "param_groups": [{"lr": LR}] * GROUPS, "steps": steps, **more}
    if sample is not None:
        out["sample"] = sample
    return out


def refused_for_cost(response) -> str:
    assert response.status_code == 422, response.text[:500]
    detail = response.json()["detail"]
    assert "LRS_VECTORIZED_MAX_COST" in detail, detail
    return detail


def reference(name: str, indices: np.ndarray) -> np.ndarray:
    """The real library's lr at ``indices`` (one group: every group is the same)."""
    if name == "optax":
        import jax

        jax.config.update("jax_enable_x64", True)
        import optax

        kwargs = {k: v for k, v in OPTAX.items() if k not in ("type", "schedule")}
        fn = optax.warmup_cosine_decay_schedule(**kwargs)
        return np.asarray(jax.vmap(fn)(jax.numpy.asarray(indices)), dtype=np.float64)
    if name == "timm":
        import torch

        from service.schedules.families import import_submodule_only

        timm_scheduler = import_submodule_only("timm", "scheduler")
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
        kwargs = {k: v for k, v in TIMM.items() if k != "type"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sched, _ = timm_scheduler.create_scheduler_v2(opt, **kwargs)
        # what scheduler.step(t) writes into the group (timm's stateless _get_lr(t))
        return np.asarray([sched._get_lr(int(t))[0] for t in indices], dtype=np.float64)
    # torch's CosineAnnealingLR, its documented closed form (its recursion drifts from it by
    # rounding only)
    return np.asarray([LR * (1 + math.cos(math.pi * t / STEPS)) / 2 for t in indices])


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_sampled_points_of_a_long_closed_form_are_answered(client, name):
    r = client.post("/v1/schedules/compute", json=body(SCHEDULERS[name], {"points": POINTS}))
    assert r.status_code == 200, r.text[:500]
    out = r.json()
    assert out["engine"] == "vectorized"
    indices = np.asarray(out["steps"], dtype=np.int64)
    assert indices.size == POINTS and indices[0] == 0 and indices[-1] == STEPS - 1
    lr = np.asarray(out["lr"], dtype=np.float64)
    assert lr.shape == (GROUPS, POINTS)
    expected = reference(name, indices)
    rtol = 1e-9 if name != "torch" else 1e-6
    for group in lr:
        np.testing.assert_allclose(group, expected, rtol=rtol, atol=1e-15)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_and_at_are_priced_by_their_steps_too(client, name):
    scheduler = SCHEDULERS[name]
    every = client.post("/v1/schedules/compute", json=body(scheduler, {"every": 10_000}))
    assert every.status_code == 200, every.text[:500]
    assert len(every.json()["steps"]) == 100
    at = [0, 999, 1000, 500_000, STEPS - 1]
    r = client.post("/v1/schedules/compute", json=body(scheduler, {"at": at}))
    assert r.status_code == 200, r.text[:500]
    lr = np.asarray(r.json()["lr"], dtype=np.float64)
    rtol = 1e-9 if name != "torch" else 1e-6
    np.testing.assert_allclose(lr[0], reference(name, np.asarray(at)), rtol=rtol, atol=1e-15)


LONG = 2_500_000
TIMM_LONG = {**TIMM, "num_epochs": LONG}
"""timm's cosine at 2.5M steps × 16 groups: a cost of 1.0e9 at every step, over the default
8e8."""


@pytest.mark.parametrize("steps", [LONG])
def test_the_same_request_unsampled_is_refused_up_front(client, steps):
    scheduler = TIMM_LONG
    r = client.post("/v1/schedules/compute?format=npy", json=body(scheduler, steps=steps))
    detail = refused_for_cost(r)
    assert f"{steps} scheduler steps" in detail and "16 param groups" in detail, detail
    # sampling every step evaluates every step: the full price
    dense = body(scheduler, {"every": 1}, steps=steps)
    refused_for_cost(client.post("/v1/schedules/compute?format=npy", json=dense))
    sampled = client.post(
        "/v1/schedules/compute", json=body(scheduler, {"points": 50}, steps=steps)
    )
    assert sampled.status_code == 200, sampled.text[:500]
    assert len(sampled.json()["steps"]) == 50


LAMBDA = "0.5 * (1 + cos(3.141592653589793 * epoch / 10000000))"


@pytest.mark.parametrize(
    "case",
    [
        # an lr_lambda: its refusal and finiteness checks evaluate every step
        body(
            {
                "type": "LambdaLR",
                "lr_lambda": LAMBDA
                + " * exp(sin(epoch)) * exp(cos(epoch))"
                + " * exp(sin(epoch / 2)) * exp(cos(epoch / 3))",
            },
            {"points": POINTS},
            steps=10_000_000,
            param_groups=[{"lr": LR}],
        ),
        # a ChainedScheduler: the affine scan over every step
        body(
            {
                "type": "ChainedScheduler",
                "schedulers": [TIMM_LONG, {"type": "ExponentialLR", "gamma": 0.9999999}],
            },
            {"points": POINTS},
            steps=LONG,
        ),
        # counters: the step columns
        body(TIMM_LONG, {"points": POINTS}, steps=LONG, accumulation_steps=2),
    ],
    ids=["lambda", "chained", "counters"],
)
def test_what_evaluates_every_step_keeps_the_full_price(client, case):
    detail = refused_for_cost(client.post("/v1/schedules/compute", json=case))
    assert "every scheduler step" in detail, detail


def test_a_metric_driven_schedule_keeps_the_full_price(tmp_path):
    """ReduceLROnPlateau scans its metrics at every step: 200 points of 100k steps cost the
    scan's 500 a step whatever the sample (a limit between the two prices refuses it)."""
    n = 100_000
    case = {
        "scheduler": {"type": "ReduceLROnPlateau", "patience": 10},
        "param_groups": [{"lr": LR}],
        "steps": n,
        "metrics": [1.0] * (n - 1),
        "sample": {"points": POINTS},
    }
    settings = Settings(data_dir=tmp_path, job_workers=0, vectorized_max_cost=10_000_000)
    with TestClient(create_app(settings)) as strict:
        refused_for_cost(strict.post("/v1/schedules/compute", json=case))


def test_a_cheap_sample_of_a_costly_spec_goes_to_the_light_lane():
    """The heavy lane and inline compute read the same price as the refusal."""
    from service.schedules import service, specs

    settings = Settings(job_workers=0)
    sampled = specs.ScheduleRequest.model_validate(body(OPTAX, {"points": POINTS}))
    whole = specs.ScheduleRequest.model_validate(body(TIMM))
    assert service.request_cost(sampled, settings) < settings.compute_heavy_share
    assert service.request_cost(whole, settings) > settings.compute_heavy_share
    found = service.checked(sampled, settings)
    assert found.share == service.request_cost(sampled, settings)


OVERFLOW = {"type": "ExponentialLR", "gamma": 1.001}
"""Overflows to inf after about 712 000 steps: the probe at the last step is not finite, so
the closed form is not trusted and the affine scan over every step decides (torch's own
422 naming the first step whose lr is not finite)."""


def test_failed_probes_are_priced_by_every_step(tmp_path):
    """The plan evaluates its probes before it is priced: probes that fail mean the scan over
    every step, priced as such (2e8 for 10M steps), over this server's 1e6."""
    settings = Settings(data_dir=tmp_path, job_workers=0, vectorized_max_cost=10**6)
    case = body(OVERFLOW, {"points": POINTS}, steps=10_000_000, param_groups=[{"lr": LR}])
    finite = body({**OVERFLOW, "gamma": 0.999}, {"points": POINTS}, steps=10_000_000,
                  param_groups=[{"lr": LR}])  # fmt: skip
    with TestClient(create_app(settings)) as strict:
        refused_for_cost(strict.post("/v1/schedules/compute", json=case))
        assert strict.post("/v1/schedules/compute", json=finite).status_code == 200


def test_failed_probes_fall_back_to_a_scan_that_stops_at_the_time_limit(tmp_path):
    """Within the cost limit (raised here: the scan over 10M steps × 4 groups costs 1.7e10),
    the scan over every step stops at a time limit shorter than it takes, with that limit's
    422."""
    settings = Settings(
        data_dir=tmp_path, job_workers=0, compute_max_seconds=0.05, vectorized_max_cost=10**11
    )
    case = body(OVERFLOW, {"points": POINTS}, steps=10_000_000, param_groups=[{"lr": LR}] * 4)
    with TestClient(create_app(settings)) as tiny:
        r = tiny.post("/v1/schedules/compute", json=case)
    assert r.status_code == 422, r.text[:500]
    detail = r.json()["detail"]
    assert "LRS_COMPUTE_MAX_SECONDS" in detail and "0.05 s" in detail, detail


def test_failed_probes_within_the_limit_say_where_the_lr_stops_being_finite(client):
    r = client.post(
        "/v1/schedules/compute",
        json=body(OVERFLOW, {"points": POINTS}, steps=800_000, param_groups=[{"lr": LR}]),
    )
    assert r.status_code == 422, r.text[:500]
    detail = r.json()["detail"]
    assert "LRS_" not in detail, detail  # not a limit: the lr itself
    # 0.1 * 1.001 ** k overflows float64 past k = log(1.8e308 / 0.1) / log(1.001)
    first = math.ceil((math.log(np.finfo(np.float64).max) - math.log(LR)) / math.log(1.001))
    assert any(str(k) in detail for k in range(first - 2, first + 3)), detail


def test_a_batch_of_sampled_closed_forms_is_priced_by_their_points(client):
    """Two sampled optax specs (2.0e8 each unsampled) and a sampled timm one (1.0e9) fit one
    batch under the default 8e8."""
    other = {**OPTAX, "peak_value": 2 * LR}
    long = body(TIMM_LONG, {"points": POINTS}, steps=LONG)
    requests = [body(OPTAX, {"points": POINTS}), body(other, {"points": POINTS}), long]
    r = client.post("/v1/schedules/batch", json={"requests": requests})
    assert r.status_code == 200, r.text[:500]
    slots = r.json()["results"]
    assert len(slots) == 3
    assert slots[2]["status"] == 200, str(slots[2])[:500]
    for slot, scale in zip(slots[:2], (1, 2), strict=True):
        assert slot["status"] == 200, str(slot)[:500]
        indices = np.asarray(slot["result"]["steps"], dtype=np.int64)
        assert indices.size == POINTS
        expected = scale * reference("optax", indices)
        lr = np.asarray(slot["result"]["lr"])
        assert lr.shape == (GROUPS, POINTS)
        np.testing.assert_allclose(lr[-1], expected, rtol=1e-9, atol=1e-15)


def test_a_sampled_request_runs_on_the_event_loop_only_if_every_step_would_fit():
    """Inline compute reads the price at every step: a sampled closed form whose probes could
    fail (then the scan runs over every step) is computed in a thread unless that fits."""
    from service.schedules import service, specs
    from service.schedules.routes.compute import _runs_inline

    settings = Settings(job_workers=0, compute_inline_max_cost=500_000)
    big = specs.ScheduleRequest.model_validate(
        body(OVERFLOW, {"points": POINTS}, steps=10_000_000, param_groups=[{"lr": LR}])
    )
    small = specs.ScheduleRequest.model_validate(
        body(OVERFLOW, {"points": POINTS}, steps=10_000, param_groups=[{"lr": LR}])
    )
    found = service.checked(big, settings)
    assert found.cost <= 500_000 < found.every_step
    assert not _runs_inline(found, "json", False, settings)
    assert _runs_inline(service.checked(small, settings), "json", False, settings)


def _overflowing_between_probes(steps: int, groups: int, at: list[int]) -> dict:
    """Cosines restarting every 10 steps from an lr of 9e307: the closed form's first term
    overflows near each cosine's start (its probes, each segment's last step and the last
    step, are finite), so the values at ``at`` send it to torch's recursion over every step."""
    cosine = {"type": "CosineAnnealingLR", "T_max": 100, "eta_min": 0.0}
    scheduler = {
        "type": "SequentialLR",
        "schedulers": [{"type": "LinearLR", "start_factor": 0.5, "total_iters": 9}] + [cosine] * 4,
        "milestones": [10, 20, 30, 40],
    }
    return body(scheduler, {"at": at}, steps=steps, param_groups=[{"lr": 9e307}] * groups)


def test_a_sampled_closed_form_that_needs_the_scan_is_refused_before_it_runs(client):
    """Priced by its 2 points (7515), the request's values show the scan over every step is
    needed (2.4M steps × 16 groups, 1.7e10): refused at once with the cost limit's 422, not
    after seconds of scan at the time limit (5.7 s before); in a batch, its slot alone."""
    import time

    case = _overflowing_between_probes(2_400_000, GROUPS, [15, 20])
    started = time.perf_counter()
    r = client.post("/v1/schedules/compute", json=case)
    elapsed = time.perf_counter() - started
    detail = refused_for_cost(r)
    assert "affine scan" in detail and "2400000 scheduler steps" in detail, detail
    assert elapsed < 2.0, elapsed
    small = body({"type": "StepLR", "step_size": 10}, steps=100, param_groups=[{"lr": LR}])
    started = time.perf_counter()
    r = client.post("/v1/schedules/batch", json={"requests": [case, small]})
    elapsed = time.perf_counter() - started
    assert r.status_code == 200, r.text[:500]
    slots = r.json()["results"]
    assert slots[0]["status"] == 422 and "affine scan" in slots[0]["problem"]["detail"]
    assert slots[1]["status"] == 200 and len(slots[1]["result"]["lr"][0]) == 100
    assert elapsed < 2.0, elapsed


def test_a_scan_that_fits_answers_what_torch_does(client):
    """The same schedule over 2000 steps: the scan fits, and decides as torch does (real
    torch objects stepped by the torch engine): its lr is not finite at step 10."""
    at = [0, 9, 15, 20, 1999]
    case = _overflowing_between_probes(2000, 2, at)
    r = client.post("/v1/schedules/compute", json=case)
    real = client.post("/v1/schedules/compute", json={**case, "engine": "torch"})
    assert real.status_code == r.status_code == 422, (real.text[:300], r.text[:300])
    assert r.json()["detail"] == real.json()["detail"]
    assert "not finite at scheduler step 10" in r.json()["detail"]


def test_a_sampled_cosine_whose_scan_fits_is_answered(client):
    """Huge lrs send a cosine's 100 points at 1M steps × 16 distinct groups to the scan over
    every step (0.4 s of CPU measured, priced 7.8e8 with the scan): answered, in a batch
    too, as before the scan was priced (a price of 18 × log2(steps) a value refused it)."""
    top = 1.7976931348623157e308
    case = body(
        {"type": "CosineAnnealingLR", "T_max": STEPS},
        {"points": 100},
        param_groups=[{"lr": top * (1 - i / 100)} for i in range(GROUPS)],
    )
    r = client.post("/v1/schedules/compute", json=case)
    assert r.status_code == 200, r.text[:500]
    lr = np.asarray(r.json()["lr"])
    assert lr.shape == (GROUPS, 100) and np.isfinite(lr).all()
    assert lr[0, 0] == top
    r = client.post("/v1/schedules/batch", json={"requests": [case]})
    assert r.status_code == 200 and r.json()["results"][0]["status"] == 200, r.text[:500]


@pytest.mark.parametrize("sample", [{"points": 100}, None], ids=["sampled", "unsampled"])
def test_an_additive_scan_is_priced_by_its_passes(client, sample):
    """With eta_min 1e-3 the same cosine's scan adds as well as multiplies: log2(steps)
    passes over every value (5.3 s of CPU measured, priced 1.4e8 at every step, 7.8e8 as a
    running product): refused once its maps show it, sampled or not, in well under a second
    of the 5.7 s it took."""
    import time

    top = 1.7976931348623157e308
    case = body(
        {"type": "CosineAnnealingLR", "T_max": STEPS, "eta_min": 1e-3},
        sample,
        param_groups=[{"lr": top * (1 - i / 100)} for i in range(GROUPS)],
    )
    started = time.perf_counter()
    r = client.post("/v1/schedules/compute?format=npy", json=case)
    detail = refused_for_cost(r)
    assert "affine scan" in detail, detail
    assert time.perf_counter() - started < 2.0
