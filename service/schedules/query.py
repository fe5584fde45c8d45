"""The GET form: a query string as the body of ``POST /v1/schedules/compute``, and back.

``/v1/schedules/StepLR?step_size=30&gamma=0.1&steps=100`` is the body
``{"scheduler": {"type": "StepLR", "step_size": 30, "gamma": 0.1}, "steps": 100}``;
:func:`query_loc` maps a location in that body back to the query parameter that set it.
"""

import json
import typing
from typing import Any

from service.schedules import specs

RESERVED = {
    "steps",
    "format",
    "lr",
    "optimizer",
    "interval",
    "steps_per_epoch",
    "every",
    "points",
    "engine",
    "device",
    "include",
    "warmup",
    "warmup_steps",
    "warmup_start_factor",
    "warmup_factor",
    "warmup_period",
    "yscale",
    "annotate",
    "skipped_steps",
    "accumulation_steps",
    "index_by",
    "counter",
    "global_batch_size",
    "seq_length",
    "rampup_batch_size",
    "micro_batch_size",
    "data_parallel_size",
    "decrease_batch_size_if_needed",
    "at",
}
"""Query parameters of the request itself; every other one is the scheduler's."""


def _accepts_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(_accepts_list(arg) for arg in typing.get_args(annotation))


def _json_or_raw(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _split_top_level(text: str) -> list[str]:
    """Return the parts of ``text`` between commas outside parentheses (``min(1, epoch)``
    stays whole)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _query_value(cls: type[specs.SchedulerBase], name: str, raw: str) -> Any:
    field = cls.model_fields.get(name)
    if field is None or not _accepts_list(field.annotation):
        return raw
    text = raw.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return raw
    if name == "lr_lambda":
        parts = _split_top_level(text)
        return parts if len(parts) > 1 else raw
    if "," in text:
        return [_json_or_raw(p.strip()) for p in text.split(",") if p.strip()]
    return raw


def _int_list(text: str) -> Any:
    """Return ``"0,5,9"`` (or ``"[0,5,9]"``) as a list for the body; pydantic checks it."""
    text = text.strip()
    if text.startswith("["):
        return _json_or_raw(text)
    return [_json_or_raw(p.strip()) for p in text.split(",") if p.strip()]


COUNTER_PARAMS = (
    "global_batch_size",
    "seq_length",
    "micro_batch_size",
    "data_parallel_size",
    "decrease_batch_size_if_needed",
)


def _counter(params: dict[str, str], own: set[str]) -> dict[str, Any] | None:
    """Return the body's ``counter`` from ``counter=samples|tokens`` and its parameters
    (``at`` and ``rampup_batch_size`` comma-separated)."""
    names = [n for n in ("counter", *COUNTER_PARAMS, "rampup_batch_size", "at") if n not in own]
    if not any(n in params for n in names):
        return None
    counter: dict[str, Any] = {"type": params.get("counter", "samples")}
    for name in COUNTER_PARAMS:
        if name in params and name not in own:
            counter[name] = params[name]
    for name in ("rampup_batch_size", "at"):
        if name in params and name not in own:
            counter[name] = _int_list(params[name])
    return counter


def query_body(cls: type[specs.SchedulerBase], params: dict[str, str]) -> dict[str, Any]:
    """Return the compute body that the query ``params`` for scheduler ``cls`` describe."""
    kind = cls.model_fields["type"].default
    scheduler: dict[str, Any] = {"type": kind}
    # a scheduler's own argument is the scheduler's, reserved name or not: OneCycleLR's
    # steps_per_epoch (with epochs) is also the request's; Noam's and optax's warmup_steps and
    # timm's warmup_epochs/warmup_lr/warmup_prefix are not the request's warmup
    own = set(cls.model_fields)
    for name, raw in params.items():
        if name not in RESERVED or name in own:
            scheduler[name] = _query_value(cls, name, raw)
    from_query = getattr(cls, "from_query", None)
    if from_query is not None:  # a family whose own arguments nest (transformers' kwargs)
        scheduler = from_query(scheduler)
    body: dict[str, Any] = {"scheduler": scheduler}
    if "steps" in params:
        body["steps"] = params["steps"]
    optimizer: dict[str, Any] = {"type": params.get("optimizer", "SGD")}
    if "lr" in params:
        optimizer["lr"] = params["lr"]
    body["optimizer"] = optimizer
    for name in ("interval", "steps_per_epoch", "engine", "device"):
        if name in params:
            body[name] = params[name]
    for name in ("accumulation_steps", "index_by"):
        if name in params and name not in own:
            body[name] = params[name]
    if "skipped_steps" in params and "skipped_steps" not in own:
        body["skipped_steps"] = _int_list(params["skipped_steps"])
    counter = _counter(params, own)
    if counter is not None:
        body["counter"] = counter
    if "include" in params:
        body["include"] = [p for p in params["include"].split(",") if p]
    sample = {name: params[name] for name in ("every", "points") if name in params}
    if sample:
        body["sample"] = sample  # both given: the spec refuses it
    if any(name.startswith("warmup") and name not in own for name in params):
        warmup: dict[str, Any] = {"type": params.get("warmup", "linear")}
        if "warmup_steps" in params and "warmup_steps" not in own:
            warmup["steps"] = params["warmup_steps"]
        if "warmup_start_factor" in params:
            warmup["start_factor"] = params["warmup_start_factor"]
        if "warmup_factor" in params:
            warmup["factor"] = params["warmup_factor"]
        if "warmup_period" in params:  # pytorch_warmup's
            warmup["warmup_period"] = _json_or_raw(params["warmup_period"])
        body["warmup"] = warmup
    return body


def query_loc(loc: typing.Sequence[str | int]) -> list[str | int]:
    """Return a location in the body :func:`query_body` made (``["body", "scheduler",
    "gamma"]`` or ``["scheduler", "gamma"]``) as the query parameter that set it
    (``["query", "gamma"]``; ``sample.every`` is ``every``, ``warmup.steps`` is
    ``warmup_steps``)."""
    parts = [p for p in loc if not isinstance(p, int)]
    if parts[:1] == ["body"]:
        parts = parts[1:]
    head, rest = (parts[0], parts[1:]) if parts else ("", [])
    if head == "scheduler" and rest:
        # transformers' own arguments are flat in the query string
        parts = [p for p in rest if p != "scheduler_specific_kwargs"] or rest
    elif head == "optimizer" and rest:
        parts = ["optimizer" if rest == ["type"] else "lr"]
    elif head == "sample" and rest:
        parts = rest[-1:]
    elif head == "counter" and rest:
        named = [p for p in rest if p not in ("samples", "tokens", "type")]
        parts = named[-1:] or ["counter"]
    elif head == "warmup" and rest:
        last = str(rest[-1])
        parts = [
            "warmup" if last == "type" else last if last == "warmup_period" else f"warmup_{last}"
        ]
    return ["query", *parts]
