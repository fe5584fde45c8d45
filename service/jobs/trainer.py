"""The torch training loop of a job: the seed's data, model, loader and gradient accumulation.

Pure torch and no I/O: :func:`train` takes a spec, a device and two callbacks (progress and
a stop check) and returns the result and the trained network. The schedule is built by the
schedule engine (:class:`~service.schedules.torch_engine.Stepper`) and stepped exactly as the
schedule API indexes it, so ``result["lr"]`` equals ``POST /v1/schedules/compute`` for the
same spec with ``steps = optimizer_steps``.
"""

import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import data

from service.devices import TORCH_VERSION
from service.jobs import specs
from service.schedules.specs import ReduceLROnPlateau
from service.schedules.torch_engine import Stepper, make_optimizer

K_STEP_HORIZONS = (4, 16, 64)
"""The k of the k-step-ahead predictions (d2l's sequence chapter uses 1, 4, 16, 64)."""

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")


class JobStopped(Exception):
    """Training stopped before the end; ``kind`` is the job error type."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


ProgressHook = Callable[[dict[str, Any], bool], None]
"""Called with the progress dict and whether an epoch just ended."""
StopCheck = Callable[[], None]
"""Called before every batch; raises :class:`JobStopped` to stop the job."""


# --------------------------------------------------------------------------- data


@dataclass
class Dataset:
    """A series cut into ``tau``-value windows: ``features[i] = x[i:i+tau]``, ``labels[i] =
    x[i+tau]``; the first ``n_train`` rows train."""

    x: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor
    tau: int
    n_train: int


def make_series(spec: specs.DataSpec, seed: int) -> torch.Tensor:
    """Return the series as float32: the seed's noisy sine or the user's values."""
    if isinstance(spec, specs.Series):
        return torch.tensor(spec.values, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(1, spec.n + 1, dtype=torch.float32)
    return torch.sin(0.01 * t) + torch.normal(0.0, spec.noise_std, (spec.n,), generator=generator)


def make_dataset(spec: specs.DataSpec, seed: int) -> Dataset:
    """Return the windows of the series (d2l: features are the tau previous values)."""
    x = make_series(spec, seed)
    tau = spec.tau
    rows = len(x) - tau
    features = torch.stack([x[i : rows + i] for i in range(tau)], dim=1)
    labels = x[tau:].reshape(-1, 1)
    return Dataset(x, features, labels, tau, spec.n_train or 0)


def load_array(
    data_arrays: tuple[torch.Tensor, ...],
    batch_size: int,
    is_train: bool = True,
    generator: torch.Generator | None = None,
) -> data.DataLoader:
    """Return the seed's (d2l's) data iterator: a TensorDataset in a DataLoader, shuffled
    for training with ``generator`` so the order is reproducible."""
    dataset = data.TensorDataset(*data_arrays)
    return data.DataLoader(dataset, batch_size, shuffle=is_train, generator=generator)


# --------------------------------------------------------------------------- model


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform initialise the weight of every Linear layer (the seed's init)."""
    if type(module) is nn.Linear:
        nn.init.xavier_uniform_(module.weight)


def _ordinal(k: int) -> str:
    return ORDINALS[k] if k < len(ORDINALS) else f"linear{k + 1}"


def make_net(spec: specs.ModelSpec, tau: int) -> nn.Sequential:
    """Return the named MLP; the default is the seed's ``first/active/second`` network."""
    layers: list[tuple[str, nn.Module]] = []
    widths = [tau, *spec.hidden]
    for k, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        suffix = "" if k == 0 else str(k + 1)
        layers.append((_ordinal(k), nn.Linear(fan_in, fan_out)))
        layers.append((f"active{suffix}", getattr(nn, spec.activation)()))
        if spec.dropout > 0:
            layers.append((f"drop{suffix}", nn.Dropout(spec.dropout)))
    layers.append((_ordinal(len(spec.hidden)), nn.Linear(widths[-1], 1)))
    net = nn.Sequential(OrderedDict(layers))
    net.apply(init_weights)
    return net


