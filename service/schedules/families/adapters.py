"""How the engines run a library family: the torch engine's schedulers and the vectorized leaf.

:class:`LibraryLR` steps the real library's scheduler (timm, Megatron) from torch's step count;
:class:`ClosedFormLR` sets a closed form on the optimizer (optax, which is not torch);
:func:`family_leaf` gives the vectorized engine a family's closed form;
:class:`LibrarySchedulerBase` is what the library families' specs (optax, timm, Megatron) share.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar, Protocol

import torch
from torch.optim.lr_scheduler import LRScheduler

from service.schedules.codes import caveat
from service.schedules.families import Library
from service.schedules.registry import SchedulerBase


class FamilySpec(Protocol):
    """What a family spec gives the engines (see each family module)."""

    library: ClassVar[Library]

    def lr(self, k: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Return the lr at scheduler steps ``k`` (int64), (groups, len(k)), float64."""
        ...

    def first_failure(self, last: int) -> tuple[int, Exception] | None:
        """Return the first step in 1..``last`` at which the library raises, and what."""
        ...

    def other_series(self, k: torch.Tensor, groups: int) -> dict[str, torch.Tensor]:
        """Return the other param-group values the library sets, by group key (e.g.
        Megatron's ``weight_decay``), each (groups, len(k)); empty for most families."""
        ...


class LibrarySchedulerBase(SchedulerBase):
    """What the library families' specs share (optax, timm, Megatron): the vectorized engine
    evaluates their closed form (:func:`family_leaf`), a metric-driven one by its
    ``metric_schedule`` (a scan over the metrics)."""

    sets_lr: ClassVar[bool] = False
    """The library sets the lr itself (the optimizer's and groups' lr are not read)."""

    def closed_form(self, sched: Any, device: torch.device) -> Any:
        """Return the vectorized engine's leaf: this spec's closed form, over ``sched``'s base
        lrs."""
        from service.schedules.vectorized.formulas import column  # the engine imports families

        scales = lr_scales(sched.spec, sched.optimizer.param_groups)
        scale = None if scales is None else column(scales, device)
        return family_leaf(sched.spec, column(sched.base_lrs, device), scale)

    def vectorized_unsupported(self) -> str | None:
        """Return None: the vectorized engine has every one (a metric-driven one as a scan
        over the metrics, see vectorized/plateau.py)."""
        return None

    def request_caveats(self, request: Any) -> list[str]:
        """Return a warning when the request sets an lr this family does not read."""
        return ignored_lr_warning(self.type, request) if self.sets_lr else []

    def other_series(self, k: torch.Tensor, groups: int) -> dict[str, torch.Tensor]:
        """Return no other series: the library sets only the lr."""
        return {}

    def first_failure(self, last: int) -> tuple[int, Exception] | None:
        """Return None: the library refuses nothing once the spec is valid."""
        return None


def lr_scales(spec: Any, groups: list[dict[str, Any]]) -> list[float] | None:
    """Return each group's ``lr_scale`` (1.0 where it has none) when ``spec`` multiplies it
    into the lr it sets (timm's ``update_groups`` does), else None.

    ``v * 1.0`` is ``v`` to the bit, so a group without one gets timm's unscaled value.
    """
    if not getattr(spec, "reads_lr_scale", False) or not any("lr_scale" in g for g in groups):
        return None
    return [float(g.get("lr_scale", 1.0)) for g in groups]


class FamilyLR(LRScheduler):
    """A torch scheduler for a family spec (``spec``); the vectorized engine reads its closed
    form from the spec and its base lrs from here."""

    spec: FamilySpec

    def _closed(self, k: int) -> list[float]:
        base = torch.tensor([float(v) for v in self.base_lrs], dtype=torch.float64)[:, None]
        values = self.spec.lr(torch.tensor([k], dtype=torch.int64), base)
        scales = lr_scales(self.spec, self.optimizer.param_groups)
        if scales is not None:
            values = values * torch.tensor(scales, dtype=torch.float64)[:, None]
        return [float(v) for v in values[:, 0]]


class ClosedFormLR(FamilyLR):
    """A torch scheduler that sets every group's lr to a family's closed form at its step.

    For libraries that are not torch (optax): the values are the closed form's, evaluated in
    float64 at ``last_epoch``, set on a real optimizer like any torch scheduler's.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, spec: FamilySpec) -> None:
        self.spec = spec
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return self._closed(self.last_epoch)


class LibraryLR(FamilyLR):
    """A torch scheduler driving the library's own scheduler object at torch's step count.

    ``make(optimizer)`` builds the library's scheduler (it sets the groups' values for step
    0, as the library does when constructed); ``drive(scheduler, k, metric)`` makes it set
    step ``k`` (``metric``: what ``step(metric)`` was given, for metric-driven schedules).
    The library object is built at the first step, so building this one (as the vectorized
    engine does, to read the base lrs) neither imports the library nor needs it installed;
    step 0 is the closed form's value, which the parity tests compare bit for bit.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        spec: FamilySpec,
        make: Callable[[torch.optim.Optimizer], Any],
        drive: Callable[[Any, int, float | None], None],
    ) -> None:
        self.spec = spec
        self._make = make
        self._drive = drive
        self._library: Any = None
        self._metric: float | None = None
        super().__init__(optimizer)

    def step(self, metric: float | None = None) -> None:  # type: ignore[override]
        """Advance one step; ``metric`` feeds a metric-driven library scheduler (timm's
        plateau), as ``ReduceLROnPlateau.step(metric)`` does."""
        self._metric = metric
        super().step()

    def get_lr(self) -> list[float]:
        k = self.last_epoch
        if self._library is None and k > 0:
            for group, lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = lr
            self._library = self._make(self.optimizer)
        if self._library is not None:
            self._drive(self._library, k, self._metric)
        if k == 0:  # what the library sets when it is built (a restart in SequentialLR too)
            if self._library is None:
                zero = torch.zeros(1, dtype=torch.int64)
                for key, values in self.spec.other_series(zero, len(self.base_lrs)).items():
                    for group, value in zip(self.optimizer.param_groups, values[:, 0], strict=True):
                        group[key] = float(value)
            return self._closed(0)
        return [float(group["lr"]) for group in self.optimizer.param_groups]


