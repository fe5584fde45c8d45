"""Schedules from LLM training that no library here ships under one name: Noam and REX.

Both are ``LambdaLR`` multipliers of each group's initial lr, evaluated by the vectorized
engine as tensor formulas and by the torch engine as a ``LambdaLR`` over the same formula in
Python floats (there is no reference library to run).

- **Noam** (Vaswani et al. 2017, "Attention Is All You Need", eq. 3; written as the Annotated
  Transformer's ``rate(step, model_size, factor, warmup)``, which treats step 0 as step 1):
  ``factor * d_model ** -0.5 * min(s ** -0.5, s * warmup_steps ** -1.5)``, ``s = max(step, 1)``.
  With the optimizer's lr 1.0 it is the paper's lrate.
- **REX** (Chen, Wolfe & Kyrillidis 2022, "REX: Revisiting Budgeted Training with an Improved
  Schedule", MLSys; eq. for the REX profile): ``z / (1/2 + z/2)`` with
  ``z = 1 - min(step, total_steps) / total_steps``: 1 at step 0, 0 from ``total_steps`` on.
"""

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from service.schedules.families.common import Factor
from service.schedules.registry import register
from service.schedules.specs import Number, PosInt, SchedulerBase
from service.schedules.vectorized import formulas

Tensor = torch.Tensor

NOAM_INFO = {"family": "noam", "library": None, "version": None}
"""What a response says of Noam: a paper's formula, no library (see the module doc)."""
REX_INFO = {"family": "rex", "library": None, "version": None}


@register
class Noam(SchedulerBase):
    """The Transformer's schedule (Vaswani et al. 2017): linear warmup, then ``1/sqrt(step)``.

    ``lr = base_lr * factor * d_model**-0.5 * min(s**-0.5, s * warmup_steps**-1.5)`` with
    ``s = max(step, 1)`` (the Annotated Transformer's ``rate``). Peaks at ``warmup_steps``.
    """

    type: Literal["noam"] = "noam"
    cost_per_step: ClassVar[float] = 22.0
    # measured 21.8 + 10.8 × groups ns a step (bench/bench_cost.py)
    cost_per_value: ClassVar[float] = 11.0
    d_model: PosInt = Field(description="Model width; the lr scales as d_model**-0.5.")
    warmup_steps: PosInt = Field(description="Steps of the linear warmup (the peak).")
    factor: Number = Field(default=1.0, gt=0.0, description="Overall multiplier.")

    examples: ClassVar[list[dict[str, Any]]] = [
        {"type": "noam", "d_model": 512, "warmup_steps": 40, "factor": 1.0}
    ]

    def build(self, optimizer: torch.optim.Optimizer, span: int) -> Any:
        return build(self, optimizer)

    def closed_form(self, sched: Any, device: torch.device) -> formulas.Leaf:
        return formulas.Lambda.of(sched, device)


@register
class REX(SchedulerBase):
    """REX (Chen et al. 2022): ``z / (1/2 + z/2)``, ``z = 1 - step/total_steps``, down to 0.

    ``lr = base_lr * z / (0.5 + 0.5 * z)`` with ``z = 1 - min(step, total_steps)/total_steps``.
    """

    type: Literal["rex"] = "rex"
    cost_per_step: ClassVar[float] = 24.0
    cost_per_value: ClassVar[float] = 13.0  # measured 24.0 + 12.9 × groups ns a step
    total_steps: PosInt = Field(description="Steps until the lr reaches 0.")

    examples: ClassVar[list[dict[str, Any]]] = [{"type": "rex", "total_steps": 100}]

    def build(self, optimizer: torch.optim.Optimizer, span: int) -> Any:
        return build(self, optimizer)

    def closed_form(self, sched: Any, device: torch.device) -> formulas.Leaf:
        return formulas.Lambda.of(sched, device)


@dataclass(frozen=True, eq=False)
class NoamFactor(Factor):
    d_model: int
    warmup_steps: int
    factor: float

    def evaluate_tensor(self, e: Tensor) -> Tensor:
        s = torch.clamp_min(e, 1.0)
        return (
            self.factor * self.d_model**-0.5 * torch.minimum(s**-0.5, s * self.warmup_steps**-1.5)
        )


@dataclass(frozen=True, eq=False)
class RexFactor(Factor):
    total_steps: int

    def evaluate_tensor(self, e: Tensor) -> Tensor:
        z = 1.0 - torch.clamp_max(e, float(self.total_steps)) / self.total_steps
        return z / (0.5 + 0.5 * z)


def closed_form(spec: Noam | REX) -> Factor:
    """Return the lr multiplier of ``spec`` (the same for every group)."""
    if isinstance(spec, Noam):
        return NoamFactor(spec.d_model, spec.warmup_steps, spec.factor)
    return RexFactor(spec.total_steps)


def build(spec: Noam | REX, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Return the ``LambdaLR`` over :func:`closed_form` (both engines use it)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, closed_form(spec))
