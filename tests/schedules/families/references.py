"""The real libraries, stepped or called the way their users do, for the parity tests.

timm and Megatron-core step a real torch optimizer; optax is called in float64 (x64 mode is
switched on once, at the first optax reference).
"""

import warnings
from functools import cache

import numpy as np
import torch

from service.schedules.families import import_submodule_only


def _optimizer(lrs: list[float], **kwargs) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(1, 1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(params, lr=lrs[0], **kwargs)


def timm_reference(
    spec: dict,
    lrs: list[float],
    n: int,
    metrics: list[float] | None = None,
    scales: list[float | None] | None = None,
) -> np.ndarray:
    """Return lr per group (groups, n) of timm's create_scheduler_v2, driven as train.py does;
    ``scales``: each group's ``lr_scale`` (None: the group has none), as timm's layer-wise lr
    decay sets it on the optimizer's groups."""
    timm_scheduler = import_submodule_only("timm", "scheduler")
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    opt = _optimizer(lrs)
    for group, scale in zip(opt.param_groups, scales or [], strict=False):
        if scale is not None:
            group["lr_scale"] = scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler, _ = timm_scheduler.create_scheduler_v2(opt, **kwargs)
        out = [[g["lr"] for g in opt.param_groups]]
        for t in range(1, n):
            if kwargs.get("step_on_epochs", True):
                scheduler.step(t, metrics[t - 1] if metrics else None)
            else:
                scheduler.step_update(t)
            out.append([g["lr"] for g in opt.param_groups])
    return np.asarray(out, dtype=np.float64).T


def megatron_reference(spec: dict, groups: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (lr, weight_decay) per group of Megatron-core's OptimizerParamScheduler."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    kwargs = {k: v for k, v in spec.items() if k != "type"}
    kwargs.setdefault("init_lr", 0.0)
    kwargs.setdefault("min_lr", 0.0)
    kwargs.setdefault("lr_warmup_steps", 0)
    kwargs.setdefault("lr_decay_style", "linear")
    kwargs.setdefault("start_wd", 0.01)
    kwargs.setdefault("end_wd", 0.01)
    kwargs.setdefault("wd_incr_steps", kwargs["lr_decay_steps"])
    kwargs.setdefault("wd_incr_style", "constant")
    if kwargs["lr_decay_style"] == "WSD":
        kwargs.setdefault("lr_wsd_decay_style", "exponential")
    opt = _optimizer([0.1] * groups)
    for key in ("max_lr", "min_lr", "start_wd", "end_wd"):
        if isinstance(kwargs[key], list):
            for group, value in zip(opt.param_groups, kwargs[key], strict=True):
                group[key] = value
            kwargs[key] = kwargs[key][0]
    scheduler = OptimizerParamScheduler(opt, **kwargs)
    lr = [[g["lr"] for g in opt.param_groups]]
    wd = [[g["weight_decay"] for g in opt.param_groups]]
    for _ in range(1, n):
        scheduler.step(increment=1)
        lr.append([g["lr"] for g in opt.param_groups])
        wd.append([g["weight_decay"] for g in opt.param_groups])
    return np.asarray(lr).T, np.asarray(wd).T


@cache
def _jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    import optax

    return jax, optax


def _optax_schedule(optax, spec: dict, group: int):
    def pick(v):
        return v[group] if isinstance(v, list) else v

    kwargs = {k: v for k, v in spec.items() if k not in ("type", "schedule")}
    name = spec["schedule"]
    if name == "join_schedules":
        parts = [_optax_schedule(optax, s, group) for s in kwargs["schedules"]]
        return optax.join_schedules(parts, kwargs["boundaries"])
    if name == "sgdr_schedule":
        cycles = [{k: pick(v) for k, v in c.items()} for c in kwargs["cosine_kwargs"]]
        return optax.sgdr_schedule(cycles)
    for key, value in kwargs.items():
        if key == "boundaries_and_scales" and value is not None:
            kwargs[key] = {int(b): s for b, s in value.items()}
        else:
            kwargs[key] = pick(value)
    return getattr(optax, name)(**kwargs)


def optax_reference(spec: dict, groups: int, n: int) -> np.ndarray:
    """Return optax's schedule at counts 0..n-1 in float64, per group, (groups, n)."""
    jax, optax = _jax()
    # one shape for every call, so jax compiles each primitive once for the whole suite
    width = max(n, OPTAX_WIDTH)
    counts = jax.numpy.arange(width)
    rows = []
    for g in range(groups):
        fn = _optax_schedule(optax, spec, g)
        values = np.asarray(jax.vmap(fn)(counts))
        assert values.dtype == np.float64, values.dtype
        rows.append(np.broadcast_to(values, (width,))[:n])
    return np.stack(rows)


OPTAX_WIDTH = 128
