"""The resume check from a real scheduler state: ``scheduler.state_dict()`` (as JSON, or a
``.pt`` made by ``torch.save``) loaded into the spec's scheduler, and the lr of the next N
optimizer steps, beside the run that never stopped.

The state is checked against the ``state_dict()`` of the scheduler the spec builds (the
template) before torch sees it: the same keys (a StepLR state given for a CosineAnnealingLR
spec is refused, naming the keys), numbers where numbers are (JSON's ``Infinity`` and the
strings ``"Infinity"``/``"-Infinity"``, as ReduceLROnPlateau's ``best`` holds, included),
lists as long as the spec has param groups, ``MultiStepLR``'s milestone ``Counter`` from
JSON's string keys. ``load_state_dict`` copies every key onto the scheduler, so no key the
template lacks ever reaches it. LambdaLR's saved ``lr_lambdas`` entries are dropped: the
spec's expressions are the lambdas.

The optimizer's groups get the state's ``_last_lr`` (what the optimizer held when it was
saved: most of torch's schedulers compute the next lr from the group's current one).
"""

import copy
import io
import math
import pickle
import warnings
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from service.errors import InvalidSpec, LimitExceeded, ServiceError
from service.schedules import budget, compare, counters, resume, service, specs
from service.schedules.families import hooks as families
from service.schedules.families import transformers as hf
from service.schedules.families.common import installed
from service.settings import Settings

TOLERANCE = resume.TOLERANCE

ACCEPTED = (
    "torch's own schedulers (SequentialLR and ChainedScheduler included), the service's linear "
    "and constant warmups (a SequentialLR of the warmup and the scheduler) and transformers "
    "schedules (LambdaLRs)"
)

OPTIONAL_KEYS = frozenset({"_is_initial", "_get_lr_called_within_step", "verbose"})
"""Keys one torch version saves and another does not: missing ones take the template's
value, unexpected ones are dropped."""

INTEGER_KEYS = frozenset(
    {"last_epoch", "_step_count", "total_steps", "num_bad_epochs", "cooldown_counter"}
)
"""Counters torch indexes or compares with: they must be whole numbers."""

MAX_INT = 2**53
MAX_DIFFERENCES = 20
INFINITIES = {"Infinity": math.inf, "-Infinity": -math.inf, "inf": math.inf, "-inf": -math.inf}


class StateTooLarge(ServiceError):
    status = 413
    title = "Payload too large"
    slug = "payload-too-large"


class Refused(InvalidSpec):
    """A state (or upload) that cannot be loaded into the spec's scheduler."""


# --------------------------------------------------------------------------- the .pt


