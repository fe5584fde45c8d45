"""The one schedule result: what an engine computes, the service samples and a format renders.

:class:`Computed` flows engine → service → format; :class:`ScheduleResult` is the JSON body
a format makes of it (the response model of the schedule endpoints, checked by the tests).
"""

from dataclasses import dataclass, field
from typing import Literal

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


class ScheduleResult(BaseModel):
    """Per-group learning rates at the requested indices."""

    steps: list[int] = Field(description="The optimizer-step index of every returned value.")
    lr: list[list[float]] = Field(description="One list per param group, aligned with steps.")
    momentum: list[list[float]] | None = Field(
        default=None, description="Momentum (or beta1) per group, when include asks for it."
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
