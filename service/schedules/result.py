"""The one schedule result: what an engine computes, the service samples and a format renders.

:class:`Computed` flows engine → service → format; :class:`ScheduleResult` is the JSON body
a format makes of it (the response model of the schedule endpoints, checked by the tests).
"""

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

EngineName = Literal["torch", "vectorized"]


@dataclass
class Computed:
    """A schedule's values per param group at the steps in ``indices``.

    From an engine, ``indices`` are scheduler steps; once the service has sampled, they are
    optimizer-step indices (what the response's ``steps`` carries).
    """

    indices: np.ndarray
    """Step of every column (int64)."""
    lr: np.ndarray
    """Learning rate, shape (groups, len(indices)), float64."""
    momentum: np.ndarray | None
    """Momentum or beta1, same shape as ``lr``, when asked for."""
    final_lr: list[float]
    """Each group's lr at the last step of the schedule."""
    engine: EngineName
    device: str
    warnings: list[str] = field(default_factory=list)
    families: list[dict[str, str | None]] = field(default_factory=list)
    """``{family, library, version}`` of every other library (or paper) the schedule follows."""
    weight_decay: np.ndarray | None = None
    """Each group's weight decay, same shape as ``lr``, when asked for (Megatron sets it)."""
    counters: dict[str, Any] | None = None
    """The response's ``counters`` (numpy arrays left for orjson), when the request asks for
    step counters (:mod:`service.schedules.counters`)."""

    def summary(self) -> list[dict[str, float]]:
        """Return each group's min and max over ``indices`` and its final lr (the members of
        :class:`GroupSummary`)."""
        return [
            {
                "min": float(row.min()) if row.size else final,
                "max": float(row.max()) if row.size else final,
                "final": final,
            }
            for row, final in zip(self.lr, self.final_lr, strict=True)
        ]


class FamilyInfo(BaseModel):
    """Which family a schedule comes from, and the release whose semantics it reproduces."""

    family: str = Field(description="The family: the spec's type, or warmup.type's library.")
    library: str | None = Field(description="The library's package; null for a paper's formula.")
    version: str | None = Field(description="The library's release the values reproduce.")


class GroupSummary(BaseModel):
    """The lr range of one param group over the returned indices, and its final value."""

    min: float
    max: float
    final: float = Field(description="The lr of the last index, steps - 1.")


class CounterAt(BaseModel):
    """The lr at one ``counter.at`` value: the optimizer step in force there, and its lr."""

    model_config = {"extra": "allow"}

    optimizer_step: int = Field(description="The step whose batch holds that sample or token.")
    lr: list[float] = Field(description="That step's lr, one per param group.")


class CounterTotals(BaseModel):
    """What the whole run (all ``steps`` optimizer steps) makes and consumes."""

    optimizer_steps: int
    updates: int = Field(description="optimizer.step() calls: optimizer steps not skipped.")
    micro_batches: int
    samples: int | None = Field(description="With a counter: samples consumed.")
    tokens: int | None = Field(description="With a tokens counter: tokens consumed.")


class Counters(BaseModel):
    """The step counters of every returned index (present when the request asks for any)."""

    index_by: Literal["optimizer_step", "micro_batch"] = Field(
        description="What `steps` counts: optimizer steps, or micro-batches."
    )
    optimizer_step: list[int] = Field(
        description="The optimizer step of every index (the index itself when index_by is "
        "optimizer_step)."
    )
    accumulation_steps: int | None = Field(
        description="Micro-batches per optimizer step (null when counter.micro_batch_size "
        "makes them vary: see micro_batches)."
    )
    skipped_steps: list[int] | None = Field(
        description="The skipped optimizer steps, sorted, once each."
    )
    skipped: list[bool] | None = Field(
        description="Per index: whether its optimizer step was skipped (its lr not applied)."
    )
    updates: list[int] | None = Field(
        description="Per index: parameter updates (optimizer.step() calls) before its step."
    )
    counter: Literal["samples", "tokens"] | None
    samples: list[int] | None = Field(
        description="Per index: samples consumed before its optimizer step."
    )
    tokens: list[int] | None = Field(
        description="Per index: tokens consumed before its optimizer step."
    )
    batch_size: list[int] | None = Field(
        description="Per index: the global batch of its optimizer step (ramp-up applied)."
    )
    micro_batches: list[int] | None = Field(
        description="Per index: micro-batches of its optimizer step (with micro_batch_size)."
    )
    at: list[CounterAt] | None = Field(
        description="One per counter.at value, keyed by the counter (`samples` or `tokens`)."
    )
    totals: CounterTotals


class ScheduleResult(BaseModel):
    """Per-group learning rates at the requested indices."""

    steps: list[int] = Field(description="The optimizer-step index of every returned value.")
    lr: list[list[float]] = Field(description="One list per param group, aligned with steps.")
    momentum: list[list[float]] | None = Field(
        default=None, description="Momentum (or beta1) per group, when include asks for it."
    )
    weight_decay: list[list[float]] | None = Field(
        default=None,
        description="Weight decay per group, when include asks for it (Megatron's schedule).",
    )
    engine: EngineName
    device: str
    torch_version: str
    warnings: list[str]
    summary: list[GroupSummary]
    families: list[FamilyInfo] = Field(
        default_factory=list,
        description="The other libraries whose semantics the schedule reproduces (family, "
        "library, release); empty for torch's own schedulers.",
    )
    counters: Counters | None = Field(
        default=None,
        description="What each index counts, when the request asks for skipped_steps, "
        "accumulation_steps, index_by or counter; null otherwise.",
    )
