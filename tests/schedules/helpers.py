"""Reference loops written the way a notebook user would write them, with real torch objects."""

import warnings
from collections.abc import Callable

import torch


def torch_loop(
    make_scheduler: Callable[[torch.optim.Optimizer], object],
    steps: int,
    *,
    optimizer: type[torch.optim.Optimizer] = torch.optim.SGD,
    groups: list[dict] | None = None,
    metrics: list[float] | None = None,
    steps_per_epoch: int | None = None,
    record_momentum: bool = False,
    **optimizer_kwargs,
) -> tuple[list[list[float]], list[list[float]]]:
    """Return (lr per group per optimizer step, momentum per group per step) of a real loop."""
    optimizer_kwargs.setdefault("lr", 0.1)
    params = [{"params": [torch.nn.Parameter(torch.zeros(1, 1))], **g} for g in (groups or [{}])]
    opt = optimizer(params, **optimizer_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = make_scheduler(opt)
        lrs: list[list[float]] = [[] for _ in opt.param_groups]
        moms: list[list[float]] = [[] for _ in opt.param_groups]
        sched_steps = 0
        for i in range(steps):
            for g, group in enumerate(opt.param_groups):
                lrs[g].append(group["lr"])
                if record_momentum:
                    moms[g].append(group["momentum"] if "momentum" in group else group["betas"][0])
            # the optimizer step would happen here; then the scheduler steps
            if i + 1 < steps and (steps_per_epoch is None or (i + 1) % steps_per_epoch == 0):
                if metrics is not None:
                    scheduler.step(metrics[sched_steps])
                else:
                    scheduler.step()
                sched_steps += 1
    return lrs, moms
