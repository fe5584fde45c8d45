"""Realistic step counters: AMP-skipped steps, gradient accumulation, samples and tokens.

A compute request's series is indexed by optimizer step: index ``i`` is the ``i``-th time the
training loop reaches its optimizer step (the ``i``-th ``scaler.step(optimizer)`` call with
AMP), whether or not the optimizer then updates the parameters. The counters transform that
index, so they work around either engine:

- ``skipped_steps``: optimizer steps at which AMP's ``GradScaler`` found inf/nan gradients and
  did not call ``optimizer.step()``. A torch loop calls ``scheduler.step()`` anyway, so the
  schedule advances: the lr of step ``i`` is the one it would be without skips, and the lrs of
  the skipped steps are never applied. torch checks the order once, at the first
  ``scheduler.step()``: when every optimizer step before it was skipped it warns ``Detected
  call of `lr_scheduler.step()` before `optimizer.step()``` (checked here with the real
  objects), and it says nothing about later skips. Megatron's training loop does not step its
  scheduler on a skipped iteration, so for the ``megatron`` family the schedule holds instead:
  step ``i`` gets the lr of update ``i - (steps skipped before i)``.
- ``accumulation_steps``: micro-batches per optimizer step, as the training jobs run them (the
  scheduler steps after every optimizer step, i.e. every ``accumulation_steps`` micro-batches).
  ``index_by: "micro_batch"`` returns the series per micro-batch: micro-batch ``j`` is in
  optimizer step ``j // accumulation_steps`` and sees its lr.
- ``counter``: samples (or tokens, samples × ``seq_length``) consumed before each optimizer
  step, with Megatron's batch-size ramp-up (``--rampup-batch-size start increment samples``,
  megatron-core's ``RampupBatchsizeNumMicroBatchesCalculator``, line for line), and the lr of
  the optimizer step in force at given counter values (``at``).

The steps of equal batch form *phases*; every counter of step ``i`` is linear inside its
phase, so nothing here is per step: a 10M-step schedule has one phase, a ramp-up one per
batch size.
"""

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from service.errors import InvalidSpec, LimitExceeded, register_union_tags
from service.schedules.base import NonNegInt, Number, PosInt, SpecModel
from service.settings import current_settings

if TYPE_CHECKING:
    from service.schedules.specs import ScheduleRequest

MAX_COUNT = 2**53
"""Largest counter value (samples, tokens, micro-batches): exact in float64 and in JSON."""

IndexBy = Literal["optimizer_step", "micro_batch"]

SKIP_HOLDS_FAMILIES = {"megatron"}
"""Families whose own training loop does not step the scheduler on a skipped update."""
NO_ORDER_CHECK = {
    "timm": "timm's schedulers are not torch LRSchedulers and do not check the call order",
    "optax": "optax schedules are functions of the step count and check nothing",
    "megatron": "Megatron's OptimizerParamScheduler does not check the call order",
}
"""Families whose real scheduler object has no "step before optimizer.step()" check."""


# --------------------------------------------------------------------------- models


def _invalid(message: str, *loc: str | int, kind: str = "value_error") -> ValidationError:
    """Return a validation error at ``loc`` inside the counter (a model validator's own)."""
    error = PydanticCustomError(kind, message)
    return ValidationError.from_exception_data(
        "counter", [{"type": error, "loc": loc, "input": None}]
    )


def _non_negative(values: list[float]) -> list[float]:
    for i, value in enumerate(values):
        if value < 0:
            raise _invalid(f"at[{i}]={value:g} is negative; counter values start at 0", "at", i)
    return values


