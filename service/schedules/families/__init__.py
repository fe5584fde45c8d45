"""Scheduler families: one module per library, each registering its spec classes.

:mod:`.torch` holds ``torch.optim.lr_scheduler`` and ``SWALR``. Every module in this package
is imported by :func:`load`, so a new family is one new module here (see
:mod:`service.schedules.registry` for what its classes declare).
"""

import importlib
import pkgutil


def load() -> None:
    """Import every family module, registering its schedulers: torch's first, then the others
    by name (the order of the catalog and of the OpenAPI union)."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__))
    for name in ["torch", *(n for n in names if n != "torch")]:
        importlib.import_module(f"{__name__}.{name}")
