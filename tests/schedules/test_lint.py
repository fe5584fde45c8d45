"""POST /v1/schedules/lint: codes, the steps where they bite (checked against the real
libraries stepped here), compute's warnings from the same source, and bad input."""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as S

from service.schedules.codes import CODES
from tests.problems import assert_problem
from tests.schedules.test_caveats import test_surprising_but_legal_specs_are_warned_about as _w

DOCS = Path(__file__).resolve().parents[2] / "docs" / "lint.md"


def lint(client, body: dict) -> list[dict]:
    r = client.post("/v1/schedules/lint", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()["findings"]


def by_code(findings: list[dict]) -> dict[str, dict]:
    return {f["code"]: f for f in findings}


def torch_series(make, n: int, lr: float = 0.1) -> list[float]:
    """lr of optimizer steps 0..n-1 of the real torch scheduler ``make(optimizer)``."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = make(opt)
        for i in range(n):
            out.append(opt.param_groups[0]["lr"])
            if i + 1 < n:
                sched.step()
    return out


def first_rise(values, after: int = 0) -> int:
    return next(k for k in range(after + 1, len(values)) if values[k] > values[k - 1])


def first_change(values) -> int:
    return next(k for k in range(1, len(values)) if values[k] != values[k - 1])


# --------------------------------------------------------------------------- torch


def test_cosine_past_t_max_rises_where_torch_does(client):
    findings = lint(client, {"scheduler": {"type": "CosineAnnealingLR", "T_max": 40}, "steps": 120})
    codes = by_code(findings)
    assert list(codes) == ["cosine-rises-after-t-max", "last-epoch-resume-chainable"]
    rise = codes["cosine-rises-after-t-max"]
    real = torch_series(lambda o: S.CosineAnnealingLR(o, T_max=40), 120)
    assert rise["step"] == first_rise(real) == 41
    assert rise["kind"] == "caveat" and rise["see"].startswith("https://pytorch.org/docs/")
    assert codes["last-epoch-resume-chainable"]["step"] == 1
    assert codes["last-epoch-resume-chainable"]["kind"] == "hazard"


def first_wrong_resume(make, n: int = 40) -> int | None:
    """The first step k at which the real torch scheduler ``make(optimizer, last_epoch)``,
    rebuilt with last_epoch=k-1 on a fresh optimizer with initial_lr set (as resume scripts
    do), gives another lr than the uninterrupted run at k, k+1 or k+2; None when none does."""
    real = torch_series(lambda o: make(o, -1), n + 3)
    for k in range(1, n):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        opt.param_groups[0]["initial_lr"] = 0.1
        got = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sched = make(opt, k - 1)
            for _ in range(3):
                got.append(opt.param_groups[0]["lr"])
                sched.step()
        if got != pytest.approx(real[k : k + 3], rel=1e-12):
            return k
    return None


RESUMES = {
    "StepLR": ({"type": "StepLR", "step_size": 10, "gamma": 0.5},
               lambda o, e: S.StepLR(o, step_size=10, gamma=0.5, last_epoch=e)),
    "MultiStepLR": ({"type": "MultiStepLR", "milestones": [15, 5], "gamma": 0.5},
                    lambda o, e: S.MultiStepLR(o, milestones=[15, 5], gamma=0.5, last_epoch=e)),
    "ExponentialLR": ({"type": "ExponentialLR", "gamma": 0.9},
                      lambda o, e: S.ExponentialLR(o, gamma=0.9, last_epoch=e)),
    "ConstantLR": ({"type": "ConstantLR", "factor": 0.5, "total_iters": 10},
                   lambda o, e: S.ConstantLR(o, factor=0.5, total_iters=10, last_epoch=e)),
    "LinearLR": ({"type": "LinearLR", "start_factor": 0.1, "total_iters": 20},
                 lambda o, e: S.LinearLR(o, start_factor=0.1, total_iters=20, last_epoch=e)),
    "PolynomialLR": ({"type": "PolynomialLR", "total_iters": 30, "power": 2.0},
                     lambda o, e: S.PolynomialLR(o, total_iters=30, power=2.0, last_epoch=e)),
    "CosineAnnealingLR": ({"type": "CosineAnnealingLR", "T_max": 30, "eta_min": 0.001},
                          lambda o, e: S.CosineAnnealingLR(o, T_max=30, eta_min=0.001, last_epoch=e)),
    "MultiplicativeLR": ({"type": "MultiplicativeLR", "lr_lambda": "0.95"},
                         lambda o, e: S.MultiplicativeLR(o, lambda k: 0.95, last_epoch=e)),
    "CyclicLR": ({"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.2, "step_size_up": 5,
                  "cycle_momentum": False},
                 lambda o, e: S.CyclicLR(o, base_lr=0.01, max_lr=0.2, step_size_up=5,
                                         cycle_momentum=False, last_epoch=e)),
    "LambdaLR": ({"type": "LambdaLR", "lr_lambda": "0.95 ** epoch"},
                 lambda o, e: S.LambdaLR(o, lambda k: 0.95**k, last_epoch=e)),
    "CosineAnnealingWarmRestarts": ({"type": "CosineAnnealingWarmRestarts", "T_0": 10},
                                    lambda o, e: S.CosineAnnealingWarmRestarts(o, T_0=10, last_epoch=e)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(RESUMES))
def test_a_last_epoch_resume_goes_wrong_from_the_step_torch_shows(client, name):
    spec, make = RESUMES[name]
    codes = by_code(lint(client, {"scheduler": spec, "steps": 40}))
    found = codes.get("last-epoch-resume-chainable")
    assert (found and found["step"]) == first_wrong_resume(make), found


@pytest.mark.parametrize(
    "name", ["StepLR", "MultiStepLR", "CosineAnnealingLR", "CyclicLR", "LambdaLR"]
)
def test_the_resume_endpoint_agrees_with_the_lint_step(client, name):
    body = {"scheduler": RESUMES[name][0], "steps": 40}
    found = by_code(lint(client, body)).get("last-epoch-resume-chainable")

    def first_difference(at: int):
        r = client.post(
            "/v1/schedules/resume", json={"spec": body, "resume_at": at, "recipes": ["last_epoch"]}
        )
        assert r.status_code == 200, r.text
        return r.json()["recipes"]["last_epoch"]["first_difference"]

    if found is None:
        assert first_difference(3) is None and first_difference(20) is None
        return
    k = found["step"]
    assert first_difference(k) == k
    if k > 1:
        assert first_difference(k - 1) is None


def test_onecycle_rebuilt_with_last_epoch_raises_as_the_finding_says(client):
    body = {"scheduler": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 40}, "steps": 40}
    assert "last-epoch-resume-raises" in by_code(lint(client, body))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    opt.param_groups[0]["initial_lr"] = 0.1
    with pytest.raises(KeyError, match="max_lr"):
        S.OneCycleLR(opt, max_lr=0.1, total_steps=40, last_epoch=9)


def test_cosine_after_a_warmup_and_per_epoch_lands_on_the_optimizer_step(client):
    # warmup W=6 scheduler steps, cosine T_max=10, stepped every 3 optimizer steps
    body = {
        "scheduler": {"type": "CosineAnnealingLR", "T_max": 10},
        "warmup": {"type": "linear", "steps": 6, "start_factor": 0.1},
        "steps": 90,
        "interval": "epoch",
        "steps_per_epoch": 3,
    }
    codes = by_code(lint(client, body))
    per_epoch = torch_series(
        lambda o: S.SequentialLR(
            o, [S.LinearLR(o, start_factor=0.1, total_iters=6), S.CosineAnnealingLR(o, T_max=10)],
            milestones=[6],
        ),
        30,
    )  # fmt: skip
    per_step = [per_epoch[k // 3] for k in range(90)]
    assert codes["cosine-rises-after-t-max"]["step"] == first_rise(per_step, after=6 * 3) == 51
    computed = client.post("/v1/schedules/compute", json=body).json()["lr"][0]
    assert computed == pytest.approx(per_step, rel=1e-12)


def test_sequential_warmup_resumed_with_last_epoch_is_a_hazard_torch_really_shows(client):
    body = {
        "scheduler": {
            "type": "SequentialLR",
            "schedulers": [
                {"type": "LinearLR", "start_factor": 0.1, "total_iters": 5},
                {"type": "ExponentialLR", "gamma": 0.9},
            ],
            "milestones": [5],
        },
        "steps": 20,
    }
    findings = lint(client, body)
    codes = by_code(findings)
    assert set(codes) == {"last-epoch-resume-restarts-children"}
    hazard = codes["last-epoch-resume-restarts-children"]
    assert hazard["see"] == "https://github.com/pytorch/pytorch/issues/162591"
    assert hazard["kind"] == "hazard" and hazard["step"] is None

    def build(o, last_epoch=-1):
        a = S.LinearLR(o, start_factor=0.1, total_iters=5, last_epoch=last_epoch)
        b = S.ExponentialLR(o, gamma=0.9, last_epoch=last_epoch)
        return S.SequentialLR(o, [a, b], milestones=[5], last_epoch=last_epoch)

    real = torch_series(build, 20)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    opt.param_groups[0]["initial_lr"] = 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build(opt, last_epoch=7)  # resume at step 8
    assert opt.param_groups[0]["lr"] != pytest.approx(real[8], rel=1e-6)


def test_the_services_warmup_is_a_sequential_lr_and_amp_skips_hit_it(client):
    body = {
        "scheduler": {"type": "StepLR", "step_size": 30},
        "warmup": {"type": "linear", "steps": 10, "start_factor": 0.0},
        "steps": 100,
    }
    codes = by_code(lint(client, body))
    assert set(codes) == {
        "last-epoch-resume-restarts-children",
        "amp-skipped-steps-advance-schedule",
    }
    amp = codes["amp-skipped-steps-advance-schedule"]
    assert amp["step"] == 0 and amp["see"] == "https://github.com/pytorch/pytorch/issues/55585"
    # what it claims, with a real GradScaler: step 0's gradients overflow, the optimizer step
    # is skipped, the warmup advances anyway and torch warns
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = S.LinearLR(opt, start_factor=1e-3, total_iters=10)
    scaler = torch.amp.GradScaler("cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scaler.scale((p * float("inf")).sum()).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
    assert torch.equal(p.detach(), torch.zeros(1))  # no update
    assert opt.param_groups[0]["lr"] > 1e-4  # but the schedule moved on
    assert any("before `optimizer.step()`" in str(w.message) for w in caught)


@pytest.mark.parametrize(
    "kwargs", [
        {"total_steps": 100},
        {"total_steps": 77},
        {"total_steps": 50, "pct_start": 0.25, "anneal_strategy": "linear"},
        {"total_steps": 64, "pct_start": 0.35, "three_phase": True},
        {"epochs": 4, "steps_per_epoch": 9},
    ],
)  # fmt: skip
def test_onecycle_peak_and_the_step_where_torch_raises(client, kwargs):
    total = kwargs.get("total_steps") or kwargs["epochs"] * kwargs["steps_per_epoch"]
    codes = by_code(
        lint(client, {"scheduler": {"type": "OneCycleLR", "max_lr": 0.1, **kwargs}, "steps": total})
    )
    assert {"onecycle-peak-step", "onecycle-raises-past-total-steps"} <= set(codes)
    real = torch_series(lambda o: S.OneCycleLR(o, max_lr=0.1, **kwargs), total + 1)
    assert codes["onecycle-peak-step"]["step"] == int(np.argmax(real))
    raises = codes["onecycle-raises-past-total-steps"]["step"]
    # torch gives lrs 0..total (total step() calls); the next step() raises
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = S.OneCycleLR(opt, max_lr=0.1, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(raises - 1):
            sched.step()
        with pytest.raises(ValueError, match="Tried to step"):
            sched.step()


def test_a_onecycle_request_compute_refuses_is_linted_with_the_step(client):
    body = {"scheduler": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 10}, "steps": 30}
    assert client.post("/v1/schedules/compute", json=body).status_code == 422
    finding = by_code(lint(client, body))["onecycle-raises-past-total-steps"]
    assert finding["step"] == 11 and "this request reaches it" in finding["message"]


def test_a_plateau_without_metrics_is_an_error_finding_not_a_422(client):
    body = {"scheduler": {"type": "ReduceLROnPlateau"}, "steps": 10, "metrics": [1.0, 0.9]}
    assert client.post("/v1/schedules/compute", json=body).status_code == 422
    finding = by_code(lint(client, body))["metrics-missing"]
    assert finding["kind"] == "error" and finding["step"] == 3


def test_a_spec_with_no_caveats_has_no_findings(client):
    clean = {"type": "LambdaLR", "lr_lambda": "0.98 ** epoch"}  # a closed form: resumes right
    assert lint(client, {"scheduler": clean, "steps": 100}) == []
    body = {"scheduler": clean, "steps": 50_000_000}
    assert lint(client, body) == []  # nothing is stepped: far above compute's limits


# --------------------------------------------------------------------------- other libraries


def test_transformers_cosine_rises_where_the_library_does(client):
    from transformers import get_cosine_schedule_with_warmup

    body = {
        "scheduler": {"type": "transformers", "name": "cosine", "num_warmup_steps": 10,
                      "num_training_steps": 100},
        "steps": 160,
    }  # fmt: skip
    finding = by_code(lint(client, body))["hf-cosine-rises-after-training"]
    real = torch_series(lambda o: get_cosine_schedule_with_warmup(o, 10, 100), 160)
    assert finding["step"] == first_rise(real, after=10) == 101
    assert finding["see"].startswith("https://github.com/huggingface/transformers/")


def test_transformers_polynomial_ends_each_group_at_its_own_lr_end(client):
    from transformers import get_polynomial_decay_schedule_with_warmup

    body = {
        "optimizer": {"type": "SGD", "lr": 0.1},
        "param_groups": [{"lr": 0.1}, {"lr": 0.01}],
        "scheduler": {"type": "transformers", "name": "polynomial", "num_warmup_steps": 5,
                      "num_training_steps": 50, "scheduler_specific_kwargs": {"lr_end": 1e-3}},
        "steps": 60,
    }  # fmt: skip
    finding = by_code(lint(client, body))["hf-absolute-lr-per-group"]
    opt = torch.optim.SGD(
        [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (0.1, 0.01)], lr=0.1
    )
    sched = get_polynomial_decay_schedule_with_warmup(opt, 5, 50, lr_end=1e-3)
    group1 = []
    for _ in range(60):
        group1.append(opt.param_groups[1]["lr"])
        opt.step()
        sched.step()
    end = finding["step"]
    assert group1[end] == pytest.approx(1e-4) and group1[end - 1] > 1e-4  # 0.01 * 1e-3 / 0.1
    assert set(group1[end:]) == {group1[end]}


def test_timm_multistep_milestone_lands_one_step_before_torch(client):
    from tests.schedules.families.references import timm_reference

    spec = {"type": "timm", "sched": "multistep", "num_epochs": 10, "decay_milestones": [4, 7]}
    finding = by_code(lint(client, {"scheduler": spec, "steps": 10}))[
        "timm-multistep-one-step-early"
    ]
    timm = timm_reference(spec, [0.1], 10)[0].tolist()
    torch_multistep = torch_series(lambda o: S.MultiStepLR(o, milestones=[4, 7]), 10)
    assert finding["step"] == first_change(timm) == 3
    assert first_change(torch_multistep) == finding["step"] + 1


def test_optax_holds_and_peaks_where_optax_does(client):
    from tests.schedules.families.references import optax_reference

    cosine = {"type": "optax", "schedule": "cosine_decay_schedule", "init_value": 0.1,
              "decay_steps": 40, "alpha": 0.1}  # fmt: skip
    held = by_code(lint(client, {"scheduler": cosine, "steps": 60}))["optax-holds-final-value"]
    real = optax_reference(cosine, 1, 60)[0]
    assert held["step"] == 40
    assert np.all(real[held["step"] :] == real[-1]) and real[held["step"] - 1] != real[-1]

    onecycle = {"type": "optax", "schedule": "cosine_onecycle_schedule", "transition_steps": 100,
                "peak_value": 0.1}  # fmt: skip
    peak = by_code(lint(client, {"scheduler": onecycle, "steps": 100}))["optax-onecycle-peak-step"]
    torch_peak = by_code(
        lint(client, {"scheduler": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 100},
                      "steps": 100})
    )["onecycle-peak-step"]  # fmt: skip
    assert peak["step"] == int(np.argmax(optax_reference(onecycle, 1, 100)[0])) == 30
    assert torch_peak["step"] == peak["step"] - 1


def test_megatron_holds_min_lr_from_where_megatron_does(client):
    from tests.schedules.families.references import megatron_reference

    spec = {"type": "megatron", "lr_decay_style": "cosine", "max_lr": 3e-4, "min_lr": 3e-5,
            "lr_warmup_steps": 10, "lr_decay_steps": 50}  # fmt: skip
    finding = by_code(lint(client, {"scheduler": spec, "steps": 80}))["megatron-holds-min-lr"]
    lr = megatron_reference(spec, 1, 80)[0][0]
    held = next(k for k in range(80) if np.all(lr[k:] == 3e-5))
    assert finding["step"] == held + 1 == 51  # Megatron reaches min_lr at D and holds it after


def test_pytorch_warmup_untuned_reaches_the_full_lr_a_step_early(client):
    import pytorch_warmup

    body = {
        "optimizer": {"type": "Adam", "lr": 1e-3, "betas": [0.9, 0.999]},
        "scheduler": {"type": "ConstantLR", "factor": 1.0, "total_iters": 0},
        "warmup": {"type": "untuned_linear"},
        "steps": 2100,
    }
    finding = by_code(lint(client, body))["pytorch-warmup-untuned-period"]
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3, betas=(0.9, 0.999))
    sched = S.ConstantLR(opt, factor=1.0, total_iters=0)
    warmup = pytorch_warmup.UntunedLinearWarmup(opt)
    lrs = []
    for _ in range(2100):
        lrs.append(opt.param_groups[0]["lr"])
        with warmup.dampening():
            sched.step()
    assert finding["step"] == lrs.index(1e-3) == 1998


# --------------------------------------------------------------------------- one source


@pytest.mark.parametrize("payload", [case[0] for case in _w.pytestmark[0].args[1]])
def test_compute_warnings_are_the_caveat_findings(client, payload):
    warned = client.post("/v1/schedules/compute", json=payload).json()["warnings"]
    findings = lint(client, payload)
    caveats = [f for f in findings if f["kind"] == "caveat"]
    assert list(dict.fromkeys(f["message"] for f in caveats)) == warned
    assert all(f["code"] != "uncoded" for f in findings)


def test_the_docs_table_lists_every_code_with_its_link():
    text = DOCS.read_text()
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \| [a-z]+ \| .*? \| (\S+) \|$", text, re.M))
    assert rows == {c.code: (c.see or "-") for c in CODES.values()}
    for url in rows.values():
        assert url == "-" or re.match(r"https://(github\.com|pytorch\.org|huggingface\.co)/", url)


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_a_problem_like_compute(client):
    r = client.post("/v1/schedules/lint", json={"scheduler": {"type": "StepLR"}, "steps": 10})
    assert_problem(r, 422, None, "step_size")
    r = client.post(
        "/v1/schedules/lint",
        json={"scheduler": {"type": "StepLR", "step_size": 3}, "steps": 10, "stpes": 1},
    )
    assert_problem(r, 422, None, "stpes")
    body = {
        "param_groups": [{}, {}],
        "scheduler": {"type": "optax", "schedule": "constant_schedule", "value": [0.1, 0.2, 0.3]},
        "steps": 10,
    }
    computed = client.post("/v1/schedules/compute", json=body)
    assert_problem(client.post("/v1/schedules/lint", json=body), 422, None, "3 values")
    assert computed.status_code == 422
    r = client.post(
        "/v1/schedules/lint", content=b"{", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")


def test_every_catalog_example_is_linted_with_computes_warnings(client):
    for entry in client.get("/v1/schedulers").json()["schedulers"]:
        example = entry["example"]
        warned = client.post("/v1/schedules/compute", json=example).json()["warnings"]
        findings = lint(client, example)
        caveats = [f["message"] for f in findings if f["kind"] == "caveat"]
        assert list(dict.fromkeys(caveats)) == warned, entry["type"]
        for f in findings:
            assert f["code"] in CODES and f["code"] != "uncoded", f
            assert f["see"] == CODES[f["code"]].see
            assert f["step"] is None or f["step"] >= 0


def test_the_openapi_examples_are_answered(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/schedules/lint"]["post"]["requestBody"]["content"]
    examples = body["application/json"]["examples"]
    assert len(examples) >= 5
    for name, example in examples.items():
        findings = lint(client, example["value"])
        assert (findings == []) == (name == "clean"), (name, findings)


def test_a_timm_cycle_limit_whose_length_overflows_is_no_500(client):
    spec = {"type": "timm", "sched": "cosine", "num_epochs": 10, "cycle_mul": 2.0,
            "cycle_limit": 100_000}  # fmt: skip
    body = {"scheduler": spec, "steps": 20}
    assert lint(client, body) == []  # its cycles never end: nothing is held
    assert client.post("/v1/schedules/compute", json=body).status_code == 200


COUNTED = [
    {"scheduler": {"type": "StepLR", "step_size": 10}, "steps": 50, "skipped_steps": [0, 3, 3]},
    {"scheduler": {"type": "ExponentialLR", "gamma": 0.9}, "steps": 50, "skipped_steps": [4, 9],
     "interval": "epoch", "steps_per_epoch": 2},
    {"scheduler": {"type": "megatron", "lr_decay_style": "cosine", "max_lr": 3e-4,
                   "lr_warmup_steps": 10, "lr_decay_steps": 50}, "steps": 50,
     "skipped_steps": [2, 7]},
    {"scheduler": {"type": "timm", "sched": "cosine", "num_epochs": 10}, "steps": 10,
     "skipped_steps": [0]},
    {"scheduler": {"type": "megatron", "lr_decay_style": "cosine", "max_lr": 3e-4,
                   "lr_warmup_steps": 10, "lr_decay_steps": 50}, "steps": 50,
     "counter": {"type": "samples", "global_batch_size": 64, "rampup_batch_size": [16, 16, 320]}},
]  # fmt: skip


@pytest.mark.parametrize("body", COUNTED)
def test_the_step_counters_notes_are_coded_findings(client, body):
    warned = client.post("/v1/schedules/compute", json=body).json()["warnings"]
    assert warned
    findings = lint(client, body)
    assert [f["message"] for f in findings if f["kind"] == "caveat"] == warned
    assert all(f["code"] != "uncoded" for f in findings), findings
    codes = by_code(findings)
    skipped = body.get("skipped_steps")
    if skipped:
        said = codes.get("amp-skipped-steps-advance-schedule") or codes.get(
            "megatron-holds-on-skipped-steps"
        )
        assert said["step"] == min(skipped) and said["kind"] == "caveat"


def test_the_torch_order_warning_is_at_the_first_scheduler_step(client):
    body = {"scheduler": {"type": "StepLR", "step_size": 10}, "steps": 20, "skipped_steps": [0]}
    finding = by_code(lint(client, body))["amp-step-order-warning"]
    assert finding["step"] == 1
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = S.StepLR(opt, step_size=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sched.step()  # optimizer step 0 skipped: no optimizer.step() before it
        assert any("before `optimizer.step()`" in str(w.message) for w in caught)
        caught.clear()
        opt.step()
        sched.step()
    assert not any("before `optimizer.step()`" in str(w.message) for w in caught)


def test_a_plateau_after_a_warmup_is_not_called_a_sequential_lr(client):
    body = {
        "scheduler": {"type": "ReduceLROnPlateau", "patience": 1},
        "warmup": {"type": "linear", "steps": 3},
        "steps": 8,
        "metrics": [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9],
    }
    codes = by_code(lint(client, body))
    assert "plateau-after-warmup" in codes and codes["plateau-after-warmup"]["kind"] == "caveat"
    assert "last-epoch-resume-restarts-children" not in codes