class SamplesCounter(SpecModel):
    """Count samples: each optimizer step consumes its global batch.

    ``rampup_batch_size`` is Megatron's ``--rampup-batch-size <start batch size> <batch size
    increment> <ramp-up samples>``: the global batch starts at ``start`` and grows by
    ``increment`` every ``ramp-up samples / ((global_batch_size - start) / increment)``
    consumed samples, reaching ``global_batch_size`` once more than ``ramp-up samples`` are
    consumed. ``micro_batch_size`` × ``data_parallel_size`` must divide every batch (Megatron's
    check), unless ``decrease_batch_size_if_needed`` rounds it down.
    """

    type: Literal["samples"] = "samples"
    global_batch_size: PosInt = Field(
        description="Samples per optimizer step (after the ramp-up), over all data-parallel "
        "ranks and micro-batches."
    )
    rampup_batch_size: Annotated[list[NonNegInt], Field(min_length=3, max_length=3)] | None = Field(
        default=None,
        description="Megatron's [start batch size, batch size increment, ramp-up samples].",
    )
    micro_batch_size: PosInt | None = Field(
        default=None,
        description="Samples per micro-batch per rank; with it, a step's micro-batches are "
        "its batch / (micro_batch_size × data_parallel_size), Megatron's num_microbatches.",
    )
    data_parallel_size: PosInt = Field(default=1, description="Data-parallel ranks.")
    decrease_batch_size_if_needed: bool = Field(
        default=False,
        description="Round each batch down to a multiple of micro_batch_size × "
        "data_parallel_size (Megatron's flag) instead of refusing it.",
    )
    at: list[Annotated[Number, Field()]] | None = Field(
        default=None,
        description="Counter values to ask the lr at: each gets the lr of the optimizer step in "
        "force there (the step whose batch holds that sample or token, counting from 0).",
    )

    @model_validator(mode="after")
    def _check(self) -> "SamplesCounter":
        settings = current_settings()
        if self.at is not None:
            _non_negative(self.at)
            if len(self.at) > settings.max_counter_queries:
                raise _invalid(
                    f"at lists {len(self.at)} values; the limit is "
                    f"{settings.max_counter_queries} (LRS_MAX_COUNTER_QUERIES)",
                    "at",
                    kind="limit_exceeded",
                )
        if self.micro_batch_size is None and (
            self.data_parallel_size != 1 or self.decrease_batch_size_if_needed
        ):
            raise _invalid(
                "data_parallel_size and decrease_batch_size_if_needed need micro_batch_size: "
                "give the samples per micro-batch per rank",
                "micro_batch_size",
            )
        if self.rampup_batch_size is None:
            return self
        start, increment, samples = self.rampup_batch_size
        where = "rampup_batch_size [start, increment, ramp-up samples]"
        if start < 1 or increment < 1:
            raise _invalid(
                f"{where}: the start batch size and the increment must be >= 1",
                "rampup_batch_size",
            )
        diff = self.global_batch_size - start
        if diff < 0:
            raise _invalid(
                f"{where}: the start batch size {start} is larger than global_batch_size "
                f"{self.global_batch_size}; the ramp-up grows the batch to global_batch_size",
                "rampup_batch_size",
            )
        if diff % increment:
            raise _invalid(
                f"{where}: global_batch_size - start = {diff} is not divisible by the increment "
                f"{increment} (Megatron asserts it); change the increment or the start",
                "rampup_batch_size",
            )
        if diff == 0:
            raise _invalid(
                f"{where}: the start batch size equals global_batch_size, so there is nothing "
                "to ramp up (Megatron divides by zero increments); drop rampup_batch_size",
                "rampup_batch_size",
            )
        if samples < 1:
            raise _invalid(
                f"{where}: ramp-up samples is 0 (Megatron divides by it); give at least 1 or "
                "drop rampup_batch_size",
                "rampup_batch_size",
            )
        if diff // increment > settings.max_rampup_increments:
            raise _invalid(
                f"{where}: {diff // increment} batch-size increments; the limit is "
                f"{settings.max_rampup_increments} (LRS_MAX_RAMPUP_INCREMENTS): use a larger "
                "increment",
                "rampup_batch_size",
                kind="limit_exceeded",
            )
        return self


class TokensCounter(SamplesCounter):
    """Count tokens: samples × ``seq_length`` (Megatron's ``--seq-length``)."""

    type: Literal["tokens"] = "tokens"  # type: ignore[assignment]
    seq_length: PosInt = Field(description="Tokens per sample.")
    at: list[Annotated[Number, Field()]] | None = Field(
        default=None,
        description="Token counts to ask the lr at: each gets the lr of the optimizer step "
        "whose batch holds that token (counting from 0).",
    )


CounterSpec = Annotated[SamplesCounter | TokensCounter, Field(discriminator="type")]
register_union_tags({"samples", "tokens"})


def limit(message: str) -> PydanticCustomError:
    """Return a validation error of type ``limit_exceeded`` (a ``limit-exceeded`` problem)."""
    return PydanticCustomError("limit_exceeded", message)