def load_pt(data: bytes, field: str = "state") -> Any:
    """Return what ``torch.save`` wrote in ``data``, loaded with ``weights_only=True`` (tensors,
    numbers, strings and containers only); refuse anything else with a 422 saying why."""
    loc = ("body", field)
    if not data:
        raise Refused(
            f"{field}: the uploaded file is empty; upload torch.save(scheduler.state_dict(), "
            "'state.pt')'s file",
            loc=loc,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        culprit = _culprit(str(exc))
        if culprit is None:  # weights_only's other refusals: opcodes torch.save never writes
            raise Refused(_not_torch(field), loc=loc) from None
        raise Refused(
            f"{field}: the .pt holds {culprit}, which torch.load(weights_only=True) refuses: "
            "only tensors, numbers, strings and lists/dicts/tuples load. Save the "
            "scheduler's state_dict() itself (torch.save(scheduler.state_dict(), "
            "'state.pt')), not the scheduler, a lambda or another object.",
            loc=loc,
        ) from None
    except Exception:  # whatever else torch.load raises on bytes it cannot read
        raise Refused(_not_torch(field), loc=loc) from None


def _not_torch(field: str) -> str:
    return (
        f"{field}: the upload is not a file torch.save wrote (torch.load cannot read it); "
        "upload the .pt of torch.save(scheduler.state_dict(), 'state.pt'), or send the state "
        "as JSON in the body's 'state' field"
    )


def _culprit(text: str) -> str | None:
    """Return what the weights-only unpickler refused (``GLOBAL __main__.Foo``) readably, or
    None when it refused no named object."""
    marker = "Unsupported global: GLOBAL "
    at = text.find(marker)
    if at < 0:
        return None
    name = text[at + len(marker) :].split()[0].rstrip(".,;:")
    return f"a {name} object"


def picked(loaded: Any) -> tuple[Any, list[str]]:
    """Return the scheduler state inside what a .pt held: itself, or the ``scheduler`` /
    ``lr_scheduler`` entry of a whole checkpoint (with a note saying it was taken)."""
    if isinstance(loaded, Mapping) and not _looks_like_state(loaded):
        for key in ("scheduler", "lr_scheduler", "scheduler_state_dict", "lr_scheduler_state_dict"):
            inner = loaded.get(key)
            if isinstance(inner, Mapping) and _looks_like_state(inner):
                return inner, [f"the .pt holds a checkpoint; its {key!r} entry was loaded"]
    return loaded, []


def _looks_like_state(value: Mapping) -> bool:
    return any(k in value for k in ("last_epoch", "_last_lr", "_schedulers", "base_lrs"))


STATE_MAX_NODES = 20_000
"""Numbers, strings, lists and dicts a loaded .pt may hold (a scheduler's state holds tens; a
pickle's memo lets a file of a kilobyte describe 2**60 shared sub-lists)."""
STATE_MAX_DEPTH = 32
"""How deeply a loaded .pt's lists and dicts may nest (SequentialLR of ChainedScheduler: 5)."""


def jsonable(value: Any, path: str = "state") -> Any:
    """Return the loaded .pt as the JSON state would be (0-d tensors as numbers, tuples as
    lists, mapping keys as given); refuse a tensor of more than one value, keys JSON has no
    form for, and anything nested deeper than STATE_MAX_DEPTH or larger than STATE_MAX_NODES
    (each shared sub-list counted every time it appears)."""
    nodes = [0]
    return _jsonable(value, path, 0, nodes)


def _jsonable(value: Any, path: str, depth: int, nodes: list[int]) -> Any:
    nodes[0] += 1
    if nodes[0] > STATE_MAX_NODES or depth > STATE_MAX_DEPTH:
        raise Refused(
            f"{path}: the .pt holds more than {STATE_MAX_NODES} values or nests deeper than "
            f"{STATE_MAX_DEPTH} levels; a scheduler state is a small dict of numbers and lists. "
            "Save scheduler.state_dict() itself.",
            loc=("body", "state"),
        )
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dim() > 1:
            raise Refused(
                f"{path}: a tensor of shape {list(value.shape)}; a scheduler state holds numbers "
                "and lists of numbers. Save scheduler.state_dict() (not a model or optimizer).",
                loc=("body", "state"),
            )
        return value.item()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int, float)) or isinstance(k, bool):
                raise Refused(
                    f"{path}: a key of type {type(k).__name__} ({k!r}); a scheduler state's "
                    "keys are strings or numbers",
                    loc=("body", "state"),
                )
            out[k] = _jsonable(v, f"{path}.{k}", depth + 1, nodes)
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{path}[{i}]", depth + 1, nodes) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise Refused(
        f"{path}: a {type(value).__name__}; a scheduler state holds numbers, strings, lists "
        "and dicts",
        loc=("body", "state"),
    )


# --------------------------------------------------------------------------- the state


def _where(path: list[str | int]) -> str:
    out = "state"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _loc(path: list[str | int]) -> tuple[str | int, ...]:
    return ("body", "state", *path)


