"""``pytorch_warmup`` (Tomoyuki Ma, 0.2.0): warmups that dampen whatever lr the scheduler set.

``{"type": "exponential", "warmup_period": 1000}`` as the request's ``warmup`` is
``pytorch_warmup.ExponentialWarmup(optimizer, warmup_period=1000)`` built after the scheduler
and stepped as the library's README shows (``with warmup.dampening(): scheduler.step()``).
Unlike the service's own ``linear``/``constant`` warmups, nothing is delayed: the scheduler
runs from its step 0 and the lr of optimizer step t is ``scheduler_lr_t * omega_t``, where
(pytorch_warmup/base.py, untuned.py, radam.py):

- ``linear`` with ``warmup_period`` tau: ``omega_t = min(1, (t + 1) / tau)``
- ``exponential``: ``omega_t = 1 - exp(-(t + 1) / tau)``
- ``untuned_linear``: linear with ``tau = int(2 / (1 - beta2))`` (1999 for beta2 = 0.999)
- ``untuned_exponential``: exponential with ``tau = int(1 / (1 - beta2))``
- ``radam``: ``omega_t = sqrt((rho - 4)(rho - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho))``
  with ``rho = rho_inf - 2 s beta2^s / (1 - beta2^s)``, ``s = t + offset``,
  ``rho_inf = 2 / (1 - beta2) - 1`` and ``offset`` the least s >= 1 with ``rho_s > 4``.

``beta2`` is each group's ``betas[1]`` (Adam and its variants).
"""

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BeforeValidator, Discriminator, Field, PlainValidator, Tag, WithJsonSchema

from service.errors import InvalidSpec
from service.schedules.codes import caveat
from service.schedules.families import Library
from service.schedules.families.common import did_you_mean, load
from service.schedules.specs import MAX_INT, SpecModel

LIBRARY = Library(family="pytorch_warmup", package="pytorch-warmup", version="0.2.0")
Tensor = torch.Tensor
F64 = torch.float64
LOC = ("body", "warmup")


def _period(value: Any) -> int | list[int]:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= MAX_INT:
            raise ValueError(
                f"warmup_period must be a positive integer, or a list of them (one per param "
                f"group); got {v!r}"
            )
    return value


Period = Annotated[
    int | list[int],
    PlainValidator(_period),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "array", "items": {"type": "integer", "minimum": 1}},
            ]
        }
    ),
]


class PeriodWarmup(SpecModel):
    """A pytorch_warmup warmup with a ``warmup_period`` (one, or one per param group)."""

    warmup_period: Period = Field(
        description="The period tau in optimizer steps, or one per group."
    )

    def periods(self, groups: int) -> list[int]:
        """Return tau per group; InvalidSpec when a list does not match the groups."""
        if isinstance(self.warmup_period, int):
            return [self.warmup_period] * groups
        if len(self.warmup_period) != groups:
            raise InvalidSpec(
                f"warmup.warmup_period lists {len(self.warmup_period)} periods for {groups} "
                "param groups (pytorch_warmup raises); give one per group or a single one",
                loc=(*LOC, "warmup_period"),
            )
        return list(self.warmup_period)


class PWLinearWarmup(PeriodWarmup):
    """``pytorch_warmup.LinearWarmup``: multiplies the lr by ``min(1, (t + 1) / warmup_period)``.

    This is ``linear`` with ``warmup_period``; ``linear`` with ``steps`` is the service's own
    ramp before the scheduler.
    """

    type: Literal["linear"] = "linear"
    cost_per_value: ClassVar[float] = 12.0
    """The cost model's weight per value (about 1 ns of CPU): the dampening multiplies every
    lr; measured by bench/bench_cost.py besides a CosineAnnealingLR's own (11 + 7.8 × groups
    ns a step): linear 1.9 + 18.8 × groups, exponential 13.5 + 15.6, untuned_linear 16 + 11.5,
    untuned_exponential 2 + 20.5, radam 52.6 a value (load 5.5)."""


class ExponentialWarmup(PeriodWarmup):
    """``pytorch_warmup.ExponentialWarmup``: multiplies the lr by ``1 - exp(-(t + 1) / tau)``."""

    type: Literal["exponential"] = "exponential"
    cost_per_value: ClassVar[float] = 13.0


