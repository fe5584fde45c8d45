"""Several schedules side by side: each computed as `POST /v1/schedules/compute` would, aligned
on optimizer steps, with the largest differences of every pair and where they first exceed a
tolerance.

Specs from different families (torch's OneCycleLR against optax's ``cosine_onecycle_schedule``)
are compared at the optimizer steps every spec returns (the intersection of their ``steps``);
param groups are compared group by group over the groups both specs have.
"""

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.errors import InvalidSpec, LimitExceeded, ServiceError
from service.schedules import plots, service
from service.schedules.result import Computed
from service.schedules.specs import ScheduleRequest
from service.settings import Settings

MAX_SPECS = 16
"""The contract's bound on ``specs`` (API.md: 2–16 specs)."""


class CompareRequest(BaseModel):
    """Two to sixteen schedule specs (each a body of `POST /v1/schedules/compute`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "specs": [
                        {
                            "optimizer": {"type": "SGD", "lr": 0.1},
                            "scheduler": {
                                "type": "OneCycleLR",
                                "max_lr": 0.1,
                                "total_steps": 100,
                            },
                            "steps": 100,
                        },
                        {
                            "scheduler": {
                                "type": "transformers",
                                "name": "cosine",
                                "num_warmup_steps": 30,
                                "num_training_steps": 100,
                            },
                            "steps": 100,
                        },
                    ],
                    "labels": ["torch OneCycleLR", "transformers cosine"],
                    "tolerance": 1e-12,
                }
            ]
        },
    )

    specs: list[ScheduleRequest] = Field(
        min_length=2,
        max_length=MAX_SPECS,
        description="The schedules to compare, each as `POST /v1/schedules/compute` takes it.",
    )
    labels: list[str] | None = Field(
        default=None,
        description="A name per spec for the response and the plot's legend; by default the "
        "spec's index and scheduler.",
    )
    tolerance: float = Field(
        default=1e-12,
        ge=0,
        allow_inf_nan=False,
        description="Relative tolerance: two lrs differ when |a - b| > tolerance · max(|a|, |b|).",
    )

    @model_validator(mode="after")
    def _labels_match(self) -> "CompareRequest":
        if self.labels is not None and len(self.labels) != len(self.specs):
            raise ValueError(
                f"labels has {len(self.labels)} entries for {len(self.specs)} specs; "
                "give one label per spec or none"
            )
        return self


class Series(BaseModel):
    label: str
    lr: list[list[float]] = Field(description="One list per param group, aligned with steps.")
    peak_step: int = Field(description="The first step where group 0's lr is at its maximum.")


class Pair(BaseModel):
    a: int = Field(description="Index of the first spec.")
    b: int = Field(description="Index of the second spec.")
    max_abs_diff: float = Field(description="max |lr_a - lr_b| over steps and shared groups.")
    max_rel_diff: float = Field(
        description="max |lr_a - lr_b| / max(|lr_a|, |lr_b|) (0 where both are 0)."
    )
    first_difference: int | None = Field(
        description="The first optimizer step where they differ beyond tolerance; null if none."
    )
    peak_offset: int = Field(description="peak_step of b minus peak_step of a, in steps.")


class CompareResult(BaseModel):
    steps: list[int] = Field(description="The optimizer steps every spec returns.")
    series: list[Series]
    pairs: list[Pair] = Field(description="Every pair a < b.")
    warnings: list[str] = Field(
        description="Each spec's warnings (prefixed by its label), and how they were aligned."
    )


def _relocated(exc: ServiceError, index: int) -> ServiceError:
    """Point the error's ``loc``s into ``specs[index]`` of the compare body."""
    for err in exc.errors or []:
        loc = list(err.get("loc") or [])
        if loc[:1] == ["body"]:
            err["loc"] = ["body", "specs", index, *loc[1:]]
    exc.detail = f"specs[{index}]: {exc.detail}"
    return exc


def compute_all(request: CompareRequest, settings: Settings) -> list[Computed]:
    """Return every spec computed; a spec that fails raises its error, pointing into ``specs``."""
    total = sum(service.count_points(s) * s.n_groups for s in request.specs)
    if total > settings.batch_max_points:
        raise LimitExceeded(
            f"the specs carry {total} values together; a comparison is limited to "
            f"{settings.batch_max_points} (LRS_BATCH_MAX_POINTS). Lower steps or sample.",
            loc=("body", "specs"),
        )
    index_by = {s.index_by for s in request.specs}
    if len(index_by) > 1:
        raise InvalidSpec(
            "the specs index their series differently (index_by "
            f"{' and '.join(sorted(index_by))}); give every spec the same index_by",
            loc=("body", "specs"),
        )
    out = []
    for i, spec in enumerate(request.specs):
        try:
            out.append(service.compute(spec, settings))
        except ServiceError as exc:
            raise _relocated(exc, i) from None
    return out


