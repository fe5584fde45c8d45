"""Schedules from other libraries, one module per library ("family").

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


# The transformers, pytorch_warmup and llm modules build on the spec base classes and the specs
# import them into their unions: importing the specs here lets any family module be imported
# first (a family module imported before the specs would be only half defined when they ask).
import service.schedules.specs  # noqa: E402, F401
