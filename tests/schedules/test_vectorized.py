"""The vectorized engine agrees with the torch engine and with real torch schedulers.

Parity: max relative error <= 1e-9 (absolute <= 1e-12 near zero), the same steps for every
jump, and the same 422 for everything torch refuses.
"""

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as L
from torch.optim.swa_utils import SWALR

from service.schedules import registry, service, specs
from service.settings import Settings
from tests.schedules.helpers import torch_loop
from tests.schedules.test_torch_engine import CASES as TORCH_CASES

SGD_M = {"type": "SGD", "lr": 0.1, "momentum": 0.9}
ADAM = {"type": "Adam", "lr": 0.01}
TWO_GROUPS = [{"lr": 0.1}, {"lr": 0.01}]


def case(name: str, scheduler: dict[str, Any], steps: int = 300, **extra: Any) -> Any:
    return pytest.param({"scheduler": scheduler, "steps": steps, **extra}, id=name)


def cosine(t_max: int, eta_min: float = 0.0) -> dict[str, Any]:
    return {"type": "CosineAnnealingLR", "T_max": t_max, "eta_min": eta_min}


def cyclic(**kw: Any) -> dict[str, Any]:
    return {"type": "CyclicLR", "base_lr": 0.001, "max_lr": 0.1, **kw}