def group_parameters(net: nn.Sequential, n_groups: int) -> list[list[nn.Parameter]]:
    """Return the parameters of each param group: all in one, or one group per Linear layer.

    Raises ValueError when ``n_groups`` is neither 1 nor the number of Linear layers.
    """
    if n_groups == 1:
        return [list(net.parameters())]
    linears = [m for m in net if isinstance(m, nn.Linear)]
    if n_groups != len(linears):
        raise ValueError(
            f"{n_groups} param groups for a model with {len(linears)} Linear layers: give one "
            f"group (all parameters) or one per Linear layer ({len(linears)})"
        )
    return [list(m.parameters()) for m in linears]


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """How many batches and optimizer steps a spec makes."""

    batches_per_epoch: int
    steps_per_epoch: int
    optimizer_steps: int
    scheduler_span: int
    """Scheduler states the run covers: optimizer steps, or epochs with interval 'epoch'."""


def plan(spec: specs.JobSpec) -> Plan:
    """Return the step counts of ``spec`` (an epoch's remainder batches make one more step)."""
    batches = math.ceil((spec.data.n_train or 0) / spec.batch_size)
    per_epoch = math.ceil(batches / spec.accumulation_steps)
    total = per_epoch * spec.epochs
    span = spec.epochs if spec.interval == "epoch" else total
    return Plan(batches, per_epoch, total, span)


def build_schedule(
    spec: specs.JobSpec, params: list[list[nn.Parameter]] | None = None
) -> tuple[torch.optim.Optimizer, Stepper]:
    """Return the optimizer and its schedule; with ``params`` None, on placeholder parameters
    (to validate a spec). Raises InvalidSpec when torch refuses them."""
    optimizer = make_optimizer(spec.optimizer, spec.param_groups, params)
    return optimizer, Stepper(optimizer, spec.scheduler, spec.warmup, plan(spec).scheduler_span)


# --------------------------------------------------------------------------- training


def _group_sizes(n: int, batch_size: int, accumulation: int) -> list[int]:
    """Return the examples in each accumulation group of one epoch."""
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    return [sum(sizes[i : i + accumulation]) for i in range(0, len(sizes), accumulation)]


