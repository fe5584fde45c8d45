"""The torch engine returns exactly what a real torch training loop produces.

Every case builds the optimizer and scheduler with torch in the test, steps them the way a
notebook would, and requires identical floats from the API.
"""

import math

import pytest
import torch
from torch.optim import lr_scheduler as L
from torch.optim.swa_utils import SWALR

from tests.schedules.helpers import torch_loop

# (id, scheduler spec, torch factory, steps)
CASES = [
    ("lambda-exp", {"type": "LambdaLR", "lr_lambda": "0.95 ** epoch"},
     lambda o: L.LambdaLR(o, lambda e: 0.95**e), 60),
    ("lambda-cond", {"type": "LambdaLR", "lr_lambda": "epoch / 10 if epoch < 10 else 0.5 ** ((epoch - 10) // 5)"},
     lambda o: L.LambdaLR(o, lambda e: e / 10 if e < 10 else 0.5 ** ((e - 10) // 5)), 50),
    ("lambda-cos", {"type": "LambdaLR", "lr_lambda": "0.5 * (1 + cos(pi * min(epoch, 40) / 40))"},
     lambda o: L.LambdaLR(o, lambda e: 0.5 * (1 + math.cos(math.pi * min(e, 40) / 40))), 60),
    ("mult-const", {"type": "MultiplicativeLR", "lr_lambda": "0.95"},
     lambda o: L.MultiplicativeLR(o, lambda e: 0.95), 60),
    ("mult-cond", {"type": "MultiplicativeLR", "lr_lambda": "0.9 if epoch % 3 == 0 else 1.0"},
     lambda o: L.MultiplicativeLR(o, lambda e: 0.9 if e % 3 == 0 else 1.0), 40),
    ("mult-sqrt", {"type": "MultiplicativeLR", "lr_lambda": "1 / sqrt(1 + epoch / 100)"},
     lambda o: L.MultiplicativeLR(o, lambda e: 1 / math.sqrt(1 + e / 100)), 40),
    ("step-seed", {"type": "StepLR", "step_size": 30, "gamma": 0.65},
     lambda o: L.StepLR(o, step_size=30, gamma=0.65), 100),
    ("step-default-gamma", {"type": "StepLR", "step_size": 7},
     lambda o: L.StepLR(o, step_size=7), 50),
    ("step-1", {"type": "StepLR", "step_size": 1, "gamma": 0.5},
     lambda o: L.StepLR(o, step_size=1, gamma=0.5), 30),
    ("multistep-seed", {"type": "MultiStepLR", "milestones": [200, 300, 320, 340, 200], "gamma": 0.8},
     lambda o: L.MultiStepLR(o, milestones=[200, 300, 320, 340, 200], gamma=0.8), 400),
    ("multistep-sorted", {"type": "MultiStepLR", "milestones": [10, 20, 30]},
     lambda o: L.MultiStepLR(o, milestones=[10, 20, 30]), 40),
    ("multistep-unsorted", {"type": "MultiStepLR", "milestones": [25, 5, 15], "gamma": 0.3},
     lambda o: L.MultiStepLR(o, milestones=[25, 5, 15], gamma=0.3), 40),
    ("constant-default", {"type": "ConstantLR"}, lambda o: L.ConstantLR(o), 20),
    ("constant-resnet", {"type": "ConstantLR", "factor": 0.1, "total_iters": 400},
     lambda o: L.ConstantLR(o, factor=0.1, total_iters=400), 500),
    ("constant-half", {"type": "ConstantLR", "factor": 0.5, "total_iters": 3},
     lambda o: L.ConstantLR(o, factor=0.5, total_iters=3), 10),
    ("linear-default", {"type": "LinearLR"}, lambda o: L.LinearLR(o), 20),
    ("linear-warm", {"type": "LinearLR", "start_factor": 0.01, "total_iters": 100},
     lambda o: L.LinearLR(o, start_factor=0.01, total_iters=100), 150),
    ("linear-decay", {"type": "LinearLR", "start_factor": 1.0, "end_factor": 0.1, "total_iters": 30},
     lambda o: L.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=30), 40),
    ("exp-seed", {"type": "ExponentialLR", "gamma": 0.98},
     lambda o: L.ExponentialLR(o, gamma=0.98), 300),
    ("exp-fast", {"type": "ExponentialLR", "gamma": 0.5},
     lambda o: L.ExponentialLR(o, gamma=0.5), 40),
    ("exp-grow", {"type": "ExponentialLR", "gamma": 1.01},
     lambda o: L.ExponentialLR(o, gamma=1.01), 40),
    ("poly-default", {"type": "PolynomialLR"}, lambda o: L.PolynomialLR(o), 10),
    ("poly-square", {"type": "PolynomialLR", "total_iters": 50, "power": 2.0},
     lambda o: L.PolynomialLR(o, total_iters=50, power=2.0), 60),
    ("poly-root", {"type": "PolynomialLR", "total_iters": 20, "power": 0.5},
     lambda o: L.PolynomialLR(o, total_iters=20, power=0.5), 30),
    ("cosine-seed", {"type": "CosineAnnealingLR", "T_max": 150, "eta_min": 0},
     lambda o: L.CosineAnnealingLR(o, T_max=150, eta_min=0), 400),
    ("cosine-eta", {"type": "CosineAnnealingLR", "T_max": 10, "eta_min": 0.001},
     lambda o: L.CosineAnnealingLR(o, T_max=10, eta_min=0.001), 45),
    ("cosine-1", {"type": "CosineAnnealingLR", "T_max": 1},
     lambda o: L.CosineAnnealingLR(o, T_max=1), 6),
    ("warm-restarts", {"type": "CosineAnnealingWarmRestarts", "T_0": 10},
     lambda o: L.CosineAnnealingWarmRestarts(o, T_0=10), 45),
    ("warm-restarts-mult", {"type": "CosineAnnealingWarmRestarts", "T_0": 5, "T_mult": 2, "eta_min": 0.001},
     lambda o: L.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2, eta_min=0.001), 80),
    ("warm-restarts-3", {"type": "CosineAnnealingWarmRestarts", "T_0": 1, "T_mult": 3},
     lambda o: L.CosineAnnealingWarmRestarts(o, T_0=1, T_mult=3), 50),
    ("cyclic-tri", {"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 5},
     lambda o: L.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=5), 40),
    ("cyclic-tri2", {"type": "CyclicLR", "base_lr": 0.001, "max_lr": 0.1, "step_size_up": 4,
                     "step_size_down": 6, "mode": "triangular2"},
     lambda o: L.CyclicLR(o, base_lr=0.001, max_lr=0.1, step_size_up=4, step_size_down=6,
                          mode="triangular2"), 60),
    ("cyclic-exp", {"type": "CyclicLR", "base_lr": 0.001, "max_lr": 0.1, "step_size_up": 3,
                    "mode": "exp_range", "gamma": 0.99, "scale_mode": "iterations"},
     lambda o: L.CyclicLR(o, base_lr=0.001, max_lr=0.1, step_size_up=3, mode="exp_range",
                          gamma=0.99), 50),
    ("onecycle", {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 100},
     lambda o: L.OneCycleLR(o, max_lr=0.1, total_steps=100), 100),
    ("onecycle-linear3", {"type": "OneCycleLR", "max_lr": 0.5, "total_steps": 60,
                          "anneal_strategy": "linear", "three_phase": True, "pct_start": 0.4},
     lambda o: L.OneCycleLR(o, max_lr=0.5, total_steps=60, anneal_strategy="linear",
                            three_phase=True, pct_start=0.4), 60),
    ("onecycle-epochs", {"type": "OneCycleLR", "max_lr": 0.2, "epochs": 4, "steps_per_epoch": 10,
                         "div_factor": 10, "final_div_factor": 100},
     lambda o: L.OneCycleLR(o, max_lr=0.2, epochs=4, steps_per_epoch=10, div_factor=10,
                            final_div_factor=100), 40),
    ("swalr-cos", {"type": "SWALR", "swa_lr": 0.05}, lambda o: SWALR(o, swa_lr=0.05), 20),
    ("swalr-linear", {"type": "SWALR", "swa_lr": 0.01, "anneal_epochs": 5, "anneal_strategy": "linear"},
     lambda o: SWALR(o, swa_lr=0.01, anneal_epochs=5, anneal_strategy="linear"), 12),
    ("swalr-zero", {"type": "SWALR", "swa_lr": 0.2, "anneal_epochs": 0},
     lambda o: SWALR(o, swa_lr=0.2, anneal_epochs=0), 5),
    ("sequential", {"type": "SequentialLR", "milestones": [20],
                    "schedulers": [{"type": "ConstantLR", "factor": 0.1, "total_iters": 20},
                                   {"type": "ExponentialLR", "gamma": 0.9}]},
     lambda o: L.SequentialLR(o, [L.ConstantLR(o, factor=0.1, total_iters=20),
                                  L.ExponentialLR(o, gamma=0.9)], milestones=[20]), 50),
    ("sequential-3", {"type": "SequentialLR", "milestones": [5, 15],
                      "schedulers": [{"type": "LinearLR", "start_factor": 0.1, "total_iters": 5},
                                     {"type": "StepLR", "step_size": 3, "gamma": 0.5},
                                     {"type": "CosineAnnealingLR", "T_max": 10}]},
     lambda o: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.1, total_iters=5),
                                  L.StepLR(o, step_size=3, gamma=0.5),
                                  L.CosineAnnealingLR(o, T_max=10)], milestones=[5, 15]), 40),
    ("sequential-zero", {"type": "SequentialLR", "milestones": [0],
                         "schedulers": [{"type": "ExponentialLR", "gamma": 0.5},
                                        {"type": "StepLR", "step_size": 2}]},
     lambda o: L.SequentialLR(o, [L.ExponentialLR(o, gamma=0.5), L.StepLR(o, step_size=2)],
                              milestones=[0]), 10),
    ("chained", {"type": "ChainedScheduler",
                 "schedulers": [{"type": "ConstantLR", "factor": 0.1, "total_iters": 2},
                                {"type": "ExponentialLR", "gamma": 0.9}]},
     lambda o: L.ChainedScheduler([L.ConstantLR(o, factor=0.1, total_iters=2),
                                   L.ExponentialLR(o, gamma=0.9)], o), 20),
    ("chained-3", {"type": "ChainedScheduler",
                   "schedulers": [{"type": "LinearLR", "start_factor": 0.5, "total_iters": 4},
                                  {"type": "StepLR", "step_size": 5, "gamma": 0.5},
                                  {"type": "CosineAnnealingLR", "T_max": 20}]},
     lambda o: L.ChainedScheduler([L.LinearLR(o, start_factor=0.5, total_iters=4),
                                   L.StepLR(o, step_size=5, gamma=0.5),
                                   L.CosineAnnealingLR(o, T_max=20)], o), 30),
    ("sequential-of-chained", {"type": "SequentialLR", "milestones": [10],
                               "schedulers": [{"type": "ChainedScheduler", "schedulers": [
                                   {"type": "ConstantLR", "factor": 0.5, "total_iters": 3},
                                   {"type": "ExponentialLR", "gamma": 0.95}]},
                                   {"type": "PolynomialLR", "total_iters": 10}]},
     lambda o: L.SequentialLR(o, [L.ChainedScheduler([L.ConstantLR(o, factor=0.5, total_iters=3),
                                                      L.ExponentialLR(o, gamma=0.95)], o),
                                  L.PolynomialLR(o, total_iters=10)], milestones=[10]), 25),
    ("chained-with-sequential", {"type": "ChainedScheduler", "schedulers": [
        {"type": "SequentialLR", "milestones": [5], "schedulers": [
            {"type": "LinearLR", "start_factor": 0.2, "total_iters": 5},
            {"type": "ExponentialLR", "gamma": 0.9}]},
        {"type": "MultiStepLR", "milestones": [8, 12]}]},
     lambda o: L.ChainedScheduler([
         L.SequentialLR(o, [L.LinearLR(o, start_factor=0.2, total_iters=5),
                            L.ExponentialLR(o, gamma=0.9)], milestones=[5]),
         L.MultiStepLR(o, milestones=[8, 12])], o), 20),
]  # fmt: skip