PARITY = [
    # leaves, several parameter sets each
    case("lambda-exp", {"type": "LambdaLR", "lr_lambda": "0.95 ** epoch"}),
    case("lambda-cond", {"type": "LambdaLR", "lr_lambda": "epoch / 10 if epoch < 10 else 1"}),
    case(
        "lambda-per-group",
        {"type": "LambdaLR", "lr_lambda": ["0.9 ** epoch", "1 / (1 + epoch)"]},
        param_groups=TWO_GROUPS,
    ),
    case("multiplicative", {"type": "MultiplicativeLR", "lr_lambda": "0.95"}),
    case(
        "multiplicative-cond",
        {"type": "MultiplicativeLR", "lr_lambda": "0.99 if epoch < 100 else 1.001"},
    ),
    case("step", {"type": "StepLR", "step_size": 30, "gamma": 0.65}),
    case("step-1", {"type": "StepLR", "step_size": 1, "gamma": 0.9}, 200),
    case("step-grow", {"type": "StepLR", "step_size": 7, "gamma": 1.5}, 200),
    case(
        "multistep-seed",
        {"type": "MultiStepLR", "milestones": [200, 300, 320, 340, 200], "gamma": 0.8},
        400,
    ),
    case("multistep-zero-neg", {"type": "MultiStepLR", "milestones": [0, 5, -3, 5]}, 50),
    case("constant", {"type": "ConstantLR", "factor": 0.1, "total_iters": 40}),
    case("constant-default", {"type": "ConstantLR"}, 20),
    case("constant-0-iters", {"type": "ConstantLR", "factor": 0.3, "total_iters": 0}, 20),
    case("linear", {"type": "LinearLR", "start_factor": 0.01, "total_iters": 100}),
    case(
        "linear-down",
        {"type": "LinearLR", "start_factor": 0.5, "end_factor": 0.1, "total_iters": 100},
    ),
    case("linear-0-iters", {"type": "LinearLR", "start_factor": 0.5, "total_iters": 0}, 20),
    case("exponential", {"type": "ExponentialLR", "gamma": 0.98}),
    case("exponential-long", {"type": "ExponentialLR", "gamma": 0.9999}, 20000),
    case("polynomial", {"type": "PolynomialLR", "total_iters": 100, "power": 2.0}),
    case("polynomial-sqrt", {"type": "PolynomialLR", "total_iters": 250, "power": 0.5}),
    case("polynomial-0-iters", {"type": "PolynomialLR", "total_iters": 0}, 20),
    case("cosine", cosine(150)),
    case("cosine-past-tmax", cosine(37, 0.01), 1000),
    case("cosine-long", cosine(5000, 1e-5), 20000),
    case("warm-restarts", {"type": "CosineAnnealingWarmRestarts", "T_0": 7}, 100),
    case(
        "warm-restarts-mult",
        {"type": "CosineAnnealingWarmRestarts", "T_0": 50, "T_mult": 2, "eta_min": 1e-4},
        1000,
    ),
    case(
        "warm-restarts-mult3", {"type": "CosineAnnealingWarmRestarts", "T_0": 3, "T_mult": 3}, 500
    ),
    case("cyclic", cyclic(step_size_up=50), 1000, optimizer=SGD_M, include=["momentum"]),
    case(
        "cyclic-tri2",
        cyclic(step_size_up=50, mode="triangular2"),
        1000,
        optimizer=SGD_M,
        include=["momentum"],
    ),
    case(
        "cyclic-exp-range-adam",
        cyclic(step_size_up=20, step_size_down=30, mode="exp_range", gamma=0.99),
        1000,
        optimizer=ADAM,
        include=["momentum"],
    ),
    case("cyclic-no-momentum", cyclic(step_size_up=10, cycle_momentum=False), 200),
    case(
        "cyclic-groups",
        {
            "type": "CyclicLR",
            "base_lr": [0.001, 0.002],
            "max_lr": [0.1, 0.05],
            "step_size_up": 25,
            "base_momentum": [0.8, 0.7],
        },
        300,
        optimizer=SGD_M,
        param_groups=TWO_GROUPS,
        include=["momentum"],
    ),
    case(
        "onecycle",
        {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 1000},
        1000,
        optimizer=SGD_M,
        include=["momentum"],
    ),
    case(
        "onecycle-3phase-linear",
        {
            "type": "OneCycleLR",
            "max_lr": 0.1,
            "total_steps": 100,
            "three_phase": True,
            "anneal_strategy": "linear",
        },
        100,
        optimizer=ADAM,
        include=["momentum"],
    ),
    case(
        "onecycle-default-total",
        {"type": "OneCycleLR", "max_lr": [0.1, 0.3]},
        500,
        param_groups=TWO_GROUPS,
    ),
    case(
        "onecycle-epochs",
        {
            "type": "OneCycleLR",
            "max_lr": 0.1,
            "epochs": 4,
            "steps_per_epoch": 50,
            "pct_start": 0.25,
        },
        200,
    ),
    case("swa", {"type": "SWALR", "swa_lr": 0.05, "anneal_epochs": 5}),
    case(
        "swa-0", {"type": "SWALR", "swa_lr": 0.05, "anneal_epochs": 0, "anneal_strategy": "linear"}
    ),
    case(
        "swa-long",
        {"type": "SWALR", "swa_lr": [0.05, 0.002], "anneal_epochs": 100},
        300,
        param_groups=TWO_GROUPS,
    ),
    # composites
    case("sequential-seed", specs.SequentialLR.examples[0]),
    case(
        "sequential-four",
        {
            "type": "SequentialLR",
            "schedulers": [
                {"type": "LinearLR", "start_factor": 0.1, "total_iters": 20},
                cosine(50),
                {"type": "MultiplicativeLR", "lr_lambda": "0.99"},
                {"type": "SWALR", "swa_lr": 0.01},
            ],
            "milestones": [20, 80, 150],
        },
    ),
    case(
        "sequential-repeated-milestone",
        {
            "type": "SequentialLR",
            "schedulers": [
                {"type": "ConstantLR", "factor": 0.5},
                {"type": "StepLR", "step_size": 3},
                {"type": "ExponentialLR", "gamma": 0.9},
            ],
            "milestones": [10, 10],
        },
        40,
    ),
    case(
        "sequential-milestone-0",
        {
            "type": "SequentialLR",
            "schedulers": [{"type": "ConstantLR", "factor": 0.5}, cosine(30)],
            "milestones": [0],
        },
        60,
    ),
    case(
        "sequential-onecycle-cyclic",
        {
            "type": "SequentialLR",
            "schedulers": [
                {"type": "OneCycleLR", "max_lr": 0.2, "total_steps": 60},
                cyclic(step_size_up=10),
            ],
            "milestones": [50],
        },
        120,
        optimizer=SGD_M,
        include=["momentum"],
    ),
    case("chained-seed", specs.ChainedScheduler.examples[0]),
    case(
        "chained-four",
        {
            "type": "ChainedScheduler",
            "schedulers": [
                cosine(30, 0.001),
                {"type": "StepLR", "step_size": 25, "gamma": 0.5},
                {"type": "LambdaLR", "lr_lambda": "1.0"},
                {"type": "MultiStepLR", "milestones": [10, 10, 90]},
            ],
        },
        200,
    ),
    case(
        "chained-nested",
        {
            "type": "ChainedScheduler",
            "schedulers": [
                {
                    "type": "SequentialLR",
                    "schedulers": [
                        {"type": "LinearLR", "start_factor": 0.1, "total_iters": 20},
                        cosine(50),
                    ],
                    "milestones": [20],
                },
                {"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 10},
                {"type": "ExponentialLR", "gamma": 0.99},
            ],
        },
        200,
        optimizer={**SGD_M, "momentum": 0.5},
        include=["momentum"],
    ),
    case(
        "chained-swa-poly",
        {
            "type": "ChainedScheduler",
            "schedulers": [
                {"type": "PolynomialLR", "total_iters": 50},
                {"type": "SWALR", "swa_lr": 0.02},
            ],
        },
        100,
    ),
    # warmups
    case(
        "warmup-linear-0-cosine",
        cosine(12500),
        15000,
        optimizer=SGD_M,
        param_groups=TWO_GROUPS,
        warmup={"type": "linear", "steps": 2500, "start_factor": 0.0},
        sample={"every": 100},
    ),
    case(
        "warmup-linear-cosine-eta",
        cosine(100, 0.001),
        500,
        warmup={"type": "linear", "steps": 50, "start_factor": 0.1},
    ),
    case(
        "warmup-constant-step-epoch",
        {"type": "StepLR", "step_size": 10},
        300,
        warmup={"type": "constant", "steps": 5, "factor": 0.1},
        interval="epoch",
        steps_per_epoch=7,
    ),
    case(
        "warmup-onecycle-momentum",
        {"type": "OneCycleLR", "max_lr": 0.5},
        500,
        warmup={"type": "linear", "steps": 50, "start_factor": 0.1},
        optimizer=SGD_M,
        include=["momentum"],
    ),
    case(
        "warmup-onecycle-points",
        {"type": "OneCycleLR", "max_lr": 0.5},
        500,
        warmup={"type": "linear", "steps": 50},
        optimizer=SGD_M,
        include=["momentum"],
        sample={"points": 17},
    ),
    case(
        "warmup-multiplicative",
        {"type": "MultiplicativeLR", "lr_lambda": "0.99"},
        warmup={"type": "linear", "steps": 50},
    ),
    case(
        "warmup-swa",
        {"type": "SWALR", "swa_lr": 0.01, "anneal_epochs": 20},
        warmup={"type": "linear", "steps": 50},
    ),
    case(
        "warmup-constant-0-iters",
        {"type": "ConstantLR", "factor": 0.5, "total_iters": 0},
        warmup={"type": "linear", "steps": 50},
    ),
    case(
        "warmup-cyclic-at",
        cyclic(step_size_up=50),
        300,
        warmup={"type": "constant", "steps": 50},
        optimizer=SGD_M,
        include=["momentum"],
        sample={"at": [0, 1, 49, 50, 51, 299, 100, 7]},
    ),
    case(
        "warmup-restarts-scaled",
        {"type": "CosineAnnealingWarmRestarts", "T_0": 10, "T_mult": 3},
        400,
        warmup={"type": "linear", "steps": 50},
        batch_scaling={"base_batch_size": 256, "batch_size": 1024},
    ),
    case("warmup-longer-than-run", cosine(10), 30, warmup={"type": "linear", "steps": 100}),
    # epoch interval, sampling, groups, momentum
    case(
        "epoch-cosine", cosine(20), 700, interval="epoch", steps_per_epoch=13, sample={"every": 7}
    ),
    case(
        "epoch-onecycle",
        {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 40},
        400,
        interval="epoch",
        steps_per_epoch=10,
        optimizer=SGD_M,
        include=["momentum"],
    ),
    case("points", {"type": "ExponentialLR", "gamma": 0.999}, 5000, sample={"points": 101}),
    case("points-one", cosine(100), 250, sample={"points": 1}),
    case("at-unsorted", {"type": "StepLR", "step_size": 10}, 100, sample={"at": [99, 0, 50, 10]}),
    case(
        "adam-momentum-constant",
        {"type": "StepLR", "step_size": 10},
        50,
        optimizer=ADAM,
        include=["momentum"],
    ),
    case(
        "sgd-groups-momentum",
        cosine(20, 0.001),
        40,
        optimizer=SGD_M,
        param_groups=[{"lr": 0.1}, {"lr": 0.01, "momentum": 0.5}],
        include=["momentum"],
    ),
    case("one-step", cosine(10), 1),
    # metric-driven: an exact scan over the metrics (vectorized/plateau.py)
    case(
        "plateau",
        {"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 2, "cooldown": 1},
        15,
        metrics=[1.0, 0.9, 0.9, 0.9, 0.9, 0.95, 0.89, 0.89, 0.89, 0.89, 0.89, 0.5, 0.5, 0.5],
    ),
    case(
        "plateau-max-abs-groups",
        {
            "type": "ReduceLROnPlateau",
            "mode": "max",
            "threshold_mode": "abs",
            "patience": 0,
            "threshold": 0.05,
            "min_lr": [0.02, 0.0],
            "factor": 0.5,
        },
        31,
        metrics=[0.1 * (i % 4) for i in range(30)],
        param_groups=TWO_GROUPS,
    ),
    case(
        "plateau-after-warmup",
        {"type": "ReduceLROnPlateau", "patience": 1},
        20,
        metrics=[1.0] * 19,
        warmup={"type": "linear", "steps": 5, "start_factor": 0.0},
        optimizer=SGD_M,
        include=["momentum"],
    ),
    case(
        "plateau-per-epoch",
        {"type": "ReduceLROnPlateau", "patience": 1},
        24,
        metrics=[1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5],
        interval="epoch",
        steps_per_epoch=3,
    ),
]

ERRORS = [
    case("constant-factor-0", {"type": "ConstantLR", "factor": 0.0, "total_iters": 10}),
    case("exponential-overflow", {"type": "ExponentialLR", "gamma": 1.5}, 3000),
    case("polynomial-negative-power", {"type": "PolynomialLR", "total_iters": 100, "power": -1.0}),
    case("cyclic-tri2-overflow", cyclic(step_size_up=1, mode="triangular2"), 3000),
    case("cyclic-exp-range-overflow", cyclic(step_size_up=3, mode="exp_range", gamma=1.5), 3000),
    case("onecycle-past-total", {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 100}, 200),
    case(
        "lambda-not-finite",
        {"type": "LambdaLR", "lr_lambda": ["0.9", "1 / (epoch - 100)"]},
        param_groups=TWO_GROUPS,
    ),
    case(
        "linear-restart-0-iters",
        {
            "type": "SequentialLR",
            "schedulers": [
                {"type": "LinearLR", "total_iters": 0},
                {"type": "LinearLR", "total_iters": 0},
            ],
            "milestones": [20],
        },
    ),
    case(
        "polynomial-restart-0-iters",
        {"type": "PolynomialLR", "total_iters": 0},
        warmup={"type": "linear", "steps": 50},
    ),
    case(
        "onecycle-no-momentum",
        {"type": "OneCycleLR", "max_lr": 0.1},
        optimizer={"type": "Adagrad", "lr": 0.1},
    ),
    case(
        "momentum-without-momentum",
        cosine(10),
        20,
        optimizer={"type": "Adagrad", "lr": 0.1},
        include=["momentum"],
    ),
    case(
        "optimizer-argument", cosine(10), 20, optimizer={"type": "SGD", "lr": 0.1, "momentum": -1.0}
    ),
    case(
        "plateau-min-lr-per-group-mismatch",
        {"type": "ReduceLROnPlateau", "min_lr": [0.1, 0.2, 0.3]},
        5,
        metrics=[1.0] * 4,
        param_groups=TWO_GROUPS,
    ),
    case(
        "greedy-factor-0-divides-by-zero",
        {
            "type": "transformers",
            "name": "greedy",
            "scheduler_specific_kwargs": {"factor": 0.0, "patience": 0},
        },
        8,
        metrics=[3.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0],
        warmup={"type": "constant", "steps": 2, "factor": 0.5},
    ),
    case(
        "greedy-max-lr-per-group-mismatch",
        {"type": "transformers", "name": "greedy", "scheduler_specific_kwargs": {"max_lr": [1.0]}},
        5,
        metrics=[1.0] * 4,
        param_groups=TWO_GROUPS,
    ),
]


def post(client, body: dict[str, Any], engine: str, **extra: Any):
    return client.post("/v1/schedules/compute", json={**body, "engine": engine, **extra})


def jumps(values: np.ndarray) -> set[tuple[int, int]]:
    """Return (group, step) of every change larger than 1e-9 relative between neighbours."""
    diff = np.abs(np.diff(values, axis=-1))
    scale = np.maximum(np.abs(values[..., 1:]), np.abs(values[..., :-1]))
    return {tuple(int(v) for v in ix) for ix in np.argwhere(diff > 1e-9 * scale + 1e-15)}


def assert_close(expected: Any, actual: Any) -> float:
    """Assert parity (rel 1e-9, abs 1e-12 near zero) and equal jumps; return the max error."""
    want = np.asarray(expected, dtype=np.float64)
    got = np.asarray(actual, dtype=np.float64)
    assert want.shape == got.shape
    err = np.abs(want - got)
    bad = (err > 1e-9 * np.abs(want)) & (err > 1e-12)
    assert not bad.any(), f"first mismatch at {np.argwhere(bad)[0]}: {want[bad][0]} {got[bad][0]}"
    assert jumps(want) == jumps(got)
    rel = np.where(err > 1e-12, err / np.maximum(np.abs(want), 1e-300), 0.0)
    return float(rel.max(initial=0.0))


def assert_same_schedule(torch_body: dict[str, Any], vec_body: dict[str, Any]) -> None:
    assert vec_body["engine"] == "vectorized"
    assert torch_body["engine"] == "torch"
    assert vec_body["steps"] == torch_body["steps"]
    assert_close(torch_body["lr"], vec_body["lr"])
    if torch_body["momentum"] is None:
        assert vec_body["momentum"] is None
    else:
        assert_close(torch_body["momentum"], vec_body["momentum"])
    assert_close(
        [s["final"] for s in torch_body["summary"]], [s["final"] for s in vec_body["summary"]]
    )
    assert vec_body["warnings"] == torch_body["warnings"]


def test_the_suite_is_big_enough():
    assert len(PARITY) >= 60
    covered = set()
    for param in PARITY:
        covered |= {
            s.type
            for s in specs.walk(specs.ScheduleRequest.model_validate(param.values[0]).scheduler)
        }
    assert covered == set(registry.types("torch"))


@pytest.mark.parametrize("body", PARITY)
def test_parity_with_the_torch_engine(client, body):
    want = post(client, body, "torch")
    got = post(client, body, "vectorized")
    assert want.status_code == 200, want.text
    assert got.status_code == 200, got.text
    assert got.json()["device"] == "cpu"
    assert_same_schedule(want.json(), got.json())


@pytest.mark.parametrize("body", ERRORS)
def test_torch_refusals_are_the_same_422(client, body):
    want = post(client, body, "torch")
    got = post(client, body, "vectorized")
    assert want.status_code == 422, want.text
    assert got.status_code == 422, got.text
    assert got.json()["detail"] == want.json()["detail"]
    assert got.json()["errors"] == want.json()["errors"]


# --------------------------------------------------------------------------- real torch


SPOT_CHECKS = [
    (
        {"scheduler": cosine(30, 0.001), "steps": 100},
        lambda o: L.CosineAnnealingLR(o, T_max=30, eta_min=0.001),
        {},
    ),
    (
        {"scheduler": {"type": "MultiStepLR", "milestones": [5, 5, 9], "gamma": 0.5}, "steps": 20},
        lambda o: L.MultiStepLR(o, milestones=[5, 5, 9], gamma=0.5),
        {},
    ),
    (
        {"scheduler": {"type": "CosineAnnealingWarmRestarts", "T_0": 4, "T_mult": 2}, "steps": 60},
        lambda o: L.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=2),
        {},
    ),
    (
        {
            "scheduler": cyclic(step_size_up=7, mode="triangular2"),
            "steps": 80,
            "optimizer": SGD_M,
            "include": ["momentum"],
        },
        lambda o: L.CyclicLR(o, 0.001, 0.1, step_size_up=7, mode="triangular2"),
        {"record_momentum": True, "groups": [{"momentum": 0.9}]},
    ),
    (
        {
            "scheduler": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 50},
            "steps": 50,
            "optimizer": {"type": "Adam", "lr": 0.01},
            "include": ["momentum"],
        },
        lambda o: L.OneCycleLR(o, max_lr=0.1, total_steps=50),
        {"record_momentum": True, "optimizer": torch.optim.Adam, "lr": 0.01},
    ),
    (
        {"scheduler": {"type": "SWALR", "swa_lr": 0.02, "anneal_epochs": 7}, "steps": 20},
        lambda o: SWALR(o, swa_lr=0.02, anneal_epochs=7),
        {},
    ),
    (
        {"scheduler": specs.ChainedScheduler.examples[0], "steps": 30},
        lambda o: L.ChainedScheduler(
            [L.ConstantLR(o, factor=0.1, total_iters=2), L.ExponentialLR(o, gamma=0.9)]
        ),
        {},
    ),
    (
        {
            "scheduler": cosine(40),
            "warmup": {"type": "linear", "steps": 10},
            "steps": 60,
            "param_groups": TWO_GROUPS,
        },
        lambda o: L.SequentialLR(
            o, [L.LambdaLR(o, lambda e: e / 10), L.CosineAnnealingLR(o, T_max=40)], milestones=[10]
        ),
        {"groups": TWO_GROUPS},
    ),
    (
        {
            "scheduler": {"type": "StepLR", "step_size": 3},
            "steps": 100,
            "interval": "epoch",
            "steps_per_epoch": 7,
            "warmup": {"type": "constant", "steps": 2, "factor": 0.2},
        },
        lambda o: L.SequentialLR(
            o,
            [L.ConstantLR(o, factor=0.2, total_iters=2), L.StepLR(o, step_size=3)],
            milestones=[2],
        ),
        {"steps_per_epoch": 7},
    ),
]