def _look_alike(keys: set[str]) -> str | None:
    """Return the torch scheduler class whose parameters the state's keys hold the most of."""
    import inspect

    from torch.optim import lr_scheduler

    best, score = None, 0
    for name in dir(lr_scheduler):
        cls = getattr(lr_scheduler, name)
        if not (isinstance(cls, type) and name[0].isupper()) or name.startswith("_"):
            continue
        if not issubclass(cls, (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)):
            continue
        if cls in (lr_scheduler.LRScheduler, lr_scheduler._LRScheduler):
            continue
        try:
            params = set(inspect.signature(cls.__init__).parameters)
        except (TypeError, ValueError):
            continue
        params -= {"self", "optimizer", "last_epoch", "verbose", "schedulers"}
        if not params or not params <= keys:
            continue
        if len(params) > score:
            best, score = name, len(params)
    if "_schedulers" in keys:
        return "SequentialLR" if "_milestones" in keys else "ChainedScheduler"
    return best


def _number(given: Any, template: Any, key: str | int, path: list[str | int]) -> Any:
    if isinstance(given, str) and given in INFINITIES:
        given = INFINITIES[given]
    if isinstance(given, bool) or not isinstance(given, (int, float)):
        raise Refused(
            f"{_where(path)}: expected a number (as the spec's scheduler has: {template!r}), got "
            f"{_show(given)}",
            loc=_loc(path),
        )
    if isinstance(given, float) and math.isnan(given):
        raise Refused(f"{_where(path)}: NaN is not a value torch can resume from", loc=_loc(path))
    if key in INTEGER_KEYS:
        if isinstance(given, float):
            if not given.is_integer():
                raise Refused(
                    f"{_where(path)}: must be a whole number, got {given!r}", loc=_loc(path)
                )
            given = int(given)
        if abs(given) > MAX_INT:
            raise Refused(f"{_where(path)}: {given} is out of range (±2**53)", loc=_loc(path))
    elif isinstance(given, int) and abs(given) > MAX_INT:
        raise Refused(f"{_where(path)}: {given} is out of range (±2**53)", loc=_loc(path))
    return given


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def normalized(given: Any, template: Any, path: list[str | int], notes: list[str]) -> Any:
    """Return ``given`` in the types of ``template`` (the fresh scheduler's state_dict, or a
    value of it); raise Refused saying what to change when it does not fit."""
    key = path[-1] if path else None
    if isinstance(template, Counter):
        if not isinstance(given, Mapping):
            raise Refused(
                f"{_where(path)}: expected the milestones as a dict of step: count, got "
                f"{_show(given)}",
                loc=_loc(path),
            )
        out: Counter = Counter()
        for k, v in given.items():
            try:
                step = int(k)
            except (TypeError, ValueError):
                raise Refused(
                    f"{_where(path)}: milestone {k!r} is not a whole number", loc=_loc(path)
                ) from None
            if isinstance(v, bool) or not isinstance(v, int) or v < 0 or abs(step) > MAX_INT:
                raise Refused(
                    f"{_where(path)}: milestone {k!r} needs a count (a whole number "
                    f"≥ 0), got {_show(v)}",
                    loc=_loc(path),
                )
            out[step] = v
        return out
    if isinstance(template, Mapping):
        if not isinstance(given, Mapping):
            raise Refused(
                f"{_where(path)}: expected a dict (a state_dict()), got {_show(given)}",
                loc=_loc(path),
            )
        given_keys = {str(k) for k in given}
        want = set(template)
        missing = sorted(want - given_keys - OPTIONAL_KEYS)
        unexpected = sorted(given_keys - want - OPTIONAL_KEYS)
        if missing or unexpected:
            raise _mismatch(path, missing, unexpected, given_keys, template)
        out_map: dict[str, Any] = {}
        for name, value in template.items():
            if name not in given:
                out_map[name] = copy.deepcopy(value)
                continue
            if name == "lr_lambdas":
                out_map[name] = _lambdas(given[name], value, [*path, name], notes)
                continue
            out_map[name] = normalized(given[name], value, [*path, name], notes)
        return out_map
    if isinstance(template, (list, tuple)):
        if not isinstance(given, (list, tuple)):
            raise Refused(f"{_where(path)}: expected a list, got {_show(given)}", loc=_loc(path))
        if len(given) != len(template):
            raise Refused(_length(path, len(given), len(template)), loc=_loc(path))
        items = [
            normalized(g, t, [*path, i], notes)
            for i, (g, t) in enumerate(zip(given, template, strict=True))
        ]
        return tuple(items) if isinstance(template, tuple) else items
    if isinstance(template, bool):
        if not isinstance(given, bool):
            raise Refused(
                f"{_where(path)}: expected true or false, got {_show(given)}", loc=_loc(path)
            )
        return given
    if isinstance(template, (int, float)):
        return _number(given, template, key if isinstance(key, str) else "", path)
    if isinstance(template, str):
        if not isinstance(given, str) or len(given) > 100:
            raise Refused(
                f"{_where(path)}: expected a string such as {template!r}, got {_show(given)}",
                loc=_loc(path),
            )
        return given
    if template is None:
        if given is not None:
            raise Refused(
                f"{_where(path)}: expected null (the spec's scheduler has none), got "
                f"{_show(given)}",
                loc=_loc(path),
            )
        return None
    raise Refused(f"{_where(path)}: cannot be loaded ({type(template).__name__})", loc=_loc(path))


