"""What every family module shares."""

import difflib
import importlib
import importlib.metadata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType

import torch
from pydantic import BaseModel, Field

from service.errors import InvalidSpec

Tensor = torch.Tensor


class FamilyRef(BaseModel):
    """Which family a schedule comes from, and whose semantics it reproduces."""

    family: str = Field(description="The spec's family (its `type`, or `warmup.type`'s library).")
    library: str | None = Field(description="The library's distribution name; null: a paper.")
    version: str | None = Field(description="The library release reproduced (installed or pinned).")
    source: str = Field(description="Where the formulas come from.")


@dataclass(frozen=True)
class Library:
    """The library a family reproduces: its distribution name, import name and pinned release.

    ``pinned`` is the release whose semantics the closed forms reproduce and the parity tests
    check; ``version`` is the installed one when the library is installed, else ``pinned``.
    """

    family: str
    distribution: str
    module: str
    pinned: str
    source: str

    @property
    def installed(self) -> bool:
        """Return True when the library can be imported here."""
        try:
            importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return False
        return True

    @property
    def version(self) -> str:
        """Return the installed release, or the pinned one when the library is not installed."""
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return self.pinned

    @property
    def ref(self) -> FamilyRef:
        """Return the family reference a response carries."""
        return FamilyRef(
            family=self.family, library=self.distribution, version=self.version, source=self.source
        )

    def load(
        self, submodule: str = "", loc: tuple[str | int, ...] = ("body", "engine")
    ) -> ModuleType:
        """Return the library's module (``submodule`` under it), imported now.

        Raises InvalidSpec (422) at ``loc`` when the library is not installed: the torch
        engine runs the real library, the vectorized engine does not need it.
        """
        name = f"{self.module}.{submodule}" if submodule else self.module
        try:
            return importlib.import_module(name)
        except ImportError:
            raise InvalidSpec(
                f"engine 'torch' runs {self.distribution} itself, and it is not installed on this "
                f"server (pip install {self.distribution}=={self.pinned}); use engine 'auto' or "
                "'vectorized', whose closed forms reproduce it without the library.",
                loc=loc,
            ) from None


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest of ``choices`` ("" when none is close)."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


class Factor:
    """An lr multiplier as a function of the scheduler's step count, in two forms.

    ``factor(epoch)`` (Python floats) is what a ``LambdaLR`` calls; ``evaluate_tensor(e)``
    (``e`` a float64 tensor of step counts) is the same formula as tensor operations, which
    the vectorized engine evaluates at only the requested steps.
    """

    def __call__(self, epoch: int) -> float:
        return float(self.evaluate_tensor(torch.tensor([float(epoch)], dtype=torch.float64))[0])

    def evaluate_tensor(self, e: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class TensorFactor(Factor):
    """A :class:`Factor` given by one tensor function of the step counts."""

    fn: Callable[[Tensor], Tensor]

    def evaluate_tensor(self, e: Tensor) -> Tensor:
        return self.fn(e)