@pytest.mark.parametrize(("body", "make", "loop"), SPOT_CHECKS)
def test_matches_a_real_torch_loop(client, body, make, loop):
    lrs, moms = torch_loop(make, body["steps"], **loop)
    r = post(client, body, "vectorized")
    assert r.status_code == 200, r.text
    assert_close(lrs, r.json()["lr"])
    if loop.get("record_momentum"):
        assert_close(moms, r.json()["momentum"])


# --------------------------------------------------------------------------- long schedules

BIG = Settings(vectorized_max_steps=10_000_000)


def vectorized(body: dict[str, Any]) -> service.Computed:
    return service.compute(
        specs.ScheduleRequest.model_validate({**body, "engine": "vectorized"}), BIG
    )


LONG = [
    (
        {"type": "StepLR", "step_size": 30000, "gamma": 0.7},
        lambda o: L.StepLR(o, step_size=30000, gamma=0.7),
    ),
    (
        {"type": "ExponentialLR", "gamma": 0.999995},
        lambda o: L.ExponentialLR(o, gamma=0.999995),
    ),
    (cosine(1_000_000, 1e-5), lambda o: L.CosineAnnealingLR(o, T_max=1_000_000, eta_min=1e-5)),
    (
        {"type": "LinearLR", "start_factor": 0.001, "total_iters": 600_000},
        lambda o: L.LinearLR(o, start_factor=0.001, total_iters=600_000),
    ),
    (
        {"type": "PolynomialLR", "total_iters": 900_000, "power": 1.5},
        lambda o: L.PolynomialLR(o, total_iters=900_000, power=1.5),
    ),
    (
        {"type": "MultiStepLR", "milestones": [100_000, 500_000, 500_000, 900_000]},
        lambda o: L.MultiStepLR(o, milestones=[100_000, 500_000, 500_000, 900_000]),
    ),
]