def family_leaf(spec: FamilySpec, base: torch.Tensor, scale: torch.Tensor | None = None) -> Any:
    """Return the vectorized engine's leaf for a family spec: its closed form sets the lr.

    ``base`` is the groups' initial lrs, (groups, 1); ``scale`` each group's ``lr_scale``
    (groups, 1), multiplied into the closed form's value as timm does, or None. Leaves of
    equal specs stack in a batch (rows are then groups of several requests, which the closed
    forms index modulo).
    """
    return _leaf_class()(base, spec=SpecKey(spec), scale=scale)


@cache
def _leaf_class() -> type:
    from service.schedules.budget import chunked
    from service.schedules.vectorized import formulas  # the engine imports the families

    @dataclass(eq=False)
    class FamilyLeaf(formulas.Leaf):
        """A family's closed form: it sets the lr outright at every step (no chaining)."""

        spec: Any = None
        scale: torch.Tensor | None = None
        """Each group's ``lr_scale`` (groups, 1), or None: timm multiplies it into the lr it
        sets (after its noise)."""

        def _lr(self, e: torch.Tensor) -> torch.Tensor:
            # in chunks of steps, the request's budget checked between them; a chunk holds
            # CLOSED_FORM_VALUES evaluated values (optax evaluates groups of equal values once)
            rows = getattr(self.spec.value, "distinct_groups", None)
            return chunked(
                self._scaled, e, len(self.base) if rows is None else rows(len(self.base))
            )

        def _scaled(self, part: torch.Tensor) -> torch.Tensor:
            values = self.spec.value.lr(part, self.base)
            return values if self.scale is None else values * self.scale

        def closed(self, e: torch.Tensor, x: torch.Tensor, restarted: bool) -> torch.Tensor:
            return self._lr(e)

        def step_map(self, e: torch.Tensor) -> Any:
            values = self._lr(e)
            return torch.zeros_like(values), values

        def restart_map(self) -> Any:
            return self.step_map(torch.zeros(1, dtype=torch.int64, device=self.base.device))

        def failure(self, last: int, restarted: bool) -> tuple[int, BaseException] | None:
            return self.spec.value.first_failure(last)

    return FamilyLeaf


@dataclass(frozen=True, eq=False)
class SpecKey:
    """A spec compared and hashed by its JSON, so equal specs' leaves stack in a batch."""

    value: Any

    def _json(self) -> str:
        return self.value.model_dump_json()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpecKey) and self._json() == other._json()

    def __hash__(self) -> int:
        return hash(self._json())


def scaled_values(model: Any, names: tuple[str, ...], factor: float) -> dict[str, Any]:
    """Return ``{name: value * factor}`` for the named number (or per-group list) fields of
    ``model`` that are set (batch scaling's update; None stays None)."""
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(model, name, None)
        if isinstance(value, list):
            out[name] = [v * factor for v in value]
        elif value is not None:
            out[name] = value * factor
    return out


def group_mismatch(
    model: Any, names: tuple[str, ...], groups: int, path: tuple[str | int, ...] = ()
) -> tuple[tuple[str | int, ...], str] | None:
    """Return (location, message) of the first per-group list among ``names`` whose length is
    not ``groups``, or None."""
    for name in names:
        value = getattr(model, name, None)
        if isinstance(value, list) and len(value) != groups:
            return (*path, name), (
                f"{name}: {len(value)} values for {groups} param group"
                f"{'s' if groups != 1 else ''}; give one per group or a single number"
            )
    return None


def ignored_lr_warning(family: str, request: Any) -> list[str]:
    """Return a warning when ``request`` sets an lr that a family which sets the lr itself
    (optax, Megatron) does not read."""
    groups = request.param_groups or []
    if "lr" not in request.optimizer.model_fields_set and not any("lr" in g for g in groups):
        return []
    return [
        caveat(
            "family-ignores-lr",
            f"{family} sets the lr itself: the optimizer's and param_groups' lr are not used "
            "(give its lr-valued arguments as lists for one value per param group)",
        )
    ]


def selector_check(selector: str, names: tuple[str, ...], family: str) -> Callable[[Any], Any]:
    """Return a before-validator for a family's union: a missing or unknown ``selector`` is an
    error that lists the names and suggests the closest one."""
    import difflib

    from pydantic import ValidationError
    from pydantic_core import PydanticCustomError

    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        given = value.get(selector)
        if given in names:
            return value
        known = ", ".join(names)
        if given is None:
            raise PydanticCustomError(f"missing_{selector}", f"add `{selector}`: one of {known}")
        close = difflib.get_close_matches(str(given), names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        error = PydanticCustomError(
            f"unknown_{selector}", f"unknown {family} {selector} {given!r}; {hint}one of {known}"
        )
        raise ValidationError.from_exception_data(
            family, [{"type": error, "loc": (selector,), "input": given}]
        )

    return check