def check_skipped_steps(value: list[int] | None) -> list[int] | None:
    """Refuse more skipped steps than ``LRS_MAX_SKIPPED_STEPS`` (a field validator)."""
    most = current_settings().max_skipped_steps
    if value is not None and len(value) > most:
        raise limit(
            f"skipped_steps lists {len(value)} steps; the limit is {most} (LRS_MAX_SKIPPED_STEPS)"
        )
    return value


def check_accumulation_steps(value: int | None) -> int | None:
    """Refuse accumulation_steps above ``LRS_MAX_ACCUMULATION_STEPS`` (a field validator)."""
    most = current_settings().max_accumulation_steps
    if value is not None and value < 1:
        raise ValueError(
            f"accumulation_steps={value} is below 1: give the micro-batches per optimizer "
            "step, 1 or more (or leave it out for 1)"
        )
    if value is not None and value > most:
        raise limit(
            f"accumulation_steps={value} is above the limit of {most} (LRS_MAX_ACCUMULATION_STEPS)"
        )
    return value


def requested(request: "ScheduleRequest") -> bool:
    """Return True when ``request`` asks for any counter (its response carries ``counters``)."""
    return (
        request.skipped_steps is not None
        or request.accumulation_steps is not None
        or request.index_by != "optimizer_step"
        or request.counter is not None
    )


# --------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class Phases:
    """Optimizer steps in runs of equal batch: phase ``p`` starts at step ``start[p]`` with
    ``samples0[p]`` samples and ``micro0[p]`` micro-batches consumed before it, and each of its
    steps consumes ``batch[p]`` samples in ``micro[p]`` micro-batches."""

    start: np.ndarray
    samples0: np.ndarray
    batch: np.ndarray
    micro0: np.ndarray
    micro: np.ndarray
    steps: int

    def _phase(self, steps: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.start, steps, side="right") - 1

    def samples_before(self, steps: np.ndarray) -> np.ndarray:
        """Return the samples consumed before each optimizer step (int64)."""
        p = self._phase(steps)
        return self.samples0[p] + (steps - self.start[p]) * self.batch[p]

    def batch_of(self, steps: np.ndarray) -> np.ndarray:
        """Return the global batch of each optimizer step (int64)."""
        return self.batch[self._phase(steps)]

    def micro_of(self, steps: np.ndarray) -> np.ndarray:
        """Return the micro-batches of each optimizer step (int64)."""
        return self.micro[self._phase(steps)]

    def micro_before(self, steps: np.ndarray) -> np.ndarray:
        """Return the micro-batches before each optimizer step (int64)."""
        p = self._phase(steps)
        return self.micro0[p] + (steps - self.start[p]) * self.micro[p]

    @property
    def total_samples(self) -> int:
        """Samples all ``steps`` consume (a Python int: checked before any int64 sum)."""
        last = self.steps - int(self.start[-1])
        return int(self.samples0[-1]) + last * int(self.batch[-1])

    @property
    def total_micro(self) -> int:
        """Micro-batches of all ``steps``."""
        return int(self.micro0[-1]) + (self.steps - int(self.start[-1])) * int(self.micro[-1])

    def step_of_micro(self, micro: np.ndarray) -> np.ndarray:
        """Return the optimizer step each micro-batch index belongs to."""
        p = np.searchsorted(self.micro0, micro, side="right") - 1
        return self.start[p] + (micro - self.micro0[p]) // self.micro[p]

    def step_of_sample(self, samples: np.ndarray) -> np.ndarray:
        """Return the optimizer step whose batch holds each sample (float64 counts)."""
        p = np.searchsorted(self.samples0, samples, side="right") - 1
        offset = np.floor((samples - self.samples0[p]) / self.batch[p]).astype(np.int64)
        return self.start[p] + offset


def _running(counter: SamplesCounter, batch: int, step: int) -> int:
    """Return the batch Megatron runs for the nominal ``batch`` (``_round`` or its assert)."""
    if counter.micro_batch_size is None:
        return batch
    divisor = counter.micro_batch_size * counter.data_parallel_size
    if counter.decrease_batch_size_if_needed:
        running = batch // divisor * divisor
    elif batch % divisor:
        raise InvalidSpec(
            f"the global batch of optimizer step {step} is {batch}, not divisible by "
            f"micro_batch_size × data_parallel_size = {divisor} (Megatron asserts it); change "
            "the batch sizes or set decrease_batch_size_if_needed",
            loc=("body", "counter"),
        )
    else:
        running = batch
    if running < divisor:
        raise InvalidSpec(
            f"the global batch of optimizer step {step} is {batch}, smaller than "
            f"micro_batch_size × data_parallel_size = {divisor}: it makes no micro-batch",
            loc=("body", "counter"),
        )
    return running