def _lambdas(given: Any, template: Any, path: list[str | int], notes: list[str]) -> list[None]:
    """LambdaLR's ``lr_lambdas``: one entry per group (None for a function, a dict of a
    callable object's attributes); the spec's expressions are the lambdas, so none is loaded."""
    if not isinstance(given, (list, tuple)) or len(given) != len(template):
        raise Refused(
            _length(path, len(given) if isinstance(given, (list, tuple)) else -1, len(template)),
            loc=_loc(path),
        )
    if any(g not in (None, {}) for g in given):
        notes.append(
            f"{_where(path)}: the saved lambdas' attributes were not loaded: the spec's "
            "lr_lambda expressions are the lambdas"
        )
    return [None] * len(template)


def _length(path: list[str | int], got: int, want: int) -> str:
    name = path[-1] if path else "state"
    if name in (
        "base_lrs",
        "_last_lr",
        "min_lrs",
        "max_lrs",
        "base_momentums",
        "max_momentums",
        "lr_lambdas",
    ):
        return (
            f"{_where(path)} has {got} entries, one per param group, but the spec has {want} "
            f"param group{'s' if want != 1 else ''}: set spec.param_groups to {got} groups "
            "(as the optimizer that saved it had)"
        )
    if name == "_schedulers":
        return (
            f"{_where(path)} holds {got} schedulers, the spec's scheduler {want}; "
            "give the spec the same nesting as the scheduler that saved the state"
        )
    return f"{_where(path)} has {got} entries; the spec's scheduler has {want}"


def _mismatch(
    path: list[str | int],
    missing: list[str],
    unexpected: list[str],
    given_keys: set[str],
    template: Mapping,
) -> Refused:
    where = _where(path)
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if unexpected:
        parts.append(f"unexpected {', '.join(unexpected)}")
    mine = _look_alike(set(template)) or "the spec's scheduler"
    theirs = _look_alike(given_keys)
    like = f"; it looks like a {theirs} state" if theirs and theirs != mine else ""
    return Refused(
        f"{where} does not fit the spec's scheduler ({mine}): {'; '.join(parts)}{like}. Send "
        f"the state_dict() of a {mine} (or change spec.scheduler to the scheduler that saved "
        "the state).",
        loc=_loc(path),
    )


def _position(state: Mapping) -> int:
    """Return the scheduler steps the state has taken (``last_epoch``; a ChainedScheduler's
    is its first child's)."""
    if "last_epoch" in state:
        return int(state["last_epoch"])
    children = state.get("_schedulers") or []
    return _position(children[0]) if children else 0


