"""Step counters in compute (and resume): skipped_steps against a real torch loop with AMP's
GradScaler on CPU, accumulation_steps against a real accumulating loop and the training jobs'
trainer, and the samples/tokens counter against megatron-core's own batch-size calculator."""

import warnings

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch.optim import lr_scheduler as S

from service.jobs import specs as job_specs
from service.jobs import trainer
from service.schedules import specs
from service.settings import Settings, using_settings
from tests.problems import assert_problem

ORDER_WARNING = "Detected call of `lr_scheduler.step()` before `optimizer.step()`"

# name: (scheduler spec, warmup, metrics, builder of the same torch scheduler)
CASES = {
    "StepLR": (
        {"type": "StepLR", "step_size": 3, "gamma": 0.5},
        None,
        None,
        lambda o: S.StepLR(o, step_size=3, gamma=0.5),
    ),
    "OneCycleLR": (
        {"type": "OneCycleLR", "max_lr": 0.5, "total_steps": 12},
        None,
        None,
        lambda o: S.OneCycleLR(o, max_lr=0.5, total_steps=12),
    ),
    "warmup+cosine": (
        {"type": "CosineAnnealingLR", "T_max": 8},
        {"type": "linear", "steps": 4, "start_factor": 0.25},
        None,
        lambda o: S.SequentialLR(
            o,
            [S.LinearLR(o, 0.25, 1.0, total_iters=4), S.CosineAnnealingLR(o, T_max=8)],
            milestones=[4],
        ),
    ),
    "ReduceLROnPlateau": (
        {"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 1},
        None,
        [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8],
        lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=1),
    ),
}
N = 12


def gradscaler_loop(make, steps: int, skipped: set[int], metrics=None, accumulation: int = 1):
    """Run a real AMP loop on CPU: GradScaler, inf gradients injected at the ``skipped``
    optimizer steps, the scheduler stepped after every optimizer step. Return the lr seen at
    every micro-batch, whether each optimizer step updated the parameters, and the warnings."""
    weight = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sched = make(opt)
        micro_lrs, applied = [], []
        for i in range(steps):
            opt.zero_grad()
            for _ in range(accumulation):
                micro_lrs.append(opt.param_groups[0]["lr"])
                scale = float("inf") if i in skipped else 1.0
                scaler.scale((weight * scale).sum() / accumulation).backward()
            before = weight.detach().clone()
            scaler.step(opt)
            scaler.update()
            applied.append(not torch.equal(before, weight.detach()))
            if metrics is not None:
                if i < len(metrics):
                    sched.step(metrics[i])
            else:
                sched.step()
    order = [str(w.message) for w in caught if ORDER_WARNING in str(w.message)]
    return micro_lrs, applied, order


def _body(name: str, engine: str, **extra) -> dict:
    scheduler, warmup, metrics, _ = CASES[name]
    body = {"scheduler": scheduler, "steps": N, "engine": engine, **extra}
    if warmup:
        body["warmup"] = warmup
    if metrics:
        body["metrics"] = metrics
    return body


def _post(client, body: dict) -> dict:
    response = client.post("/v1/schedules/compute", json=body)
    assert response.status_code == 200, response.text
    return response.json()


# --------------------------------------------------------------------------- skipped_steps


