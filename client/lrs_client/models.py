"""What the service returns, as dataclasses. Each keeps the full JSON in ``raw``, so fields a
newer service adds are never lost; ``numpy=True`` on a call gives arrays instead of lists."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "numpy=True needs numpy: pip install 'lrs-client[numpy]' (or numpy)"
        ) from exc
    return numpy


def _time(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Schedule:
    """A computed schedule: ``lr[g][i]`` is group g's lr at optimizer step ``steps[i]``."""

    steps: Any
    lr: Any
    momentum: Any = None
    engine: str | None = None
    device: str | None = None
    torch_version: str | None = None
    warnings: list[str] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, Any] | None = None
    """What each index counts (skipped steps, updates, micro-batches, samples, tokens, the lr
    at ``counter.at``), when the spec asks for step counters; None otherwise."""
    etag: str | None = None
    cached: bool | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(
        cls, body: dict[str, Any], *, numpy: bool = False, headers: Any = None
    ) -> Schedule:
        steps, lr, momentum = body.get("steps"), body.get("lr"), body.get("momentum")
        if numpy:
            np = _numpy()
            steps = np.asarray(steps, dtype=np.int64)
            lr = np.asarray(lr, dtype=np.float64)
            momentum = None if momentum is None else np.asarray(momentum, dtype=np.float64)
        cache = headers.get("x-cache") if headers is not None else None
        return cls(
            steps=steps,
            lr=lr,
            momentum=momentum,
            engine=body.get("engine"),
            device=body.get("device"),
            torch_version=body.get("torch_version"),
            warnings=list(body.get("warnings") or []),
            summary=list(body.get("summary") or []),
            counters=body.get("counters"),
            etag=headers.get("etag") if headers is not None else None,
            cached=None if cache is None else cache == "hit",
            raw=body,
        )


@dataclass
class SchedulerInfo:
    """One catalog entry: a scheduler type, its parameters and a ready example request."""

    type: str
    torch_class: str
    description: str
    parameters: dict[str, Any]
    defaults: dict[str, Any]
    required: list[str]
    example: dict[str, Any]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> SchedulerInfo:
        names = ("type", "torch_class", "description", "parameters", "defaults", "required")
        return cls(**{n: body.get(n) for n in names}, example=body.get("example") or {})  # type: ignore[arg-type]


@dataclass
class Catalog:
    """Every scheduler type the service supports, and the optimizers it accepts."""

    schedulers: list[SchedulerInfo]
    optimizers: list[str]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Catalog:
        return cls(
            schedulers=[SchedulerInfo.from_json(s) for s in body.get("schedulers", [])],
            optimizers=list(body.get("optimizers", [])),
            raw=body,
        )

    def __getitem__(self, kind: str) -> SchedulerInfo:
        for entry in self.schedulers:
            if entry.type == kind:
                return entry
        raise KeyError(f"no scheduler type {kind!r} in the catalog")

    @property
    def types(self) -> list[str]:
        return [s.type for s in self.schedulers]


@dataclass
class BatchSlot:
    """One result of a batch: ``result`` when its status is 200, else ``problem``."""

    status: int
    result: Schedule | None = None
    problem: Any = None  # ProblemError

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class DropoutResult:
    """What a dropout layer did: tensors as nested lists (or arrays), scale, seed and stats."""

    input: Any
    output: Any
    mask: Any
    input_after: Any
    scale: float | None
    seed: int | None
    stats: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any], *, numpy: bool = False) -> DropoutResult:
        tensors = {n: body.get(n) for n in ("input", "output", "mask", "input_after")}
        if numpy:
            np = _numpy()
            tensors = {n: None if v is None else np.asarray(v) for n, v in tensors.items()}
        return cls(
            **tensors,
            scale=body.get("scale"),
            seed=body.get("seed"),
            stats=body.get("stats") or {},
            raw=body,
        )


FINISHED = ("succeeded", "failed", "cancelled", "interrupted")


@dataclass
class Job:
    """A training job as the service reports it."""

    id: str
    status: str
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    progress: dict[str, Any] | None
    spec: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    replayed: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any], *, replayed: bool = False) -> Job:
        return cls(
            id=body["id"],
            status=body["status"],
            created_at=_time(body.get("created_at")),
            started_at=_time(body.get("started_at")),
            finished_at=_time(body.get("finished_at")),
            progress=body.get("progress"),
            spec=body.get("spec") or {},
            result=body.get("result"),
            error=body.get("error"),
            replayed=replayed,
            raw=body,
        )

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass
class JobPage:
    jobs: list[Job]
    next_page_token: str | None


@dataclass
class Event:
    """One Server-Sent Event of a job: ``event`` is ``status``, ``progress`` or ``done``."""

    id: int | None
    event: str
    data: dict[str, Any]


@dataclass
class Info:
    """Service and torch versions, devices and every limit in force."""

    service: str
    version: str
    torch_version: str
    cuda_available: bool
    devices: list[str]
    engines: list[str]
    limits: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Info:
        return cls(
            service=body.get("service", ""),
            version=body.get("version", ""),
            torch_version=body.get("torch_version", ""),
            cuda_available=bool(body.get("cuda_available")),
            devices=list(body.get("devices", [])),
            engines=list(body.get("engines", [])),
            limits=dict(body.get("limits", {})),
            raw=body,
        )