def _rampup(counter: SamplesCounter, steps: int) -> list[tuple[int, int, int]]:
    """Return ``(first step, samples before it, nominal batch)`` of every phase, as
    megatron-core's ``RampupBatchsizeNumMicroBatchesCalculator.update(consumed_samples)``
    sets the batch before each iteration (floats where Megatron uses them)."""
    assert counter.rampup_batch_size is not None
    start, increment, ramp = counter.rampup_batch_size
    full = counter.global_batch_size
    per_increment = ramp / ((full - start) // increment)

    def nominal(consumed: int) -> int:
        if consumed > ramp:
            return full
        return start + int(consumed / per_increment) * increment

    out: list[tuple[int, int, int]] = []
    step, consumed = 0, 0
    while step < steps:
        batch = nominal(consumed)
        running = _running(counter, batch, step)
        if consumed > ramp:
            length = steps - step
        else:
            # first t >= 1 whose consumed count gives another batch (nominal is monotone)
            lo, hi = 1, (ramp - consumed) // running + 1
            while lo < hi:
                mid = (lo + hi) // 2
                if nominal(consumed + mid * running) == batch:
                    lo = mid + 1
                else:
                    hi = mid
            length = min(lo, steps - step)
        out.append((step, consumed, batch))
        consumed += length * running
        step += length
    return out


def phases(request: "ScheduleRequest") -> Phases:
    """Return the phases of ``request``'s optimizer steps (one without a ramp-up)."""
    steps = request.steps
    counter = request.counter
    accumulation = request.accumulation_steps or 1
    if counter is None:
        rows = [(0, 0, 1)]
    elif counter.rampup_batch_size is None:
        rows = [(0, 0, counter.global_batch_size)]
    else:
        rows = _rampup(counter, steps)
    start, samples0, batch, micro = [], [], [], []
    for first, consumed, nominal in rows:
        running = nominal if counter is None else _running(counter, nominal, first)
        per_step = accumulation
        if counter is not None and counter.micro_batch_size is not None:
            per_step = running // (counter.micro_batch_size * counter.data_parallel_size)
        start.append(first)
        samples0.append(consumed)
        batch.append(running)
        micro.append(per_step)
    micro0 = [0]
    for p in range(1, len(start)):
        micro0.append(micro0[-1] + (start[p] - start[p - 1]) * micro[p - 1])
    found = Phases(
        start=np.asarray(start, dtype=np.int64),
        samples0=np.asarray(samples0, dtype=np.int64),
        batch=np.asarray(batch, dtype=np.int64),
        micro0=np.asarray(micro0, dtype=np.int64),
        micro=np.asarray(micro, dtype=np.int64),
        steps=steps,
    )
    for total, what in ((found.total_samples, "samples"), (found.total_micro, "micro-batches")):
        if total > MAX_COUNT:
            raise LimitExceeded(
                f"the run consumes {total} {what}, more than 2**53 (counts stay exact in JSON "
                "below it); lower steps or the batch size",
                loc=("body", "counter" if what == "samples" else "accumulation_steps"),
            )
    return found


def length(request: "ScheduleRequest") -> int:
    """Return how many indices the series has: optimizer steps, or micro-batches."""
    if request.index_by != "micro_batch":
        return request.steps
    if request.counter is None or request.counter.micro_batch_size is None:
        return request.steps * (request.accumulation_steps or 1)
    return phases(request).total_micro


# --------------------------------------------------------------------------- plan


@dataclass
class Plan:
    """What the counters of one request do to its index, and what the response says."""

    request: "ScheduleRequest"
    phases: Phases
    skipped: np.ndarray
    """Skipped optimizer steps, sorted, once each (int64)."""
    holds_on_skip: bool
    """The schedule does not advance on a skipped step (Megatron's loop)."""
    at_steps: np.ndarray | None
    """The optimizer step in force at each ``counter.at`` value."""
    notes: list[str]

    def optimizer_steps(self, indices: np.ndarray) -> np.ndarray:
        """Return the optimizer step of every index of the series."""
        if self.request.index_by == "micro_batch":
            return self.phases.step_of_micro(indices)
        return indices

    def updates_before(self, steps: np.ndarray) -> np.ndarray:
        """Return how many parameter updates (optimizer.step() calls) precede each step."""
        return steps - np.searchsorted(self.skipped, steps, side="left")

    def is_skipped(self, steps: np.ndarray) -> np.ndarray:
        """Return, per optimizer step, whether AMP skipped it (bool)."""
        return is_in(steps, self.skipped)

    def progress(self, steps: np.ndarray) -> np.ndarray:
        """Return, per optimizer step, the optimizer step whose lr the schedule gives it: the
        step itself (torch loops advance on skips), or its update count (Megatron's)."""
        if self.holds_on_skip and self.skipped.size:
            return self.updates_before(steps)
        return steps

    def describe(
        self, indices: np.ndarray, steps: np.ndarray, at_lr: np.ndarray | None
    ) -> dict[str, Any]:
        """Return the response's ``counters`` for the series at ``indices`` (optimizer steps
        ``steps``); ``at_lr`` is groups × ``at`` values."""
        request = self.request
        counter = request.counter
        out: dict[str, Any] = {
            "index_by": request.index_by,
            "optimizer_step": steps,
            "accumulation_steps": request.accumulation_steps or 1,
            "skipped_steps": None,
            "skipped": None,
            "updates": None,
            "counter": None if counter is None else counter.type,
            "samples": None,
            "tokens": None,
            "batch_size": None,
            "micro_batches": None,
            "at": None,
            "totals": {
                "optimizer_steps": request.steps,
                "updates": request.steps - int(self.skipped.size),
                "micro_batches": self.phases.total_micro,
                "samples": None,
                "tokens": None,
            },
        }
        if counter is not None and counter.micro_batch_size is not None:
            out["accumulation_steps"] = None
            out["micro_batches"] = self.phases.micro_of(steps)
        if request.skipped_steps is not None:
            out["skipped_steps"] = self.skipped
            out["skipped"] = self.is_skipped(steps)
            out["updates"] = self.updates_before(steps)
        if counter is not None:
            samples = self.phases.samples_before(steps)
            out["samples"] = samples
            out["batch_size"] = self.phases.batch_of(steps)
            out["totals"]["samples"] = self.phases.total_samples
            if isinstance(counter, TokensCounter):
                out["tokens"] = samples * counter.seq_length
                out["totals"]["tokens"] = self.phases.total_samples * counter.seq_length
            if counter.at is not None and self.at_steps is not None and at_lr is not None:
                out["at"] = [
                    {counter.type: value, "optimizer_step": int(step), "lr": at_lr[:, i].tolist()}
                    for i, (value, step) in enumerate(zip(counter.at, self.at_steps, strict=True))
                ]
        return out


def is_in(values: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """Return, per value, whether the sorted ``ordered`` holds it (np.isin without hashing)."""
    if not ordered.size:
        return np.zeros(values.shape, dtype=bool)
    at = np.minimum(np.searchsorted(ordered, values), ordered.size - 1)
    return ordered[at] == values


def _family_names(request: "ScheduleRequest") -> set[str]:
    from service.schedules.families import hooks

    return {str(f["family"]) for f in hooks.families(request)}


def _check_skipped(request: "ScheduleRequest", notes: list[str]) -> np.ndarray:
    given = request.skipped_steps or []
    values = np.asarray(given, dtype=np.int64)
    beyond = np.flatnonzero(values >= request.steps)
    if beyond.size:
        i = int(beyond[0])
        raise InvalidSpec(
            f"skipped_steps[{i}]={given[i]} is beyond the schedule: optimizer steps run "
            f"0..{request.steps - 1}; drop it or raise steps",
            loc=("body", "skipped_steps", i),
        )
    ordered = np.sort(values)
    skipped = ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])] if given else ordered
    if skipped.size < len(given):
        notes.append(
            f"skipped_steps lists {len(given) - skipped.size} step(s) more than once; each "
            "counts once"
        )
    return skipped