@pytest.mark.parametrize("skipped", [[0, 5], [3, 7, 8]], ids=["first-skipped", "later"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("engine", ["torch", "vectorized"])
def test_skipped_steps_match_a_gradscaler_loop(client, engine, name, skipped):
    _, _, metrics, make = CASES[name]
    lrs, applied, order = gradscaler_loop(make, N, set(skipped), metrics)
    assert [i for i, done in enumerate(applied) if not done] == skipped  # GradScaler skipped them

    out = _post(client, _body(name, engine, skipped_steps=skipped))
    assert out["engine"] == engine
    # the schedule still advanced: the series per optimizer-step call is the loop's
    np.testing.assert_allclose(out["lr"][0], lrs, rtol=1e-12, atol=0)
    if out["engine"] == "torch":
        assert out["lr"][0] == lrs
    counters = out["counters"]
    assert counters["skipped_steps"] == skipped
    assert counters["skipped"] == [not done for done in applied]
    assert counters["updates"] == list(np.cumsum([0, *applied[:-1]]))
    assert counters["totals"]["updates"] == sum(applied)
    text = " ".join(out["warnings"])
    assert f"{len(skipped)} of {N} optimizer steps skipped" in text
    assert "the schedule still advanced" in text
    # torch's own warning, word for word, exactly when the real loop gave it
    if order:
        assert skipped[0] == 0
        assert f'"{order[0]}"' in text
    else:
        assert ORDER_WARNING not in text
    if not order and skipped[0] == 0:
        assert "nothing warns" in text  # ReduceLROnPlateau does not check the order


def test_skipped_steps_with_epoch_interval_warn_only_when_the_whole_first_epoch_skipped(client):
    def run(skipped):
        body = {
            "scheduler": {"type": "StepLR", "step_size": 1, "gamma": 0.5},
            "steps": 9,
            "interval": "epoch",
            "steps_per_epoch": 3,
            "skipped_steps": skipped,
        }
        return " ".join(_post(client, body)["warnings"])

    def loop(skipped):
        weight = torch.nn.Parameter(torch.ones(1))
        opt = torch.optim.SGD([weight], lr=0.1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sched = S.StepLR(opt, step_size=1, gamma=0.5)
            for i in range(9):
                if i not in skipped:
                    opt.step()  # the emulated skip: optimizer.step() not called
                if (i + 1) % 3 == 0:
                    sched.step()
        return any(ORDER_WARNING in str(w.message) for w in caught)

    assert loop({0, 1, 2}) and ORDER_WARNING in run([0, 1, 2])
    assert not loop({0, 1}) and ORDER_WARNING not in run([0, 1])


def test_megatron_holds_its_schedule_on_skipped_iterations(client):
    """Megatron's train_step calls opt_param_scheduler.step() only when the update succeeded."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    spec = {
        "type": "megatron",
        "lr_decay_style": "cosine",
        "max_lr": 0.1,
        "min_lr": 0.01,
        "lr_warmup_steps": 3,
        "lr_decay_steps": 10,
    }
    skipped = [0, 4, 5]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = OptimizerParamScheduler(
        opt, init_lr=0.0, max_lr=0.1, min_lr=0.01, lr_warmup_steps=3, lr_decay_steps=10,
        lr_decay_style="cosine", start_wd=0.01, end_wd=0.01, wd_incr_steps=10,
        wd_incr_style="constant",
    )  # fmt: skip
    expected = []
    for i in range(N):
        expected.append(opt.param_groups[0]["lr"])
        if i not in skipped:
            sched.step(increment=1)
    for engine in ("torch", "vectorized"):
        out = _post(
            client, {"scheduler": spec, "steps": N, "engine": engine, "skipped_steps": skipped}
        )
        np.testing.assert_allclose(out["lr"][0], expected, rtol=1e-9, atol=0)
        text = " ".join(out["warnings"])
        assert "schedule holds" in text and "does not check the call order" in text


# --------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("name", ["StepLR", "warmup+cosine"])
@pytest.mark.parametrize("engine", ["torch", "vectorized"])
def test_accumulation_indexed_by_micro_batch_and_by_optimizer_step(client, engine, name):
    make = CASES[name][3]
    acc = 3
    micro_lrs, _, _ = gradscaler_loop(make, N, {2}, accumulation=acc)
    by_micro = _post(
        client,
        _body(name, engine, accumulation_steps=acc, index_by="micro_batch", skipped_steps=[2]),
    )
    assert by_micro["steps"] == list(range(N * acc))
    np.testing.assert_allclose(by_micro["lr"][0], micro_lrs, rtol=1e-12, atol=0)
    counters = by_micro["counters"]
    assert counters["index_by"] == "micro_batch"
    assert counters["optimizer_step"] == [j // acc for j in range(N * acc)]
    assert counters["skipped"] == [j // acc == 2 for j in range(N * acc)]
    assert counters["totals"] == {
        "optimizer_steps": N, "updates": N - 1, "micro_batches": N * acc,
        "samples": None, "tokens": None,
    }  # fmt: skip

    by_step = _post(client, _body(name, engine, accumulation_steps=acc))
    assert by_step["counters"]["index_by"] == "optimizer_step"
    np.testing.assert_allclose(by_step["lr"][0], micro_lrs[::acc], rtol=1e-12, atol=0)

    sampled = _post(
        client,
        _body(name, engine, accumulation_steps=acc, index_by="micro_batch", sample={"every": 5}),
    )
    assert sampled["steps"] == list(range(0, N * acc, 5))
    np.testing.assert_allclose(sampled["lr"][0], micro_lrs[::5], rtol=1e-12, atol=0)


def test_accumulation_agrees_with_the_training_jobs(client):
    """A job accumulating 3 batches per optimizer step records the lr of each step: compute
    with the same accumulation_steps gives those lrs, per optimizer step and per micro-batch."""
    spec = job_specs.JobSpec.model_validate(
        {
            "data": {"type": "noisy_sine", "n": 1000, "tau": 4, "noise_std": 0.02, "n_train": 576},
            "scheduler": {"type": "StepLR", "step_size": 5, "gamma": 0.7},
            "epochs": 2,
            "batch_size": 16,
            "accumulation_steps": 3,
        }
    )
    result, _ = trainer.train(spec, torch.device("cpu"))
    steps = result["optimizer_steps"]
    assert steps == 2 * 576 // 48
    body = {
        "scheduler": {"type": "StepLR", "step_size": 5, "gamma": 0.7},
        "steps": steps,
        "accumulation_steps": 3,
        "engine": "torch",
    }
    assert _post(client, body)["lr"][0] == result["lr"]
    micro = _post(client, {**body, "index_by": "micro_batch"})
    assert micro["lr"][0] == [lr for lr in result["lr"] for _ in range(3)]


# --------------------------------------------------------------------------- counter


def megatron_run(steps, global_batch, rampup, mbs=1, dp=1, decrease=False):
    """Megatron's training loop's view of the batch: update the calculator with the consumed
    samples before each iteration, then consume its running global batch."""
    from megatron.core.num_microbatches_calculator import (
        RampupBatchsizeNumMicroBatchesCalculator,
    )

    calc = RampupBatchsizeNumMicroBatchesCalculator(
        global_batch, mbs, dp, decrease, 0, rampup[0], rampup[1], rampup[2]
    )
    consumed, samples, batches, micro = 0, [], [], []
    for _ in range(steps):
        calc.update(consumed, consistency_check=True)
        samples.append(consumed)
        batches.append(calc.get_current_running_global_batch_size())
        micro.append(calc.get())
        consumed += batches[-1]
    return samples, batches, micro, consumed


RAMPS = {
    "gpt3-like": dict(global_batch=256, rampup=[32, 32, 4000], mbs=4, dp=2),
    "fractional-increments": dict(global_batch=103, rampup=[3, 5, 1000]),
    "decrease": dict(global_batch=96, rampup=[16, 16, 700], mbs=3, dp=2, decrease=True),
}


@pytest.mark.parametrize("ramp", list(RAMPS))
def test_rampup_matches_megatrons_calculator(client, ramp):
    cfg = RAMPS[ramp]
    steps = 80
    samples, batches, micro, total = megatron_run(steps, **cfg)
    counter = {
        "type": "tokens",
        "seq_length": 2048,
        "global_batch_size": cfg["global_batch"],
        "rampup_batch_size": cfg["rampup"],
    }
    if "mbs" in cfg:
        counter |= {"micro_batch_size": cfg["mbs"], "data_parallel_size": cfg["dp"]}
    if cfg.get("decrease"):
        counter["decrease_batch_size_if_needed"] = True
    # "what lr at sample s": the step whose batch holds sample s
    queries = [0, samples[7], samples[7] + 1, samples[40] - 1, total - 1]
    counter["at"] = [q * 2048 for q in queries]
    body = {"scheduler": {"type": "CosineAnnealingLR", "T_max": steps}, "steps": steps}
    out = _post(client, {**body, "counter": counter})
    c = out["counters"]
    assert c["samples"] == samples
    assert c["tokens"] == [s * 2048 for s in samples]
    assert c["batch_size"] == batches
    if "mbs" in cfg:
        assert c["micro_batches"] == micro
    assert c["totals"]["samples"] == total and c["totals"]["tokens"] == total * 2048
    assert len(set(batches)) > 2  # it really ramped

    weight = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([weight], lr=0.1)
    sched = S.CosineAnnealingLR(opt, T_max=steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for query, answer in zip(queries, c["at"], strict=True):
        k = max(i for i, s in enumerate(samples) if s <= query)
        assert answer["optimizer_step"] == k
        assert answer["lr"] == [pytest.approx(lrs[k], rel=1e-12)]
        assert answer["tokens"] == query * 2048

    # index by micro-batch with Megatron's num_microbatches per step
    if "mbs" in cfg:
        by_micro = _post(
            client, {**body, "counter": {**counter, "at": None}, "index_by": "micro_batch"}
        )
        expected = [k for k, m in enumerate(micro) for _ in range(m)]
        assert by_micro["counters"]["optimizer_step"] == expected
        assert by_micro["counters"]["totals"]["micro_batches"] == sum(micro)


def test_samples_at_3_2m_on_a_constant_batch(client):
    """A pipeline's question: what lr at sample 3.2M, with 1024 samples per step?"""
    body = {
        "scheduler": {"type": "CosineAnnealingLR", "T_max": 10_000},
        "steps": 10_000,
        "sample": {"points": 3},
        "counter": {"type": "samples", "global_batch_size": 1024, "at": [3.2e6]},
    }
    torch_out = _post(client, {**body, "engine": "torch"})
    vec_out = _post(client, {**body, "engine": "vectorized"})
    step = int(3.2e6 // 1024)
    for out in (torch_out, vec_out):
        assert out["counters"]["at"][0]["optimizer_step"] == step == 3125
        assert out["counters"]["samples"] == [0, 5000 * 1024, 9999 * 1024]
    full = _post(client, {**body, "engine": "torch", "sample": {"at": [step]}})
    assert torch_out["counters"]["at"][0]["lr"] == full["lr"][0]
    assert vec_out["counters"]["at"][0]["lr"][0] == pytest.approx(full["lr"][0][0], rel=1e-12)
    # the answer for the sampled indices is unchanged by asking
    plain = _post(client, {k: v for k, v in body.items() if k != "counter"} | {"engine": "torch"})
    assert plain["lr"] == torch_out["lr"] and plain["summary"] == torch_out["summary"]
    assert plain["counters"] is None


# --------------------------------------------------------------------------- other routes


def test_get_form_and_batch_take_the_counters(client):
    post = _post(
        client,
        {
            "scheduler": {"type": "StepLR", "step_size": 2},
            "steps": 6,
            "skipped_steps": [0, 2],
            "accumulation_steps": 2,
            "index_by": "micro_batch",
            "counter": {
                "type": "tokens", "global_batch_size": 4, "seq_length": 8, "at": [0, 33, 191],
            },
        },
    )  # fmt: skip
    get = client.get(
        "/v1/schedules/StepLR?step_size=2&steps=6&skipped_steps=0,2&accumulation_steps=2"
        "&index_by=micro_batch&counter=tokens&global_batch_size=4&seq_length=8&at=0,33,191"
    )
    assert get.status_code == 200, get.text
    assert get.json() == post
    assert [a["optimizer_step"] for a in post["counters"]["at"]] == [0, 1, 5]
    batch = client.post(
        "/v1/schedules/batch",
        json={"requests": [{"scheduler": {"type": "StepLR", "step_size": 2}, "steps": 6,
                            "skipped_steps": [0, 2], "accumulation_steps": 2,
                            "index_by": "micro_batch",
                            "counter": {"type": "tokens", "global_batch_size": 4,
                                        "seq_length": 8, "at": [0, 33, 191]}}]},
    )  # fmt: skip
    assert batch.status_code == 200
    assert batch.json()["results"][0]["result"] == post


def test_batch_stacks_counter_specs_and_answers_what_compute_answers(client):
    megatron = {
        "type": "megatron", "lr_decay_style": "cosine", "max_lr": 0.1, "min_lr": 0.01,
        "lr_warmup_steps": 3, "lr_decay_steps": 10,
    }  # fmt: skip
    step = {"type": "StepLR", "step_size": 2}
    bodies = [
        {"scheduler": megatron, "steps": 12, "skipped_steps": [0, 4]},
        {"scheduler": megatron, "steps": 12, "skipped_steps": [1, 2, 3]},
        {"scheduler": megatron, "steps": 12},
        {"scheduler": step, "steps": 12, "counter": {"type": "samples", "global_batch_size": 4,
                                                     "at": [5, 40]}},
        {"scheduler": step, "steps": 12, "counter": {"type": "samples", "global_batch_size": 4,
                                                     "at": [1]}},
        {"scheduler": step, "steps": 4, "accumulation_steps": 3, "index_by": "micro_batch"},
    ]  # fmt: skip
    batch = client.post("/v1/schedules/batch", json={"requests": bodies}).json()["results"]
    for body, slot in zip(bodies, batch, strict=True):
        assert slot["result"] == _post(client, body)


def test_plots_mark_skipped_steps_and_name_the_micro_batch_axis(client):
    body = {"scheduler": {"type": "StepLR", "step_size": 3}, "steps": 12}
    skipped = client.post(
        "/v1/schedules/compute?format=svg", json={**body, "skipped_steps": [0, 5]}
    )
    assert skipped.status_code == 200 and "skipped by AMP (lr not applied)" in skipped.text
    micro = client.post(
        "/v1/schedules/compute?format=svg",
        json={**body, "accumulation_steps": 2, "index_by": "micro_batch"},
    )
    assert ">micro-batch<" in micro.text and "skipped by AMP" not in micro.text
    plain = client.post("/v1/schedules/compute?format=svg", json=body)
    assert ">optimizer step<" in plain.text


def test_csv_carries_the_counters_after_the_lr(client):
    body = {
        "scheduler": {"type": "StepLR", "step_size": 2},
        "steps": 6,
        "skipped_steps": [0, 3],
        "accumulation_steps": 2,
        "index_by": "micro_batch",
        "counter": {"type": "tokens", "global_batch_size": 4, "seq_length": 8},
    }
    data = _post(client, body)
    csv = client.post("/v1/schedules/compute?format=csv", json=body)
    assert csv.status_code == 200
    lines = csv.text.splitlines()
    assert lines[0] == "step,lr,optimizer_step,skipped,updates,samples,tokens,batch_size"
    c = data["counters"]
    for i, line in enumerate(lines[1:]):
        cells = line.split(",")
        assert int(cells[0]) == data["steps"][i] and float(cells[1]) == data["lr"][0][i]
        assert [int(v) for v in cells[2:]] == [
            c["optimizer_step"][i], int(c["skipped"][i]), c["updates"][i], c["samples"][i],
            c["tokens"][i], c["batch_size"][i],
        ]  # fmt: skip


def test_resume_reports_counters_and_what_skips_do_to_a_resume(client):
    response = client.post(
        "/v1/schedules/resume",
        json={
            "spec": {
                "scheduler": {"type": "StepLR", "step_size": 3},
                "steps": 10,
                "skipped_steps": [0, 4],
                "counter": {"type": "samples", "global_batch_size": 32, "at": [100]},
            },
            "resume_at": 6,
            "recipes": ["state_dict"],
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["counters"]["updates"] == [0, 0, 1, 2, 3, 3, 4, 5, 6, 7]
    assert body["counters"]["at"][0] == {
        "samples": 100.0, "optimizer_step": 3, "lr": [body["uninterrupted"][0][3]],
    }  # fmt: skip
    assert any("Adam's state['step']) is 4, not 6" in w for w in body["warnings"])
    refused = client.post(
        "/v1/schedules/resume",
        json={"spec": {"scheduler": {"type": "StepLR", "step_size": 3}, "steps": 10,
                       "index_by": "micro_batch"}, "resume_at": 6},
    )  # fmt: skip
    problem = assert_problem(refused, 422, "invalid-spec", "per optimizer step")
    assert problem["errors"][0]["loc"] == ["body", "spec", "index_by"]


# --------------------------------------------------------------------------- bad input

BASE = {"scheduler": {"type": "StepLR", "step_size": 2}, "steps": 10}
BAD = {
    "skipped beyond steps": (
        {"skipped_steps": [3, 10]}, "skipped_steps[1]=10 is beyond", ["body", "skipped_steps", 1]
    ),
    "negative skipped": ({"skipped_steps": [-1]}, "greater than or equal to 0", None),
    "accumulation 0": ({"accumulation_steps": 0}, "accumulation_steps=0 is below 1", None),
    "index_by typo": ({"index_by": "microbatch"}, "micro_batch", None),
    "at beyond": (
        {"counter": {"type": "samples", "global_batch_size": 8, "at": [80]}},
        "counter.at[0]=80 samples is beyond the run",
        ["body", "counter", "at", 0],
    ),
    "tokens without seq_length": (
        {"counter": {"type": "tokens", "global_batch_size": 8}}, "seq_length", None
    ),
    "start above global": (
        {"counter": {"type": "samples", "global_batch_size": 8, "rampup_batch_size": [16, 8, 100]}},
        "larger than global_batch_size",
        ["body", "counter", "rampup_batch_size"],
    ),
    "increment does not divide": (
        {"counter": {"type": "samples", "global_batch_size": 64, "rampup_batch_size": [16, 10, 100]}},
        "not divisible by the increment",
        None,
    ),
    "no ramp": (
        {"counter": {"type": "samples", "global_batch_size": 16, "rampup_batch_size": [16, 8, 100]}},
        "nothing to ramp up",
        None,
    ),
    "rampup not three": (
        {"counter": {"type": "samples", "global_batch_size": 16, "rampup_batch_size": [8, 8]}},
        "at least 3",
        None,
    ),
    "batch not divisible": (
        {"counter": {"type": "samples", "global_batch_size": 60, "micro_batch_size": 8}},
        "not divisible by micro_batch_size × data_parallel_size = 8",
        None,
    ),
    "both accumulations": (
        {"accumulation_steps": 2,
         "counter": {"type": "samples", "global_batch_size": 64, "micro_batch_size": 8}},
        "not both",
        None,
    ),
    "unknown counter field": (
        {"counter": {"type": "samples", "global_batch_size": 8, "seq_len": 4}}, "seq_len", None
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_counters_are_422_problems_saying_what_to_change(client, case):
    extra, fragment, loc = BAD[case]
    response = client.post("/v1/schedules/compute", json={**BASE, **extra})
    body = assert_problem(response, 422)
    assert fragment in body["detail"] or any(fragment in e["msg"] for e in body["errors"]), body
    if loc is not None:
        assert body["errors"][0]["loc"] == loc


def test_get_form_errors_name_the_query_parameter(client):
    base = "/v1/schedules/StepLR?step_size=2&steps=6&"
    cases = {
        "skipped_steps=3,6": ["query", "skipped_steps"],
        "accumulation_steps=0": ["query", "accumulation_steps"],
        "global_batch_size=8&rampup_batch_size=16,8,100": ["query", "rampup_batch_size"],
        "global_batch_size=8&at=-1": ["query", "at"],
        "global_batch_size=8&at=48": ["query", "at"],
        "counter=tokens&global_batch_size=4": ["query", "seq_length"],
    }
    for query, loc in cases.items():
        body = assert_problem(client.get(base + query), 422)
        assert body["errors"][0]["loc"] == loc, (query, body)


def test_megatron_refuses_what_the_service_refuses():
    """The divisibility check is Megatron's own assertion."""
    from megatron.core.num_microbatches_calculator import ConstantNumMicroBatchesCalculator

    with pytest.raises(AssertionError, match="not divisible"):
        ConstantNumMicroBatchesCalculator(60, 8, 1, False, 0)


def test_list_limits_come_from_settings():
    small = Settings(
        max_skipped_steps=2, max_accumulation_steps=4, max_counter_queries=1,
        max_rampup_increments=3,
    )  # fmt: skip
    cases = [
        ({"skipped_steps": [0, 1, 2]}, "LRS_MAX_SKIPPED_STEPS"),
        ({"accumulation_steps": 5}, "LRS_MAX_ACCUMULATION_STEPS"),
        ({"counter": {"type": "samples", "global_batch_size": 8, "at": [1, 2]}},
         "LRS_MAX_COUNTER_QUERIES"),
        ({"counter": {"type": "samples", "global_batch_size": 40,
                      "rampup_batch_size": [8, 8, 100]}}, "LRS_MAX_RAMPUP_INCREMENTS"),
    ]  # fmt: skip
    with using_settings(small):
        for extra, name in cases:
            with pytest.raises(ValidationError, match=name):
                specs.ScheduleRequest.model_validate({**BASE, **extra})


def test_micro_batch_series_is_bounded(client):
    response = client.post(
        "/v1/schedules/compute",
        json={
            "scheduler": {"type": "StepLR", "step_size": 2},
            "steps": 1_000_000,
            "accumulation_steps": 64,
            "index_by": "micro_batch",
            "sample": {"points": 10},
        },
    )
    assert_problem(response, 422, "limit-exceeded", "LRS_VECTORIZED_MAX_STEPS")