class UntunedLinearWarmup(SpecModel):
    """``pytorch_warmup.UntunedLinearWarmup``: linear with ``tau = int(2 / (1 - beta2))``."""

    type: Literal["untuned_linear"] = "untuned_linear"
    cost_per_value: ClassVar[float] = 12.0


class UntunedExponentialWarmup(SpecModel):
    """``pytorch_warmup.UntunedExponentialWarmup``: exponential, ``tau = int(1 / (1 - beta2))``."""

    type: Literal["untuned_exponential"] = "untuned_exponential"
    cost_per_value: ClassVar[float] = 13.0


class RAdamWarmup(SpecModel):
    """``pytorch_warmup.RAdamWarmup``: RAdam's rectification term as a warmup factor."""

    type: Literal["radam"] = "radam"
    cost_per_value: ClassVar[float] = 45.0


PytorchWarmupSpec = (
    PWLinearWarmup
    | ExponentialWarmup
    | UntunedLinearWarmup
    | UntunedExponentialWarmup
    | RAdamWarmup
)
SPECS: dict[str, type[SpecModel]] = {
    "linear": PWLinearWarmup,
    "exponential": ExponentialWarmup,
    "untuned_linear": UntunedLinearWarmup,
    "untuned_exponential": UntunedExponentialWarmup,
    "radam": RAdamWarmup,
}
"""The spec of each pytorch_warmup kind (``linear``: with ``warmup_period``)."""
CLASSES = {
    "linear": "LinearWarmup",
    "exponential": "ExponentialWarmup",
    "untuned_linear": "UntunedLinearWarmup",
    "untuned_exponential": "UntunedExponentialWarmup",
    "radam": "RAdamWarmup",
}
EXAMPLES: dict[str, dict[str, Any]] = {
    "linear": {"type": "linear", "warmup_period": 20},
    "exponential": {"type": "exponential", "warmup_period": 20},
    "untuned_linear": {"type": "untuned_linear"},
    "untuned_exponential": {"type": "untuned_exponential"},
    "radam": {"type": "radam"},
}


def check_interval(warmup: Any, interval: str) -> None:
    """Raise ValueError for a pytorch_warmup warmup with ``interval: "epoch"``.

    The library dampens at every optimizer step (its README calls ``dampening()`` after each
    one and steps the scheduler inside it once per epoch); here the warmup is stepped with the
    scheduler, so per epoch it would follow neither.
    """
    if interval == "epoch" and is_pytorch_warmup(warmup):
        raise ValueError(
            f"warmup: pytorch_warmup's {warmup.type!r} dampens the lr at every optimizer step, "
            "while interval 'epoch' steps the scheduler (and so the warmup here) once per "
            "epoch; use interval 'step' (give the scheduler its lengths in optimizer steps)"
        )


def is_pytorch_warmup(warmup: Any) -> bool:
    """Return True when ``warmup`` is one of this module's specs."""
    return isinstance(
        warmup,
        (
            PWLinearWarmup,
            ExponentialWarmup,
            UntunedLinearWarmup,
            UntunedExponentialWarmup,
            RAdamWarmup,
        ),
    )


def _beta2s(optimizer: torch.optim.Optimizer, kind: str) -> list[float]:
    out = []
    for i, group in enumerate(optimizer.param_groups):
        betas = group.get("betas")
        if betas is None:
            raise InvalidSpec(
                f"warmup.type {kind!r} reads beta2 from each group's betas, and group {i} of "
                f"torch.optim.{type(optimizer).__name__} has none; use Adam, AdamW or NAdam, "
                "or a warmup with a warmup_period",
                loc=(*LOC, "type"),
            )
        beta2 = float(betas[1])
        if not beta2 < 1:
            raise InvalidSpec(
                f"warmup.type {kind!r}: beta2={beta2} of group {i} makes 1 - beta2 = 0, so the "
                "period is infinite; use beta2 < 1",
                loc=(*LOC, "type"),
            )
        out.append(beta2)
    return out


def untuned_period(beta2: float, kind: str) -> int:
    """Return pytorch_warmup's untuned period: ``int(2 / (1 - beta2))`` (linear) or
    ``int(1 / (1 - beta2))`` (exponential), truncated as the library does."""
    return int((2.0 if kind == "untuned_linear" else 1.0) / (1.0 - beta2))


def _rho(s: Tensor | float, beta2: float, rho_inf: float) -> Any:
    b2t = beta2**s
    return rho_inf - 2 * s * b2t / (1 - b2t)


