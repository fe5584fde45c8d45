"""The library families timm, optax and Megatron as the service sees them: which spec classes
a ``type`` and its selector name, and what the request pipeline asks of them (batch scaling,
per-group checks, warnings, the catalog and the ``families`` a response names)."""

from typing import Any

import numpy as np
import torch

from service.errors import InvalidSpec
from service.schedules.families import megatron, optax, timm
from service.schedules.families.adapters import ignored_lr_warning

FAMILIES: dict[str, tuple[str, tuple[type, ...]]] = {
    "timm": ("sched", timm.SCHEDULES),
    "optax": ("schedule", optax.SCHEDULES),
    "megatron": ("lr_decay_style", megatron.SCHEDULES),
}
"""Each family's ``type``: its selector field and one spec class per name."""

SPECS: tuple[type, ...] = (timm.TimmScheduler, optax.OptaxBase, megatron.MegatronScheduler)
"""The base classes: ``isinstance(spec, SPECS)`` is a spec of one of these families."""

BASES: dict[str, type] = {"timm": SPECS[0], "optax": SPECS[1], "megatron": SPECS[2]}


def is_family(spec: Any) -> bool:
    """Return True for a timm, optax or Megatron spec."""
    return isinstance(spec, SPECS)


def names(kind: str) -> list[str]:
    """Return the selector values the family ``kind`` accepts, in the library's order."""
    selector, classes = FAMILIES[kind]
    return [cls.model_fields[selector].default for cls in classes]


def choose(kind: str, params: dict[str, Any]) -> type:
    """Return the spec class ``params`` names for the family ``kind`` (its selector), raising
    InvalidSpec at the query parameter when it is missing or unknown."""
    import difflib

    selector, classes = FAMILIES[kind]
    given = params.get(selector)
    known = names(kind)
    if given in known:
        return classes[known.index(given)]
    if given is None:
        message = f"add `{selector}`: one of {', '.join(known)}"
    else:
        close = difflib.get_close_matches(str(given), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        message = f"unknown {kind} {selector} {given!r}; {hint}one of {', '.join(known)}"
    raise InvalidSpec(message, loc=("query", selector))


def check(request: Any) -> None:
    """Raise InvalidSpec (422) for what the spec alone cannot tell: a per-group list whose
    length is not the number of param groups, a weight_decay series from a schedule that
    does not set it."""
    spec = request.scheduler
    if is_family(spec):
        found = spec.mismatch(request.n_groups)
        if found is not None:
            loc, message = found
            raise InvalidSpec(message, loc=("body", "scheduler", *loc))
    if "weight_decay" in request.include and not (
        isinstance(spec, megatron.MegatronScheduler) and request.warmup is None
    ):
        raise InvalidSpec(
            "include 'weight_decay': only a megatron scheduler (at the top, without warmup) "
            "sets the weight decay; drop 'weight_decay' from include",
            loc=("body", "include"),
        )


def families(request: Any) -> list[dict[str, str | None]]:
    """Return ``{family, library, version}`` of the request's family spec, if it has one."""
    spec = request.scheduler
    return [spec.library.info()] if is_family(spec) else []


def weight_decay(request: Any, steps: np.ndarray) -> np.ndarray | None:
    """Return Megatron's weight decay per group at scheduler ``steps`` when the request
    includes it (the vectorized engine's closed form), else None."""
    if "weight_decay" not in request.include:
        return None
    k = torch.as_tensor(steps, dtype=torch.int64)
    return request.scheduler.weight_decay(k, request.n_groups).cpu().numpy()


def warnings(request: Any, span: int) -> list[str]:
    """Return the cross-library surprises of a family spec over ``span`` scheduler steps."""
    spec = request.scheduler
    if not is_family(spec):
        return []
    out = spec.caveats(span)
    if spec.sets_lr:
        out += ignored_lr_warning(spec.type, request)
    return out


def catalog_entries() -> list[dict[str, Any]]:
    """Return one catalog entry per family name (the members of ``CatalogEntry``)."""
    out = []
    for kind, (selector, classes) in FAMILIES.items():
        for cls in classes:
            name = cls.model_fields[selector].default
            doc = (cls.__doc__ or name).strip().splitlines()
            example = dict(cls.examples[0])
            request: dict[str, Any] = {"scheduler": example, "steps": 200}
            if getattr(cls, "metric_driven", False):
                request = {**request, "steps": 10, "metrics": [1.0, 0.9, 0.95, 0.95, 0.95, 0.95,
                                                               0.8, 0.8, 0.8]}  # fmt: skip
            out.append(
                {
                    "type": kind,
                    "name": name,
                    "torch_class": f"{cls.library.package} {cls.library.version}: "
                    f"{_source(kind, name)}",
                    "description": doc[0],
                    "parameters": cls.model_json_schema(),
                    "defaults": {
                        n: f.default
                        for n, f in cls.model_fields.items()
                        if n not in ("type", selector) and not f.is_required()
                    },
                    "required": [n for n, f in cls.model_fields.items() if f.is_required()],
                    "example": request,
                }
            )
    return out


def _source(kind: str, name: str) -> str:
    if kind == "timm":
        return f"timm.scheduler.create_scheduler_v2(sched={name!r})"
    if kind == "optax":
        return f"optax.{name}"
    return f"OptimizerParamScheduler(lr_decay_style={name!r})"
