"""The torch loop: the seed's model and data, accumulation equivalence, determinism."""

import math

import pytest
import torch
from torch import nn

from service.errors import InvalidSpec
from service.jobs import specs, trainer
from service.jobs.service import UNTRAINABLE, JobService
from service.schedules.specs import optimizer_classes
from service.settings import Settings

CPU = torch.device("cpu")


def test_default_net_is_the_seeds_named_sequential_with_xavier_weights():
    net = trainer.make_net(specs.ModelSpec(), tau=4)
    assert [name for name, _ in net.named_children()] == ["first", "active", "second"]
    assert isinstance(net.first, nn.Linear) and net.first.in_features == 4
    assert net.first.out_features == 10 and isinstance(net.active, nn.ReLU)
    assert net.second.in_features == 10 and net.second.out_features == 1
    for layer in (net.first, net.second):
        bound = math.sqrt(6 / (layer.in_features + layer.out_features))
        assert layer.weight.abs().max() <= bound


def test_deeper_nets_name_their_layers_in_the_same_spirit():
    net = trainer.make_net(specs.ModelSpec(hidden=[8, 6], activation="Tanh", dropout=0.1), 3)
    names = [name for name, _ in net.named_children()]
    assert names == ["first", "active", "drop", "second", "active2", "drop2", "third"]


def test_noisy_sine_matches_the_seed_and_windows_are_d2ls():
    data = specs.NoisySine()
    x = trainer.make_series(data, seed=3)
    t = torch.arange(1, 1001, dtype=torch.float32)
    noise = x - torch.sin(0.01 * t)
    assert x.shape == (1000,) and 0.015 < noise.std() < 0.025
    ds = trainer.make_dataset(data, seed=3)
    assert ds.features.shape == (996, 4) and ds.labels.shape == (996, 1)
    assert torch.equal(ds.features[10], x[10:14]) and ds.labels[10, 0] == x[14]


def _spec(**kw):
    base = {
        "optimizer": {"type": "SGD", "lr": 0.05, "momentum": 0.9},
        "scheduler": {"type": "ExponentialLR", "gamma": 0.99},
        "epochs": 2,
    }
    return specs.JobSpec.model_validate(base | kw)


def test_accumulating_n_batches_of_b_equals_one_batch_of_n_times_b():
    # 600 examples: 75 batches of 8 in groups of 4 (the last group has 3) against 19
    # batches of 32 (the last has 24): the same examples per optimizer step.
    small, net_small = trainer.train(_spec(batch_size=8, accumulation_steps=4), CPU)
    big, net_big = trainer.train(_spec(batch_size=32, accumulation_steps=1), CPU)
    assert small["optimizer_steps"] == big["optimizer_steps"] == 2 * 19
    assert small["effective_batch_size"] == big["effective_batch_size"] == 32
    assert small["lr"] == big["lr"]
    for key, value in net_small.state_dict().items():
        torch.testing.assert_close(value, net_big.state_dict()[key], rtol=1e-5, atol=1e-6)
    assert small["train_loss"] == pytest.approx(big["train_loss"], rel=1e-5)


def test_accumulation_steps_the_remainder_of_an_epoch():
    result, _ = trainer.train(_spec(batch_size=100, accumulation_steps=4, epochs=1), CPU)
    assert result["optimizer_steps"] == 2  # 6 batches: a group of 4, then the remaining 2


def test_same_spec_and_seed_on_cpu_give_the_identical_loss_curve():
    first, net_a = trainer.train(_spec(seed=7), CPU)
    second, net_b = trainer.train(_spec(seed=7), CPU)
    other, _ = trainer.train(_spec(seed=8), CPU)
    assert first["train_loss"] == second["train_loss"]
    assert first["test_loss"] == second["test_loss"]
    assert all(torch.equal(v, net_b.state_dict()[k]) for k, v in net_a.state_dict().items())
    assert other["train_loss"] != first["train_loss"]


def test_predictions_cover_the_test_range():
    result, _ = trainer.train(_spec(epochs=1), CPU)
    predictions = result["predictions"]
    n_test = result["n_test"]
    assert n_test == 396 and predictions["t"][0] == 605 and predictions["t"][-1] == 1000
    for key in ("observed", "one_step", "recursive"):
        assert len(predictions[key]) == n_test
    assert sorted(predictions["k_step"], key=int) == ["4", "16", "64"]
    assert all(len(v) == n_test for v in predictions["k_step"].values())


def test_a_stop_check_ends_training_before_the_next_batch():
    batches = 0

    def check():
        nonlocal batches
        batches += 1
        if batches > 3:
            raise trainer.JobStopped("cancelled", "stop")

    with pytest.raises(trainer.JobStopped):
        trainer.train(_spec(), CPU, check=check)
    assert batches == 4


def test_a_diverging_run_stops_with_a_clear_error():
    spec = _spec(optimizer={"type": "SGD", "lr": 1e6})
    with pytest.raises(trainer.JobStopped, match=r"non-finite.*lower the learning rate"):
        trainer.train(spec, CPU)


def test_a_schedule_torch_refuses_mid_run_stops_with_its_reason():
    spec = _spec(scheduler={"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 5})
    with pytest.raises(trainer.JobStopped, match=r"torch refused to step the scheduler after"):
        trainer.train(spec, CPU)


@pytest.mark.parametrize("name", sorted(optimizer_classes()))
def test_every_optimizer_a_job_accepts_trains_and_the_others_are_refused(name, tmp_path):
    """A spec torch would refuse mid-run is a 422 at submit, never a failed job."""
    spec = _spec(optimizer={"type": name, "lr": 0.01}, epochs=1)
    jobs = JobService(Settings(data_dir=tmp_path), store=None, executor=None, artifacts=None)
    if name in UNTRAINABLE:
        with pytest.raises(InvalidSpec, match=f"{name} cannot train a job"):
            jobs.check(spec)
        return
    jobs.check(spec)
    result, _ = trainer.train(spec, CPU)
    assert result["optimizer_steps"] == 38 and all(map(math.isfinite, result["train_loss"]))