def radam_offset(beta2: float) -> int:
    """Return RAdamWarmup's offset: the least s >= 1 with rho_s > 4 (beta2 > 0.6)."""
    rho_inf = 2.0 / (1 - beta2) - 1
    offset = 1
    while not _rho(offset, beta2, rho_inf) > 4:
        offset += 1
    return offset


def factors(warmup: Any, optimizer: torch.optim.Optimizer) -> Callable[[Tensor], Tensor]:
    """Return omega: float64 step counts (n,) -> the dampening factor per group (groups, n).

    Raises InvalidSpec where pytorch_warmup raises (no betas, beta2 <= 0.6 for radam, a
    period list of the wrong length).
    """
    groups = len(optimizer.param_groups)
    if isinstance(warmup, (PWLinearWarmup, UntunedLinearWarmup)):
        taus = (
            warmup.periods(groups)
            if isinstance(warmup, PWLinearWarmup)
            else [untuned_period(b, "untuned_linear") for b in _beta2s(optimizer, warmup.type)]
        )
        return lambda e: torch.stack([torch.clamp_max((e + 1) / tau, 1.0) for tau in taus])
    if isinstance(warmup, (ExponentialWarmup, UntunedExponentialWarmup)):
        taus = (
            warmup.periods(groups)
            if isinstance(warmup, ExponentialWarmup)
            else [untuned_period(b, "untuned_exponential") for b in _beta2s(optimizer, warmup.type)]
        )
        return lambda e: torch.stack([1.0 - torch.exp(-(e + 1) / tau) for tau in taus])
    betas = _beta2s(optimizer, warmup.type)
    for i, beta2 in enumerate(betas):
        if not beta2 > 0.6:
            raise InvalidSpec(
                f"warmup.type 'radam': beta2 ({beta2}) of group {i} must be greater than 0.6 "
                "(pytorch_warmup raises)",
                loc=(*LOC, "type"),
            )
    params = [(b, 2.0 / (1 - b) - 1, radam_offset(b)) for b in betas]

    def radam(e: Tensor) -> Tensor:
        rows = []
        for beta2, rho_inf, offset in params:
            rho = _rho(e + offset, beta2, rho_inf)
            rows.append(
                torch.sqrt(
                    ((rho - 4) * (rho - 2) * rho_inf) / ((rho_inf - 4) * (rho_inf - 2) * rho)
                )
            )
        return torch.stack(rows)

    return radam


def periods(warmup: Any, optimizer: torch.optim.Optimizer) -> list[int] | None:
    """Return tau per group for the linear and exponential kinds (None for radam)."""
    groups = len(optimizer.param_groups)
    if isinstance(warmup, PeriodWarmup):
        return warmup.periods(groups)
    if isinstance(warmup, (UntunedLinearWarmup, UntunedExponentialWarmup)):
        return [untuned_period(b, warmup.type) for b in _beta2s(optimizer, warmup.type)]
    return None