def _check_totals(request: "ScheduleRequest", found: Phases) -> None:
    settings = current_settings()
    micro = found.total_micro
    if request.index_by == "micro_batch" and micro > settings.vectorized_max_steps:
        raise LimitExceeded(
            f"index_by 'micro_batch' makes a series of {micro} micro-batches; the limit is "
            f"{settings.vectorized_max_steps} (LRS_VECTORIZED_MAX_STEPS). Lower steps or "
            "accumulation_steps, or index by optimizer_step.",
            loc=("body", "index_by"),
        )
    counter = request.counter
    if counter is None:
        return
    total = found.total_samples * getattr(counter, "seq_length", 1)
    if total > MAX_COUNT:
        raise LimitExceeded(
            f"the run consumes {total} {counter.type}, more than 2**53 (counts stay exact "
            "in JSON below it); lower steps or the batch size",
            loc=("body", "counter"),
        )


def _at_steps(request: "ScheduleRequest", found: Phases) -> np.ndarray | None:
    counter = request.counter
    if counter is None or counter.at is None:
        return None
    scale = getattr(counter, "seq_length", 1)
    total = found.total_samples * scale
    values = np.asarray(counter.at, dtype=np.float64)
    for i, value in enumerate(counter.at):
        if value >= total:
            raise InvalidSpec(
                f"counter.at[{i}]={value:g} {counter.type} is beyond the run: its "
                f"{request.steps} optimizer steps consume {total} {counter.type} (counting "
                "from 0); raise steps or lower the value",
                loc=("body", "counter", "at", i),
            )
    return found.step_of_sample(np.floor(values / scale))


