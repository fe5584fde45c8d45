"""Scheduler families: one module per library, each registering its spec classes.

:mod:`.torch` holds ``torch.optim.lr_scheduler`` and ``SWALR``; every other module is another
library's schedules ("family"). :func:`load` imports every module in this package, so a new
family is one new module here (see :mod:`service.schedules.registry` for what its classes
declare and how they join).

A family spec is ``{"type": "<family>", <the library's own selector>, ...its own argument
names}``: ``{"type": "timm", "sched": "cosine", ...}`` is timm's ``create_scheduler_v2``,
``{"type": "optax", "schedule": "warmup_cosine_decay_schedule", ...}`` is that optax
function, ``{"type": "megatron", "lr_decay_style": "WSD", ...}`` is Megatron-core's
``OptimizerParamScheduler``. Each module holds its spec models, the closed forms the
vectorized engine evaluates (pure functions of a float64 step tensor, per param group), and
what the torch engine builds: the real library's scheduler where it is installed beside
torch, else a scheduler over the closed form. :class:`Library` names the release whose
semantics a family reproduces; responses report it.
"""

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
import types
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Library:
    """The library a family mirrors: its package and the release our closed forms follow."""

    family: str
    """The spec's ``type``."""
    package: str
    """The distribution name (``pip install <package>``)."""
    version: str
    """The release whose semantics the closed forms reproduce (the one the tests pin)."""

    def installed_version(self) -> str | None:
        """Return the installed release of the package, or None when it is not installed."""
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None

    def info(self) -> dict[str, str]:
        """Return what a response says about the family: ``{family, library, version}``."""
        return {"family": self.family, "library": self.package, "version": self.version}


@cache
def import_submodule_only(package: str, submodule: str) -> types.ModuleType | None:
    """Return ``package.submodule`` imported without running ``package/__init__.py``.

    timm's ``__init__`` imports torchvision, which cannot be installed beside this torch;
    its ``timm.scheduler`` modules need only torch. A bare package object stands in for
    ``package`` in ``sys.modules`` (only when the package itself is not imported already).
    Returns None when the package is not installed.
    """
    name = f"{package}.{submodule}"
    if name in sys.modules:
        return sys.modules[name]
    if package not in sys.modules:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return None
        shell = types.ModuleType(package)
        shell.__path__ = list(spec.submodule_search_locations)
        shell.__spec__ = spec
        sys.modules[package] = shell
    return importlib.import_module(name)


HELPERS = frozenset({"adapters", "common", "hooks"})
"""Modules of this package that are shared code, not families."""


def load() -> None:
    """Import every family module, registering its schedulers: torch's first, then the others
    by name (the order of the catalog and of the OpenAPI union)."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in HELPERS)
    for name in ["torch", *(n for n in names if n != "torch")]:
        importlib.import_module(f"{__name__}.{name}")


# The family modules build on the spec base classes, and the specs load every family: importing
# the specs here lets any family module be imported first (a family module imported before the
# specs would be only half defined when they ask for it).
import service.schedules.specs  # noqa: E402, F401