class ClosedDampening:
    """The library's dampening protocol on the closed-form factors (no library needed).

    Same contract as ``pytorch_warmup.BaseWarmup``: constructed after the scheduler, it
    dampens the lr at step 0; ``dampening()`` restores the undampened lrs, lets the scheduler
    step, records them and dampens with the next step's factor.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, omega: Callable[[Tensor], Tensor]):
        self.optimizer = optimizer
        self.omega = omega
        self.last_step = -1
        self.lrs = [group["lr"] for group in optimizer.param_groups]
        self.dampen()

    def dampen(self) -> None:
        self.last_step += 1
        values = self.omega(torch.tensor([float(self.last_step)], dtype=F64))[:, 0].tolist()
        for group, omega in zip(self.optimizer.param_groups, values, strict=True):
            group["lr"] *= omega

    def dampening(self) -> "_Dampening":
        return _Dampening(self)


class _Dampening:
    def __init__(self, owner: ClosedDampening) -> None:
        self.owner = owner

    def __enter__(self) -> None:
        for group, lr in zip(self.owner.optimizer.param_groups, self.owner.lrs, strict=True):
            group["lr"] = lr

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.owner.lrs = [group["lr"] for group in self.owner.optimizer.param_groups]
            self.owner.dampen()


def build(warmup: Any, optimizer: torch.optim.Optimizer, *, closed: bool) -> Any:
    """Return the warmup object, constructed now (after the scheduler, as the library requires).

    ``closed=False``: the real ``pytorch_warmup`` class (InvalidSpec when the library is not
    installed); ``closed=True``: :class:`ClosedDampening` over :func:`factors`.
    """
    omega = factors(warmup, optimizer)  # the library's refusals, raised the same way
    if closed:
        return ClosedDampening(optimizer, omega)
    library = load(LIBRARY, "pytorch_warmup")
    cls = getattr(library, CLASSES[warmup.type])
    if isinstance(warmup, PeriodWarmup):
        return cls(optimizer, warmup_period=warmup.warmup_period)
    return cls(optimizer)


def describe(warmup: Any) -> str:
    """Return the library call a warmup spec stands for."""
    args = f"warmup_period={warmup.warmup_period}" if isinstance(warmup, PeriodWarmup) else ""
    return f"pytorch_warmup.{CLASSES[warmup.type]}(optimizer{', ' if args else ''}{args})"


TAGS = frozenset(
    {"pytorch_warmup.linear", "exponential", "untuned_linear", "untuned_exponential", "radam"}
)
"""Discriminator tags of the warmup union (left out of error locations)."""


def _warmup_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type")
        if kind == "linear" and "warmup_period" in value:
            return "pytorch_warmup.linear"
        return kind if isinstance(kind, str) else None
    if isinstance(value, PWLinearWarmup):
        return "pytorch_warmup.linear"
    return getattr(value, "type", None)


KINDS = ("linear", "constant", "exponential", "untuned_linear", "untuned_exponential", "radam")
"""Every ``warmup.type``."""


def _known_kind(value: Any) -> Any:
    kind = value.get("type") if isinstance(value, dict) else None
    if isinstance(kind, str) and kind not in KINDS:
        raise ValueError(
            f"warmup.type {kind!r} is not a warmup.{did_you_mean(kind, KINDS)} The kinds: "
            "linear (steps: before the scheduler; warmup_period: pytorch_warmup's), constant, "
            "exponential, untuned_linear, untuned_exponential, radam"
        )
    return value


def warmup_union(linear: type, constant: type) -> Any:
    """Return the request's ``warmup`` type: the service's ``linear`` (``steps``) and
    ``constant``, and pytorch_warmup's kinds (``linear`` with ``warmup_period``, ...)."""
    return Annotated[
        Annotated[linear, Tag("linear")]
        | Annotated[constant, Tag("constant")]
        | Annotated[PWLinearWarmup, Tag("pytorch_warmup.linear")]
        | Annotated[ExponentialWarmup, Tag("exponential")]
        | Annotated[UntunedLinearWarmup, Tag("untuned_linear")]
        | Annotated[UntunedExponentialWarmup, Tag("untuned_exponential")]
        | Annotated[RAdamWarmup, Tag("radam")],
        Discriminator(
            _warmup_tag,
            custom_error_type="warmup_type",
            custom_error_message="warmup.type must be one of: linear (steps, or pytorch_warmup's "
            "warmup_period), constant, exponential, untuned_linear, untuned_exponential, radam",
        ),
        BeforeValidator(_known_kind),
    ]


def caveats(request: Any) -> list[str]:
    """Return warnings for pytorch_warmup's surprises in ``request`` (its warmup is one of
    this module's)."""
    warmup = request.warmup
    if not isinstance(warmup, (UntunedLinearWarmup, UntunedExponentialWarmup)):
        return []
    from service.schedules.torch_engine import make_optimizer

    optimizer = make_optimizer(request.optimizer, request.param_groups)
    try:
        betas = _beta2s(optimizer, warmup.type)
    except InvalidSpec:
        return []  # the engine reports it
    out = []
    numerator = 2.0 if warmup.type == "untuned_linear" else 1.0
    for beta2 in dict.fromkeys(betas):
        exact = numerator / (1.0 - beta2)
        tau = untuned_period(beta2, warmup.type)
        if tau != round(exact):
            out.append(
                caveat(
                    "pytorch-warmup-untuned-period",
                    f"{warmup.type} lasts int({numerator:g} / (1 - beta2)) = {tau} steps for "
                    f"beta2={beta2}, not {round(exact)}: {numerator:g} / (1 - {beta2}) is "
                    f"{exact!r} in float64 and pytorch_warmup truncates it",
                    # the linear ramp reaches the full lr at step tau - 1: min(1, (e + 1) / tau)
                    tau - 1 if warmup.type == "untuned_linear" else None,
                )
            )
    return out