def _skip_notes(request: "ScheduleRequest", skipped: np.ndarray, holds: bool) -> list[str]:
    if not skipped.size:
        return []
    shown = ", ".join(str(int(s)) for s in skipped[:10]) + (", …" if skipped.size > 10 else "")
    out = []
    if holds:
        out.append(
            f"{skipped.size} of {request.steps} optimizer steps skipped ({shown}): Megatron's "
            "training loop does not step its scheduler on a skipped iteration "
            "(update_successful false), so the schedule holds there: step i gets the lr of "
            "update i - (steps skipped before i)"
        )
    else:
        out.append(
            f"{skipped.size} of {request.steps} optimizer steps skipped ({shown}): "
            "optimizer.step() was not called (GradScaler found inf/nan gradients) but "
            "scheduler.step() was, so the schedule still advanced: the lrs of those steps "
            f"were never applied and the run makes {request.steps - skipped.size} updates"
        )
    message = _torch_order_warning(request, skipped)
    if message is not None:
        out.append(
            "torch warns once, at the first scheduler.step(), since no optimizer.step() ran "
            f'before it: "{message}" With GradScaler the order is right and no value is '
            "skipped: the first steps' lrs were simply not applied"
        )
    elif _first_scheduler_step_skipped(request, skipped):
        names = sorted(_family_names(request) & NO_ORDER_CHECK.keys())
        reasons = "; ".join(NO_ORDER_CHECK[f] for f in names) or (
            "this scheduler's step() does not check the call order"
        )
        out.append(f"nothing warns although the first steps were skipped: {reasons}")
    else:
        out.append(
            "torch says nothing about these skips: it checks the call order only at the "
            "first scheduler.step(), and an optimizer.step() ran before it"
        )
    return out


def _first_scheduler_step_skipped(request: "ScheduleRequest", skipped: np.ndarray) -> bool:
    """Return True when every optimizer step before the first scheduler.step() was skipped."""
    first = min(request.steps_per_epoch, request.steps) if request.interval == "epoch" else 1
    return bool(is_in(np.arange(first), skipped).all())


def _torch_order_warning(request: "ScheduleRequest", skipped: np.ndarray) -> str | None:
    """Return the warning torch gives at the first scheduler.step() when every optimizer step
    before it was skipped, found by stepping the real objects once; None when it gives none."""
    if not _first_scheduler_step_skipped(request, skipped):
        return None
    if _family_names(request) & NO_ORDER_CHECK.keys():
        return None
    from service.schedules import torch_engine

    try:
        optimizer = torch_engine.make_optimizer(request.optimizer, request.param_groups)
        stepper = torch_engine.Stepper(
            optimizer, request.scheduler, request.warmup, request.scheduler_steps, closed=None
        )
        metric = (request.metrics or [0.0])[0] if stepper.plateau else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if stepper.dampener is not None:
                with stepper.dampener.dampening():
                    stepper._advance(1, metric)
            else:
                stepper._advance(1, metric)
    except Exception:  # the engine reports what torch refuses; here it only means no warning
        return None
    for warning in caught:
        text = str(warning.message)
        if "before `optimizer.step()`" in text:
            return text
    return None