@pytest.mark.parametrize("spec,factory,steps", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_matches_a_real_torch_loop(client, spec, factory, steps):
    expected, _ = torch_loop(factory, steps)
    r = client.post(
        "/v1/schedules/compute", json={"scheduler": spec, "steps": steps, "engine": "torch"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["steps"] == list(range(steps))
    assert body["lr"] == expected
    assert body["engine"] == "torch"


def test_every_scheduler_type_has_three_parity_cases():
    from service.schedules import registry

    # ReduceLROnPlateau needs metrics: its four cases are the test_reduce_on_plateau_* tests.
    # Other libraries' families have their parity tests in tests/schedules/families/.
    counts = {t: 0 for t in registry.types("torch") if t != "ReduceLROnPlateau"}
    for _, spec, _, _ in CASES:
        counts[spec["type"]] += 1
    assert {t: n for t, n in counts.items() if n < 3} == {}


def test_two_param_groups_with_their_own_lrs(client):
    groups = [{"lr": 0.1}, {"lr": 0.01, "momentum": 0.5}]
    expected, _ = torch_loop(
        lambda o: L.CosineAnnealingLR(o, T_max=20, eta_min=0.001), 30, groups=groups, momentum=0.9
    )
    r = client.post(
        "/v1/schedules/compute",
        json={
            "engine": "torch",
            "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
            "param_groups": groups,
            "scheduler": {"type": "CosineAnnealingLR", "T_max": 20, "eta_min": 0.001},
            "steps": 30,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["lr"] == expected
    assert len(r.json()["summary"]) == 2


def test_per_group_lists_for_cyclic_lr(client):
    groups = [{"lr": 0.1}, {"lr": 0.05}, {"lr": 0.2}]
    expected, moms = torch_loop(
        lambda o: L.CyclicLR(
            o, base_lr=[0.01, 0.005, 0.02], max_lr=[0.1, 0.05, 0.2], step_size_up=4
        ),
        30,
        groups=groups,
        record_momentum=True,
        momentum=0.9,
    )
    r = client.post(
        "/v1/schedules/compute",
        json={
            "engine": "torch",
            "optimizer": {"type": "SGD", "momentum": 0.9},
            "param_groups": groups,
            "scheduler": {
                "type": "CyclicLR",
                "base_lr": [0.01, 0.005, 0.02],
                "max_lr": [0.1, 0.05, 0.2],
                "step_size_up": 4,
            },
            "steps": 30,
            "include": ["momentum"],
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["lr"] == expected
    assert r.json()["momentum"] == moms


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize(
    "spec,factory",
    [
        (
            {"type": "CyclicLR", "base_lr": 0.001, "max_lr": 0.01, "step_size_up": 5},
            lambda o: L.CyclicLR(o, base_lr=0.001, max_lr=0.01, step_size_up=5),
        ),
        (
            {"type": "OneCycleLR", "max_lr": 0.01, "total_steps": 50, "three_phase": True},
            lambda o: L.OneCycleLR(o, max_lr=0.01, total_steps=50, three_phase=True),
        ),
    ],
    ids=["CyclicLR", "OneCycleLR"],
)
def test_momentum_cycles_like_torch(client, optimizer, spec, factory):
    kwargs = {"momentum": 0.9} if optimizer == "SGD" else {}
    cls = getattr(torch.optim, optimizer)
    expected, moms = torch_loop(
        factory, 50, optimizer=cls, record_momentum=True, lr=0.001, **kwargs
    )
    r = client.post(
        "/v1/schedules/compute",
        json={
            "engine": "torch",
            "optimizer": {"type": optimizer, "lr": 0.001, **kwargs},
            "scheduler": spec,
            "steps": 50,
            "include": ["momentum"],
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["lr"] == expected
    assert r.json()["momentum"] == moms
    assert len(set(r.json()["momentum"][0])) > 2


def test_constant_momentum_is_reported_for_other_schedulers(client):
    r = client.post(
        "/v1/schedules/compute",
        json={
            "engine": "torch",
            "optimizer": {"type": "AdamW", "lr": 0.001, "betas": [0.8, 0.99]},
            "scheduler": {"type": "StepLR", "step_size": 2},
            "steps": 4,
            "include": ["momentum"],
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["momentum"] == [[0.8, 0.8, 0.8, 0.8]]


def test_linear_warmup_from_zero_is_the_seeds_gradual_warmup(client):
    def factory(o):
        warm = L.LambdaLR(o, lambda e: e / 2500)
        main = L.CosineAnnealingLR(o, T_max=12500)
        return L.SequentialLR(o, [warm, main], milestones=[2500])

    expected, _ = torch_loop(factory, 15000)
    r = client.post(
        "/v1/schedules/compute",
        json={
            "engine": "torch",
            "scheduler": {"type": "CosineAnnealingLR", "T_max": 12500},
            "warmup": {"type": "linear", "steps": 2500, "start_factor": 0.0},
            "steps": 15000,
        },
    )
    assert r.status_code == 200, r.text
    lr = r.json()["lr"][0]
    assert lr == expected[0]
    assert lr[0] == 0.0 and lr[1250] == pytest.approx(0.05) and lr[2500] == 0.1


def test_linear_warmup_with_start_factor_uses_linear_lr(client):
    def factory(o):
        warm = L.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=10)
        return L.SequentialLR(o, [warm, L.StepLR(o, step_size=5, gamma=0.5)], milestones=[10])

    expected, _ = torch_loop(factory, 40)
    r = client.post(
        "/v1/schedules/compute",
        json={
            "engine": "torch",
            "scheduler": {"type": "StepLR", "step_size": 5, "gamma": 0.5},
            "warmup": {"type": "linear", "steps": 10, "start_factor": 0.1},
            "steps": 40,
        },
    )
    assert r.json()["lr"] == expected


def test_constant_warmup_is_the_resnet_recipe(client):
    def factory(o):
        warm = L.ConstantLR(o, factor=0.1, total_iters=400)
        return L.SequentialLR(o, [warm, L.MultiStepLR(o, [1000, 1500])], milestones=[400])

    expected, _ = torch_loop(factory, 2000)
    r = client.post(
        "/v1/schedules/compute",
        json={
            "engine": "torch",
            "scheduler": {"type": "MultiStepLR", "milestones": [1000, 1500]},
            "warmup": {"type": "constant", "steps": 400, "factor": 0.1},
            "steps": 2000,
        },
    )
    lr = r.json()["lr"][0]
    assert lr == expected[0]
    assert lr[399] == pytest.approx(0.01) and lr[400] == 0.1


def test_reduce_on_plateau_follows_the_metrics(client):
    metrics = [1.0, 0.9, 0.9, 0.9, 0.9, 0.95, 0.89, 0.89, 0.89, 0.89, 0.89, 0.5, 0.5, 0.5]
    expected, _ = torch_loop(
        lambda o: L.ReduceLROnPlateau(o, factor=0.5, patience=2, cooldown=1),
        len(metrics) + 1,
        metrics=metrics,
    )
    r = client.post(
        "/v1/schedules/compute",
        json={
            "engine": "torch",
            "scheduler": {"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 2, "cooldown": 1},
            "steps": len(metrics) + 1,
            "metrics": metrics,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["lr"] == expected
    assert min(expected[0]) < 0.1


@pytest.mark.parametrize("mode,threshold_mode", [("max", "abs"), ("min", "rel")])
def test_reduce_on_plateau_modes_and_min_lr(client, mode, threshold_mode):
    metrics = [0.1 * (i % 4) for i in range(30)]
    kwargs = dict(mode=mode, threshold_mode=threshold_mode, patience=1, min_lr=0.02, factor=0.5)
    expected, _ = torch_loop(lambda o: L.ReduceLROnPlateau(o, **kwargs), 31, metrics=metrics)
    r = client.post(
        "/v1/schedules/compute",
        json={
            "engine": "torch",
            "scheduler": {"type": "ReduceLROnPlateau", **kwargs},
            "steps": 31,
            "metrics": metrics,
        },
    )
    assert r.json()["lr"] == expected


def test_epoch_interval_steps_the_scheduler_once_per_epoch(client):
    expected, _ = torch_loop(lambda o: L.StepLR(o, step_size=2, gamma=0.5), 47, steps_per_epoch=5)
    r = client.post(
        "/v1/schedules/compute",
        json={
            "engine": "torch",
            "scheduler": {"type": "StepLR", "step_size": 2, "gamma": 0.5},
            "steps": 47,
            "interval": "epoch",
            "steps_per_epoch": 5,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["lr"] == expected
    assert len(r.json()["lr"][0]) == 47


def test_epoch_interval_with_plateau_metrics_per_epoch(client):
    metrics = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    expected, _ = torch_loop(
        lambda o: L.ReduceLROnPlateau(o, patience=1), 24, steps_per_epoch=3, metrics=metrics
    )
    r = client.post(
        "/v1/schedules/compute",
        json={
            "engine": "torch",
            "scheduler": {"type": "ReduceLROnPlateau", "patience": 1},
            "steps": 24,
            "interval": "epoch",
            "steps_per_epoch": 3,
            "metrics": metrics,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["lr"] == expected


@pytest.mark.parametrize(
    "sample,indices",
    [
        ({"every": 100}, list(range(0, 1000, 100))),
        ({"points": 5}, [0, 250, 500, 749, 999]),
        ({"at": [999, 0, 500]}, [999, 0, 500]),
    ],
)
def test_sampling_picks_indices_without_changing_values(client, sample, indices):
    expected, _ = torch_loop(lambda o: L.CosineAnnealingLR(o, T_max=300), 1000)
    r = client.post(
        "/v1/schedules/compute",
        json={
            "engine": "torch",
            "scheduler": {"type": "CosineAnnealingLR", "T_max": 300},
            "steps": 1000,
            "sample": sample,
        },
    )
    body = r.json()
    assert body["steps"] == indices
    assert body["lr"][0] == [expected[0][i] for i in indices]
    assert body["summary"][0]["final"] == expected[0][-1]


def test_batch_scaling_multiplies_every_lr(client):
    expected, _ = torch_loop(
        lambda o: L.CyclicLR(o, base_lr=0.004, max_lr=0.4, step_size_up=3, cycle_momentum=False),
        20,
        lr=0.4,
    )
    r = client.post(
        "/v1/schedules/compute",
        json={
            "engine": "torch",
            "scheduler": {
                "type": "CyclicLR",
                "base_lr": 0.001,
                "max_lr": 0.1,
                "step_size_up": 3,
                "cycle_momentum": False,
            },
            "batch_scaling": {"base_batch_size": 256, "batch_size": 1024},
            "steps": 20,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["lr"] == expected


def test_query_string_form_matches_post(client):
    got = client.get("/v1/schedules/StepLR?step_size=30&gamma=0.65&steps=100&engine=torch")
    assert got.status_code == 200, got.text
    expected, _ = torch_loop(lambda o: L.StepLR(o, step_size=30, gamma=0.65), 100)
    assert got.json()["lr"] == expected
    multi = client.get("/v1/schedules/MultiStepLR?milestones=3,6&steps=8&lr=1&engine=torch")
    expected, _ = torch_loop(lambda o: L.MultiStepLR(o, [3, 6]), 8, lr=1.0)
    assert multi.json()["lr"] == expected


@pytest.mark.parametrize("engine", ["torch", "vectorized"])
def test_both_engines_name_the_first_step_and_group_that_overflows(client, engine):
    body = {
        "param_groups": [{"lr": 0.001}, {"lr": 0.1}],
        "scheduler": {"type": "ExponentialLR", "gamma": 1e10},
        "steps": 33,
        "engine": engine,
    }
    r = client.post("/v1/schedules/compute", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == (
        "the lr of group 1 is not finite at scheduler step 31; check the scheduler's "
        "parameters (e.g. lr_lambda or gamma)."
    )


def test_an_lr_lambda_is_parsed_once_per_request(client, monkeypatch):
    from service.schedules.families import torch as family

    calls = []
    real = family.parse_expression

    def counting(source, **limits):
        calls.append(source)
        return real(source, **limits)

    monkeypatch.setattr(family, "parse_expression", counting)
    for engine in ("torch", "vectorized"):
        calls.clear()
        spec = {"type": "LambdaLR", "lr_lambda": f"0.5 ** epoch + {len(engine)}"}
        r = client.post(
            "/v1/schedules/compute", json={"scheduler": spec, "steps": 4, "engine": engine}
        )
        assert r.status_code == 200, r.text
        assert len(calls) == 1, calls
