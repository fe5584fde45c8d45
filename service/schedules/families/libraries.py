"""What the request pipeline asks of the timm, optax and Megatron families beyond what the
registry derives: per-group list lengths, and Megatron's weight-decay series."""

from typing import Any

import numpy as np
import torch

from service.errors import InvalidSpec
from service.schedules.families import megatron, optax, timm

SPECS: tuple[type, ...] = (timm.TimmScheduler, optax.OptaxBase, megatron.MegatronScheduler)
"""The base classes: ``isinstance(spec, SPECS)`` is a spec of one of these families."""


def check(request: Any) -> None:
    """Raise InvalidSpec (422) for what the spec alone cannot tell: a per-group list whose
    length is not the number of param groups, a weight_decay series from a schedule that
    does not set it."""
    spec = request.scheduler
    if isinstance(spec, SPECS):
        found = spec.mismatch(request.n_groups)
        if found is not None:
            loc, message = found
            raise InvalidSpec(message, loc=("body", "scheduler", *loc))
    if "weight_decay" in request.include and not (
        isinstance(spec, megatron.MegatronScheduler) and request.warmup is None
    ):
        raise InvalidSpec(
            "include 'weight_decay': only a megatron scheduler (at the top, without warmup) "
            "sets the weight decay; drop 'weight_decay' from include",
            loc=("body", "include"),
        )


def weight_decay(request: Any, steps: np.ndarray) -> np.ndarray | None:
    """Return Megatron's weight decay per group at scheduler ``steps`` when the request
    includes it (the vectorized engine's closed form), else None."""
    if "weight_decay" not in request.include:
        return None
    from service.schedules.budget import chunked

    k = torch.as_tensor(steps, dtype=torch.int64)
    groups = request.n_groups
    values = chunked(lambda part: request.scheduler.weight_decay(part, groups), k, groups)
    return values.cpu().numpy()