def cost_share(request: CompareRequest, settings: Settings) -> float:
    """Return the share of their engines' cost limits the specs use together (each as
    `POST /v1/schedules/compute` counts it); above LRS_COMPUTE_HEAVY_SHARE the comparison
    takes the expensive lane. A spec that cannot be costed counts 0: computing it says why."""
    total = 0.0
    for spec in request.specs:
        try:
            total += service.request_cost(spec, settings)
        except ServiceError:
            continue
    return total


def labels(request: CompareRequest) -> list[str]:
    """Return the label of every spec: the given ones, or ``"i: StepLR(step_size=30)"``."""
    if request.labels is not None:
        return list(request.labels)
    return [
        f"{i}: {plots.spec_label(s.model_dump(exclude_unset=True))}"
        for i, s in enumerate(request.specs)
    ]


def _aligned(computed: list[Computed]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return the steps every result has and each result's lr at them (groups × steps)."""
    common = np.unique(computed[0].indices)
    for c in computed[1:]:
        common = np.intersect1d(common, c.indices)
    if common.size == 0:
        raise InvalidSpec(
            "the specs share no optimizer step (their steps or sample choose disjoint indices); "
            "give them the same steps and sample.",
            loc=("body", "specs"),
        )
    rows = []
    for c in computed:
        unique, first = np.unique(c.indices, return_index=True)
        rows.append(c.lr[:, first[np.searchsorted(unique, common)]])
    return common, rows


def pair_diff(a: np.ndarray, b: np.ndarray, steps: np.ndarray, tolerance: float) -> dict:
    """Return max abs/rel difference of two lr arrays (groups × steps, shared groups only) and
    the first step where they differ beyond ``tolerance`` (relative)."""
    groups = min(a.shape[0], b.shape[0])
    a, b = a[:groups], b[:groups]
    diff = np.abs(a - b)
    scale = np.maximum(np.abs(a), np.abs(b))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(scale > 0, diff / np.where(scale > 0, scale, 1.0), 0.0)
    beyond = (diff > tolerance * scale).any(axis=0)
    first = int(steps[int(np.argmax(beyond))]) if beyond.any() else None
    return {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "max_rel_diff": float(rel.max()) if rel.size else 0.0,
        "first_difference": first,
    }


def compare(request: CompareRequest, settings: Settings) -> dict[str, Any]:
    """Return the body of `POST /v1/schedules/compare` (see :class:`CompareResult`)."""
    computed = compute_all(request, settings)
    names = labels(request)
    steps, rows = _aligned(computed)
    peaks = [int(steps[int(np.argmax(r[0]))]) for r in rows]
    warnings = [f"{name}: {w}" for name, c in zip(names, computed, strict=True) for w in c.warnings]
    if any(c.indices.size != steps.size for c in computed):
        warnings.append(
            f"compared at the {steps.size} optimizer steps every spec returns; "
            "the specs' steps or sample differ"
        )
    groups = {r.shape[0] for r in rows}
    if len(groups) > 1:
        warnings.append(
            "the specs have different numbers of param groups "
            f"({', '.join(str(r.shape[0]) for r in rows)}); pairs compare the groups both have"
        )
    pairs = [
        {
            "a": i,
            "b": j,
            **pair_diff(rows[i], rows[j], steps, request.tolerance),
            "peak_offset": peaks[j] - peaks[i],
        }
        for i in range(len(rows))
        for j in range(i + 1, len(rows))
    ]
    return {
        "steps": steps.tolist(),
        "series": [
            {"label": name, "lr": r.tolist(), "peak_step": peak}
            for name, r, peak in zip(names, rows, peaks, strict=True)
        ],
        "pairs": pairs,
        "warnings": warnings,
    }


def plot(
    request: CompareRequest, settings: Settings, fmt: Any, options: plots.PlotOptions
) -> bytes:
    """Return the overlay plot of every spec, one legend entry per spec (its label)."""
    computed = compute_all(request, settings)
    names = labels(request)
    title = f"{len(names)} schedules compared"
    return plots.to_overlay_plot(list(zip(names, computed, strict=True)), fmt, title, options)