@torch.no_grad()
def _evaluate(net: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    loss = nn.functional.mse_loss(net(features), labels).item()
    net.train()
    return loss


@torch.no_grad()
def predict(net: nn.Module, ds: Dataset, device: torch.device) -> dict[str, Any]:
    """Return one-step, recursive and k-step-ahead predictions on the test range."""
    net.eval()
    tau, n_train, length = ds.tau, ds.n_train, len(ds.x)
    x = ds.x.to(device)
    features = ds.features.to(device)
    start = n_train + tau  # first test target, as an index into x
    one_step = net(features[n_train:]).reshape(-1)
    recursive = x.clone()
    for i in range(start, length):
        recursive[i] = net(recursive[i - tau : i].reshape(1, -1)).reshape(())
    k_step: dict[str, list[float]] = {}
    for k in K_STEP_HORIZONS:
        first_row = n_train - k + 1  # the window observed k steps before the first target
        if first_row < 0:
            continue
        window = features[first_row : length - tau - k + 1]
        for _ in range(k):
            window = torch.cat([window[:, 1:], net(window)], dim=1)
        k_step[str(k)] = window[:, -1].cpu().tolist()
    net.train()
    return {
        "t": list(range(start + 1, length + 1)),
        "observed": ds.x[start:].tolist(),
        "one_step": one_step.cpu().tolist(),
        "recursive": recursive[start:].cpu().tolist(),
        "k_step": k_step,
    }


def _step_schedule(stepper: Stepper, metric: float | None, when: str) -> None:
    try:
        stepper.step(metric)
    except (ValueError, RuntimeError, ZeroDivisionError, OverflowError) as exc:
        raise JobStopped(
            "invalid_schedule", f"torch refused to step the scheduler {when}: {exc}"
        ) from exc


def _non_finite(what: str, epoch: int, step: int) -> JobStopped:
    return JobStopped(
        "non_finite_loss",
        f"the {what} became non-finite at epoch {epoch}, optimizer step {step}: training "
        "diverged; lower the learning rate",
    )


def train(
    spec: specs.JobSpec,
    device: torch.device,
    on_progress: ProgressHook | None = None,
    check: StopCheck | None = None,
    progress_every: int = 50,
) -> tuple[dict[str, Any], nn.Sequential]:
    """Train ``spec`` on ``device``; return the result (see :class:`specs.JobResult`) and the
    network. ``check`` runs before every batch and may raise :class:`JobStopped`;
    ``on_progress`` gets a progress dict every ``progress_every`` optimizer steps and after
    every epoch. Raises JobStopped when the loss becomes non-finite."""
    began = time.perf_counter()
    torch.manual_seed(spec.seed)
    ds = make_dataset(spec.data, spec.seed)
    net = make_net(spec.model, ds.tau).to(device)
    n_groups = len(spec.param_groups) if spec.param_groups else 1
    optimizer, stepper = build_schedule(spec, group_parameters(net, n_groups))
    counts = plan(spec)
    plateau = isinstance(spec.scheduler, ReduceLROnPlateau)

    train_x, train_y = ds.features[: ds.n_train], ds.labels[: ds.n_train]
    test_x, test_y = ds.features[ds.n_train :].to(device), ds.labels[ds.n_train :].to(device)
    loader = load_array(
        (train_x, train_y), spec.batch_size, generator=torch.Generator().manual_seed(spec.seed)
    )
    accumulation = spec.accumulation_steps
    group_sizes = _group_sizes(ds.n_train, spec.batch_size, accumulation)

    lr_rows: list[list[float]] = []
    train_loss: list[float] = []
    test_loss: list[float] = []
    metrics: list[float] = []
    step = 0
    progress: dict[str, Any] = {}
    net.train()
    for epoch in range(1, spec.epochs + 1):
        optimizer.zero_grad()
        epoch_sse = 0.0
        group_sse = 0.0
        for j, (features, labels) in enumerate(loader):
            if check is not None:
                check()
            features, labels = features.to(device), labels.to(device)
            group = group_sizes[j // accumulation]
            loss = nn.functional.mse_loss(net(features), labels)
            # Scaled so the summed gradients of a group equal one batch of all its examples.
            (loss * (len(features) / group)).backward()
            batch_sse = loss.item() * len(features)
            epoch_sse += batch_sse
            group_sse += batch_sse
            if (j + 1) % accumulation and j + 1 < counts.batches_per_epoch:
                continue
            lr_rows.append(stepper.lrs())
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            step_loss = group_sse / group
            group_sse = 0.0
            if not math.isfinite(step_loss):
                raise _non_finite("training loss", epoch, step)
            if spec.interval == "step" and step < counts.optimizer_steps:
                metric = step_loss if plateau else None
                if plateau:
                    metrics.append(step_loss)
                _step_schedule(stepper, metric, f"after optimizer step {step}")
            progress = {
                "epoch": epoch,
                "epochs": spec.epochs,
                "step": step,
                "optimizer_steps": counts.optimizer_steps,
                "loss": step_loss,
                "lr": lr_rows[-1][0],
                "train_loss": train_loss[-1] if train_loss else None,
                "test_loss": test_loss[-1] if test_loss else None,
            }
            if on_progress is not None and step % progress_every == 0:
                on_progress(progress, False)
        train_loss.append(epoch_sse / ds.n_train)
        test_loss.append(_evaluate(net, test_x, test_y))
        if not math.isfinite(test_loss[-1]):
            raise _non_finite("test loss", epoch, step)
        if spec.interval == "epoch" and epoch < spec.epochs:
            if plateau:
                metrics.append(train_loss[-1])
            _step_schedule(stepper, train_loss[-1] if plateau else None, f"after epoch {epoch}")
        progress = {**progress, "train_loss": train_loss[-1], "test_loss": test_loss[-1]}
        if on_progress is not None:
            on_progress(progress, True)

    result = {
        "lr": [row[0] for row in lr_rows],
        "lr_groups": [list(col) for col in zip(*lr_rows, strict=True)],
        "train_loss": train_loss,
        "test_loss": test_loss,
        "scheduler_metrics": metrics if plateau else None,
        "predictions": predict(net, ds, device),
        "optimizer_steps": step,
        "steps_per_epoch": counts.steps_per_epoch,
        "effective_batch_size": spec.batch_size * accumulation,
        "n_train": ds.n_train,
        "n_test": len(ds.labels) - ds.n_train,
        "wall_time_s": time.perf_counter() - began,
        "device": str(device),
        "torch_version": TORCH_VERSION,
    }
    return result, net
