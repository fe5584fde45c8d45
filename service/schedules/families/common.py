"""What the torch-based family modules share: loading the real library, "did you mean",
and the lr multiplier the vectorized engine evaluates."""

import difflib
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType

import torch

from service.errors import InvalidSpec
from service.schedules.families import Library

Tensor = torch.Tensor


def installed(library: Library) -> bool:
    """Return True when ``library``'s package is installed here."""
    return library.installed_version() is not None


def load(library: Library, module: str) -> ModuleType:
    """Return ``module`` of ``library``, imported now.

    Raises InvalidSpec (422, at ``engine``) when the library is not installed: the torch
    engine runs the real library; the vectorized engine's closed forms need none.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InvalidSpec(
            f"engine 'torch' runs {library.package} itself, and it is not installed on this "
            f"server (pip install {library.package}=={library.version}); use engine 'auto' or "
            "'vectorized', whose closed forms reproduce it without the library.",
            loc=("body", "engine"),
        ) from None


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest of ``choices`` ("" when none is close)."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
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
    bound: float | None = None
    """A bound on ``|fn(e)|`` over every step count ``e >= 0`` when one is known (a library's
    closed form whose arguments make every step finite), else None. The vectorized engine
    skips the dense finiteness check of a bounded factor (and its refusal scan: a tensor
    formula refuses no step) when ``bound`` times the largest base lr is finite."""

    def evaluate_tensor(self, e: Tensor) -> Tensor:
        return self.fn(e)
