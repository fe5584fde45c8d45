"""How the engines run a library family: the torch engine's schedulers and the vectorized leaf.

:class:`LibraryLR` steps the real library's scheduler (timm, Megatron) from torch's step count;
:class:`ClosedFormLR` sets a closed form on the optimizer (optax, which is not torch);
:func:`family_leaf` gives the vectorized engine a family's closed form.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar, Protocol

import torch
from torch.optim.lr_scheduler import LRScheduler

from service.schedules.families import Library


class FamilySpec(Protocol):
    """What a family spec gives the engines (see each family module)."""

    library: ClassVar[Library]

    def lr(self, k: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Return the lr at scheduler steps ``k`` (int64), (groups, len(k)), float64."""
        ...

    def other_series(self, k: torch.Tensor, groups: int) -> dict[str, torch.Tensor]:
        """Return the other param-group values the library sets, by group key (e.g.
        Megatron's ``weight_decay``), each (groups, len(k)); empty for most families."""
        ...


class ClosedFormLR(LRScheduler):
    """A torch scheduler that sets every group's lr to a family's closed form at its step.

    For libraries that are not torch (optax): the values are the closed form's, evaluated in
    float64 at ``last_epoch``, set on a real optimizer like any torch scheduler's.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, spec: FamilySpec) -> None:
        self.spec = spec
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        base = torch.tensor([float(v) for v in self.base_lrs], dtype=torch.float64)[:, None]
        k = torch.tensor([self.last_epoch], dtype=torch.int64)
        return [float(v) for v in self.spec.lr(k, base)[:, 0]]


class LibraryLR(LRScheduler):
    """A torch scheduler driving the library's own scheduler object at torch's step count.

    ``make(optimizer)`` builds the library's scheduler (it sets the groups' values for step
    0, as the library does when constructed); ``drive(scheduler, k)`` makes it set step ``k``.
    The library object is built at the first step, so building this one (as the vectorized
    engine does, to read the base lrs) neither imports the library nor needs it installed;
    step 0 is the closed form's value, which the parity tests compare bit for bit.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        spec: FamilySpec,
        make: Callable[[torch.optim.Optimizer], Any],
        drive: Callable[[Any, int], None],
    ) -> None:
        self.spec = spec
        self._make = make
        self._drive = drive
        self._library: Any = None
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        k = self.last_epoch
        if self._library is None and k > 0:
            for group, lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = lr
            self._library = self._make(self.optimizer)
        if self._library is not None:
            self._drive(self._library, k)
        if k == 0:  # what the library sets when it is built (a restart in SequentialLR too)
            base = torch.tensor([float(v) for v in self.base_lrs], dtype=torch.float64)[:, None]
            zero = torch.zeros(1, dtype=torch.int64)
            if self._library is None:
                for key, values in self.spec.other_series(zero, len(self.base_lrs)).items():
                    for group, value in zip(self.optimizer.param_groups, values[:, 0], strict=True):
                        group[key] = float(value)
            return [float(v) for v in self.spec.lr(zero, base)[:, 0]]
        return [float(group["lr"]) for group in self.optimizer.param_groups]


def family_leaf(spec: FamilySpec, base: torch.Tensor) -> Any:
    """Return the vectorized engine's leaf for a family spec: its closed form sets the lr.

    ``base`` is the groups' initial lrs, (groups, 1); leaves of equal specs stack in a batch
    (rows are then groups of several requests, which the closed forms index modulo).
    """
    return _leaf_class()(base, spec=SpecKey(spec))


@cache
def _leaf_class() -> type:
    from service.schedules.vectorized import formulas  # the engine imports the families

    @dataclass(eq=False)
    class FamilyLeaf(formulas.Leaf):
        """A family's closed form: it sets the lr outright at every step (no chaining)."""

        spec: Any = None

        def closed(self, e: torch.Tensor, x: torch.Tensor, restarted: bool) -> torch.Tensor:
            return self.spec.value.lr(e, self.base)

        def step_map(self, e: torch.Tensor) -> Any:
            values = self.spec.value.lr(e, self.base)
            return torch.zeros_like(values), values

        def restart_map(self) -> Any:
            return self.step_map(torch.zeros(1, dtype=torch.int64, device=self.base.device))

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