def _differences(given: Any, other: Any, path: list[str | int], out: list[dict[str, Any]]) -> None:
    """Append ``{key, state, uninterrupted}`` for every value of ``given`` unlike ``other``'s."""
    if isinstance(given, Mapping) and isinstance(other, Mapping):
        for name in given:
            if name in ("lr_lambdas", "_get_lr_called_within_step", "_is_initial", "verbose"):
                continue
            if name in other:
                _differences(given[name], other[name], [*path, name], out)
        return
    lists = isinstance(given, (list, tuple)) and isinstance(other, (list, tuple))
    if lists and len(given) == len(other):
        for i, (a, b) in enumerate(zip(given, other, strict=True)):
            _differences(a, b, [*path, i], out)
        return
    if isinstance(given, Counter) or isinstance(other, Counter):
        given, other = dict(given), dict(other)
    if not _same(given, other):
        out.append(
            {
                "key": _where(path)[len("state.") :] or "state",
                "state": _plain(given),
                "uninterrupted": _plain(other),
            }
        )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, bool) or isinstance(b, bool):
            return a is b
        return a == b or (math.isinf(a) and a == b)
    return a == b


def _plain(value: Any) -> Any:
    """Return ``value`` as the response can carry it (inf as the string "Infinity")."""
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- the check


def refuse_unsupported(spec: specs.ScheduleRequest) -> None:
    """Refuse (422) a spec whose scheduler has no torch state the service can load."""
    for info in families.families(spec):
        if info["family"] == "transformers":
            continue
        raise Refused(
            f"a scheduler state can be loaded for {ACCEPTED}; spec uses {info['family']}, whose "
            "scheduler has no torch state_dict() to load here. Use resume_at instead of state.",
            loc=("body", "spec", "scheduler"),
        )
    plateau = isinstance(spec.scheduler, specs.ReduceLROnPlateau) or getattr(
        spec.scheduler, "metric_driven", False
    )
    if plateau and spec.warmup is not None:
        raise Refused(
            "a state for ReduceLROnPlateau after a warmup: torch has no scheduler that chains "
            "them (SequentialLR refuses ReduceLROnPlateau), so no state_dict() to load; drop "
            "spec.warmup and send the ReduceLROnPlateau's state",
            loc=("body", "spec", "warmup"),
        )
    for node in specs.walk(spec.scheduler):
        if isinstance(node, hf.TransformersSchedule) and not installed(hf.LIBRARY):
            raise Refused(
                "transformers is not installed here, so its scheduler cannot load a state",
                loc=("body", "spec", "scheduler"),
            )