def plan(request: "ScheduleRequest") -> Plan | None:
    """Return what the counters of ``request`` (batch scaling applied) do; None when it asks
    for none. Raises InvalidSpec/LimitExceeded (422) for values that do not fit the run."""
    if not requested(request):
        return None
    notes: list[str] = []
    skipped = _check_skipped(request, notes)
    counter = request.counter
    if (
        counter is not None
        and counter.micro_batch_size is not None
        and request.accumulation_steps is not None
    ):
        raise InvalidSpec(
            "give accumulation_steps or counter.micro_batch_size, not both: with "
            "micro_batch_size the micro-batches per step are the batch / (micro_batch_size × "
            "data_parallel_size), Megatron's num_microbatches",
            loc=("body", "accumulation_steps"),
        )
    found = phases(request)
    _check_totals(request, found)
    families = _family_names(request)
    holds = bool(families & SKIP_HOLDS_FAMILIES)
    notes += _skip_notes(request, skipped, holds)
    if counter is not None and counter.rampup_batch_size is not None and "megatron" in families:
        notes.append(
            "Megatron's own loop steps its scheduler by each iteration's samples "
            "(increment = the global batch), so during a batch-size ramp-up its lr follows "
            "samples; here the schedule advances once per optimizer step (lr_warmup_steps "
            "and lr_decay_steps count optimizer steps)"
        )
    return Plan(
        request=request,
        phases=found,
        skipped=skipped,
        holds_on_skip=holds,
        at_steps=_at_steps(request, found),
        notes=notes,
    )


def resume_plan(request: "ScheduleRequest") -> Plan | None:
    """Return the counters of a resume check's spec; the check answers per optimizer step, so
    ``index_by: "micro_batch"`` is refused (422)."""
    if request.index_by == "micro_batch":
        raise InvalidSpec(
            "the resume check answers per optimizer step (resume_at is one): drop "
            "spec.index_by or set it to 'optimizer_step'",
            loc=("body", "spec", "index_by"),
        )
    try:
        return plan(request)
    except InvalidSpec as exc:
        for err in exc.errors or []:
            loc = list(err.get("loc") or [])
            if loc[:1] == ["body"]:
                err["loc"] = ["body", "spec", *loc[1:]]
        raise


def resume_counters(
    body: dict[str, Any],
    found: Plan | None,
    lr: np.ndarray,
    indices: np.ndarray,
    resume_at: int,
) -> dict[str, Any]:
    """Return the resume check's ``body`` with the spec's counters (``lr``: the uninterrupted
    run, groups × optimizer steps) and what skipped steps mean for resuming at ``resume_at``."""
    if found is None:
        return body
    at_lr = None if found.at_steps is None else lr[:, found.at_steps]
    described = found.describe(indices, indices, at_lr)
    body["counters"] = {
        k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in described.items()
    }
    body["warnings"] = [*body["warnings"], *found.notes]
    before = int(np.searchsorted(found.skipped, resume_at, side="left"))
    if before:
        body["warnings"].append(
            f"{before} of the {resume_at} optimizer steps before resume_at were skipped: the "
            f"optimizer's own step count (Adam's state['step']) is {resume_at - before}, not "
            f"{resume_at}; a script that rebuilds the scheduler from it (last_epoch = "
            f"{resume_at - before - 1}) resumes {before} step(s) behind. Resume from the "
            "scheduler's state_dict (or its last_epoch) instead"
        )
    return body


def extra_series(request: "ScheduleRequest") -> int:
    """Return about how many per-index arrays ``counters`` adds to a JSON body."""
    if not requested(request):
        return 0
    return 1 + 2 * (request.skipped_steps is not None) + 3 * (request.counter is not None)


__all__ = [
    "CounterSpec",
    "IndexBy",
    "Plan",
    "SamplesCounter",
    "TokensCounter",
    "length",
    "plan",
]