def torch_closed_form(make, epochs: list[int]) -> list[float]:
    """Return torch's own closed form (``_get_closed_form_lr``) at each epoch."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make(opt)
    out = []
    for epoch in epochs:
        sched.last_epoch = epoch
        out.append(float(sched._get_closed_form_lr()[0]))
    return out


@pytest.mark.parametrize(("scheduler", "make"), LONG)
def test_one_million_steps_agree_with_torch_closed_forms(scheduler, make):
    n = 1_000_000
    full = vectorized({"scheduler": scheduler, "steps": n})
    sampled = vectorized({"scheduler": scheduler, "steps": n, "sample": {"points": 997}})
    assert full.lr.shape == (1, n)
    np.testing.assert_array_equal(full.lr[:, sampled.indices], sampled.lr)
    assert full.final_lr == sampled.final_lr
    epochs = sampled.indices.tolist()
    assert_close(torch_closed_form(make, epochs), sampled.lr[0])


def test_one_hundred_thousand_steps_agree_with_the_torch_engine(client):
    body = {
        "scheduler": cosine(60_000, 1e-4),
        "steps": 100_000,
        "optimizer": SGD_M,
        "warmup": {"type": "linear", "steps": 5000},
        "sample": {"every": 1},
    }
    want = post(client, body, "torch").json()
    got = post(client, body, "vectorized").json()
    assert_same_schedule(want, got)


def test_ten_million_steps_sampled_are_cheap_and_exact_at_the_ends():
    n = 10_000_000
    body = {
        "scheduler": cosine(n - 100_000),
        "steps": n,
        "warmup": {"type": "linear", "steps": 100_000},
        "sample": {"points": 1000},
    }
    result = vectorized(body)
    assert result.lr.shape == (1, 1000)
    assert result.lr[0, 0] == 0.0
    t_max = n - 100_000
    expected_final = 0.1 * (1 + math.cos(math.pi * (t_max - 1) / t_max)) / 2
    assert_close([expected_final], [result.final_lr[0]])


# --------------------------------------------------------------------------- engine choice


def test_auto_picks_vectorized_and_says_so(client):
    r = client.post("/v1/schedules/compute", json={"scheduler": cosine(10), "steps": 20})
    assert r.status_code == 200
    assert r.json()["engine"] == "vectorized"
    assert r.json()["device"] in ("cpu", "cuda:0")
    assert r.headers["x-engine"] == "vectorized"


def test_auto_scans_reduce_on_plateau_on_the_vectorized_engine(client):
    body = {
        "scheduler": {"type": "ReduceLROnPlateau", "patience": 0},
        "steps": 4,
        "metrics": [1.0, 1.0, 1.0],
    }
    r = client.post("/v1/schedules/compute", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["engine"] == "vectorized"
    assert r.json()["lr"] == [[0.1, 0.1, 0.010000000000000002, 0.0010000000000000002]]
    assert post(client, body, "torch").json()["lr"] == r.json()["lr"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (
            {
                "scheduler": {
                    "type": "SequentialLR",
                    "schedulers": [cosine(5), {"type": "timm", "sched": "plateau"}],
                    "milestones": [5],
                },
                "steps": 10,
                "metrics": [1.0] * 9,
            },
            "timm 'plateau' nested in a SequentialLR",
        ),
        (
            {
                "scheduler": {"type": "timm", "sched": "plateau"},
                "warmup": {"type": "linear", "steps": 3},
                "steps": 10,
                "metrics": [1.0] * 9,
            },
            "warmup_epochs",
        ),
        (
            {
                "scheduler": {
                    "type": "SequentialLR",
                    "schedulers": [cosine(5), cosine(5), cosine(5)],
                    "milestones": [10, 5],
                },
                "steps": 20,
            },
            "not sorted",
        ),
        (
            {
                "scheduler": {
                    "type": "SequentialLR",
                    "schedulers": [cosine(5), specs.ChainedScheduler.examples[0]],
                    "milestones": [5],
                },
                "steps": 20,
            },
            "nested in a SequentialLR",
        ),
    ],
)
def test_vectorized_refuses_what_it_cannot_compute(client, body, why):
    r = post(client, body, "vectorized")
    assert r.status_code == 422
    assert why in r.json()["detail"]
    assert r.json()["errors"][0]["loc"] == ["body", "engine"]
    assert post(client, body, "auto").status_code in (200, 422)


def test_vectorized_steps_limit_is_far_above_the_torch_one(client, settings):
    body = {"scheduler": cosine(1000), "steps": 5_000_000, "sample": {"points": 5}}
    assert post(client, body, "torch").status_code == 422
    r = post(client, body, "auto")
    assert r.status_code == 200
    assert r.json()["steps"] == [0, 1250000, 2500000, 3749999, 4999999]
    too_long = {**body, "steps": settings.vectorized_max_steps + 1}
    r = post(client, too_long, "vectorized")
    assert r.status_code == 422
    assert "LRS_VECTORIZED_MAX_STEPS" in r.json()["detail"]


def test_full_json_beyond_the_point_limit_points_to_sample_or_npy(client, settings):
    body = {"scheduler": cosine(1000), "steps": settings.json_max_points + 1}
    r = post(client, body, "auto")
    assert r.status_code == 422
    assert "sample" in r.json()["detail"] and "npy" in r.json()["detail"]
    r = client.post("/v1/schedules/compute?format=npy", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-npy"


def test_cuda_requested_without_cuda_is_a_422(client):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = post(client, {"scheduler": cosine(10), "steps": 5}, "vectorized", device="cuda")
    assert r.status_code == 422


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("body", PARITY)
def test_parity_on_cuda(client, body):
    want = post(client, body, "torch")
    got = post(client, body, "vectorized", device="cuda")
    assert got.status_code == 200, got.text
    assert got.json()["device"].startswith("cuda")
    assert_same_schedule(want.json(), got.json())


@pytest.mark.parametrize(
    "spec,factory,steps",
    [c[1:] for c in TORCH_CASES if c[1]["type"] != "ReduceLROnPlateau"],
    ids=[c[0] for c in TORCH_CASES if c[1]["type"] != "ReduceLROnPlateau"],
)
def test_every_torch_parity_case_matches_a_real_torch_loop(client, spec, factory, steps):
    """The torch engine's parity cases (each a real torch loop), on the vectorized engine."""
    expected, _ = torch_loop(factory, steps)
    body = {"scheduler": spec, "steps": steps}
    r = post(client, body, "auto")
    assert r.status_code == 200, r.text
    if r.json()["engine"] != "vectorized":
        pytest.skip(f"the vectorized engine does not take this spec: {r.json()['engine']}")
    assert_close(expected, r.json()["lr"])