def _check_window(
    request: resume.ResumeRequest, spec: specs.ScheduleRequest, k: int, settings: Settings
) -> tuple[int, int, int]:
    """Return (first optimizer step, window length, scheduler steps to run) for a state at
    scheduler step ``k``, refusing what is over a limit."""
    spe = spec.steps_per_epoch if spec.interval == "epoch" else 1
    first = k * spe
    if k < 0:
        raise Refused(
            f"state.last_epoch is {k}; a state_dict() saved after construction has last_epoch ≥ 0",
            loc=("body", "state", "last_epoch"),
        )
    n = request.next_steps
    if n is None:
        if first >= spec.steps:
            raise Refused(
                f"the state is at optimizer step {first} (last_epoch {k}), at or past the end of "
                f"spec.steps={spec.steps}: give next_steps (how many steps to answer) or raise "
                "spec.steps",
                loc=("body", "next_steps"),
            )
        n = spec.steps - first
    end = first + n
    if end > settings.torch_max_steps:
        raise LimitExceeded(
            f"the state is at optimizer step {first} and next_steps={n} runs to step {end}, above "
            f"the torch engine's limit of {settings.torch_max_steps} (LRS_TORCH_MAX_STEPS); "
            "lower next_steps",
            loc=("body", "next_steps"),
        )
    if n > settings.json_max_points:
        raise LimitExceeded(
            f"next_steps={n} is above {settings.json_max_points} values per group "
            "(LRS_JSON_MAX_POINTS)",
            loc=("body", "next_steps"),
        )
    sched_steps = -(-end // spe)
    cost = budget.cost(spec.model_copy(update={"steps": sched_steps * spe}), "torch").total
    work = cost + (cost * (sched_steps - k)) // max(sched_steps, 1)
    if work > settings.torch_max_work:
        raise LimitExceeded(
            f"the check steps the uninterrupted run {sched_steps} scheduler steps and the loaded "
            f"one {sched_steps - k}: {work} scheduler updates, above {settings.torch_max_work} "
            "(LRS_TORCH_MAX_WORK); lower next_steps",
            loc=("body", "next_steps"),
        )
    return first, n, sched_steps


def check_state(
    request: resume.ResumeRequest, settings: Settings, source: str = "json"
) -> dict[str, Any]:
    """Return the body of `POST /v1/schedules/resume` for a request with ``state``."""
    assert request.state is not None
    spec = request.spec
    refuse_unsupported(spec)
    scaled = service.apply_batch_scaling(spec)
    plan = counters.resume_plan(scaled)
    notes: list[str] = []
    template_run = resume._Run(scaled)
    template = template_run.stepper.scheduler.state_dict()
    if scaled.warmup is not None and "_schedulers" not in request.state:
        raise Refused(
            "the spec has a warmup, so its scheduler is the SequentialLR of the warmup and "
            f"{scaled.scheduler.type} (as export?target=torch writes it); this state has no "
            "_schedulers: send that SequentialLR's state_dict(), or drop spec.warmup to load "
            f"a {scaled.scheduler.type} state alone",
            loc=("body", "state"),
        )
    state = normalized(request.state, template, [], notes)
    k = _position(state)
    first, n, sched_steps = _check_window(request, scaled, k, settings)
    extended = scaled.model_copy(update={"steps": max(scaled.steps, first + n)})
    if template_run.stepper.plateau:
        have = len(scaled.metrics or [])
        if have < sched_steps - 1:
            raise Refused(
                f"ReduceLROnPlateau needs a metric for every scheduler step up to "
                f"{sched_steps - 1} (the state is at {k}, next_steps={n}); spec.metrics has "
                f"{have}: add metrics (index j feeds scheduler step j + 1) or lower next_steps",
                loc=("body", "spec", "metrics"),
            )

    loaded = _loaded_rows(extended, state, k, sched_steps)
    spe = scaled.steps_per_epoch if scaled.interval == "epoch" else 1
    # the counters' at-queries may ask for any step of the spec's run: run it all then
    ref_steps = max(sched_steps, -(-extended.steps // spe)) if plan is not None else sched_steps
    reference, at_k, refused = _uninterrupted(extended, k, ref_steps)
    window = np.arange(first, first + n)
    ours = np.asarray(loaded, dtype=np.float64).T[:, window // spe - k]
    differences: list[dict[str, Any]] = []
    if at_k is not None:
        _differences(state, at_k, [], differences)
    if reference is not None:
        theirs = np.asarray(reference, dtype=np.float64).T[:, window // spe]
        diff = compare.pair_diff(ours, theirs, window, TOLERANCE)
        verdict = _verdict(diff, ours, theirs, first)
        uninterrupted = theirs.tolist()
    else:
        diff = {"first_difference": None, "max_abs_diff": 0.0, "max_rel_diff": 0.0}
        verdict = f"not compared: {refused}"
        uninterrupted = None
        notes.append(f"the uninterrupted run cannot reach these steps: {refused}")
    if at_k is None:
        match, summary = None, f"not compared: {refused}"
    elif differences:
        shown = "; ".join(
            f"{d['key']} {_short(d['state'])} instead of {_short(d['uninterrupted'])}"
            for d in differences[:3]
        )
        more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
        match, summary = (
            False,
            (f"differs from the uninterrupted run's state at scheduler step {k}: {shown}{more}"),
        )
    else:
        match, summary = True, f"matches the uninterrupted run's state at scheduler step {k}"
    body = {
        "steps": window.tolist(),
        "resume_at": first,
        "uninterrupted": uninterrupted,
        "recipes": {"state": {"lr": ours.tolist(), **diff, "verdict": verdict}},
        "state": {
            "source": source,
            "last_epoch": k,
            "matches_uninterrupted": match,
            "differences": differences[:MAX_DIFFERENCES],
            "verdict": summary,
        },
        "warnings": notes,
    }
    if plan is None:
        return body
    if reference is None:
        body["warnings"].append(
            "counters: not given, the uninterrupted run stops before these steps"
        )
        return body
    full = resume._by_optimizer_step(extended, reference)
    return counters.resume_counters(body, plan, full, window, first)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return _show(value)


def _verdict(diff: dict[str, Any], ours: np.ndarray, theirs: np.ndarray, first: int) -> str:
    step = diff["first_difference"]
    if step is None:
        return "identical"
    col = step - first
    group = int(np.argmax(np.abs(ours[:, col] - theirs[:, col])))
    where = f" (group {group})" if ours.shape[0] > 1 else ""
    return (
        f"differs from step {step}{where}: lr {ours[group, col]:.6g} instead of "
        f"{theirs[group, col]:.6g}"
    )


def _torch_refused(what: str, j: int, exc: BaseException) -> Refused:
    return Refused(
        f"torch refused {what} at scheduler step {j}: {type(exc).__name__}: {exc}. Check the "
        "state's values (or lower next_steps)",
        loc=("body", "state"),
    )


def _loaded_rows(
    spec: specs.ScheduleRequest, state: dict[str, Any], k: int, sched_steps: int
) -> list[list[float]]:
    """Return the lr of scheduler steps k..sched_steps-1 after loading ``state``."""
    run = resume._Run(spec)
    stepper = run.stepper
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stepper.scheduler.load_state_dict(copy.deepcopy(state))
    except Exception as exc:  # torch's load_state_dict raises many types on odd values
        raise _torch_refused("load_state_dict", k, exc) from None
    for group, lr in zip(stepper.optimizer.param_groups, state["_last_lr"], strict=True):
        group["lr"] = lr
    stepper._step_count = k
    rows = [stepper.lrs()]
    j = k
    try:
        for j in range(k + 1, sched_steps):
            metric = run.metrics[j - 1] if stepper.plateau else None
            stepper.step(metric)
            rows.append(stepper.lrs())
            if j % 256 == 0:
                budget.check()
    except (ServiceError, budget.Cancelled):
        raise
    except Exception as exc:  # the loaded values are the user's: any step may fail
        raise _torch_refused("the loaded scheduler's step", j, exc) from None
    bad = ~np.isfinite(np.asarray(rows, dtype=np.float64))
    if bad.any():
        row = int(np.argmax(bad.any(axis=1)))
        raise Refused(
            f"after loading the state, the lr is not finite at scheduler step {k + row}; check "
            "the state's values",
            loc=("body", "state"),
        )
    return rows


def _uninterrupted(
    spec: specs.ScheduleRequest, k: int, sched_steps: int
) -> tuple[list[list[float]] | None, dict[str, Any] | None, str | None]:
    """Return the never-stopped run's lr at scheduler steps 0..sched_steps-1 and its
    scheduler state at step ``k``; (None, state or None, why) where torch stops it earlier."""
    run = resume._Run(spec)
    stepper = run.stepper
    rows = [stepper.lrs()]
    at_k = copy.deepcopy(stepper.scheduler.state_dict()) if k == 0 else None
    j = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for j in range(1, sched_steps):
                metric = run.metrics[j - 1] if stepper.plateau else None
                stepper.step(metric)
                rows.append(stepper.lrs())
                if j == k:
                    at_k = copy.deepcopy(stepper.scheduler.state_dict())
                if j % 256 == 0:
                    budget.check()
    except (ServiceError, budget.Cancelled):
        raise
    except Exception as exc:
        return None, at_k, f"torch refused scheduler step {j}: {type(exc).__name__}: {exc}"
    if at_k is None:  # the state is past the window's start (k ≥ sched_steps cannot happen)
        return None, None, f"the run has fewer than {k} scheduler steps"
    return rows, at_k, None
