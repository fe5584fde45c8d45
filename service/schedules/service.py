"""Computing a schedule: limits, batch scaling, engine choice, sampling.

The routes hand a validated :class:`~service.schedules.specs.ScheduleRequest` to
:func:`compute` and render the :class:`~service.schedules.result.Computed` it returns.
"""

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache, partial

import numpy as np
import torch

from service.devices import resolve_device
from service.errors import InternalError, InvalidSpec, LimitExceeded, ServiceError
from service.schedules import budget, counters, formats, specs, torch_engine
from service.schedules.caveats import caveats
from service.schedules.families import hooks as families
from service.schedules.families import libraries
from service.schedules.result import Computed
from service.schedules.vectorized import batch as vectorized_batch
from service.schedules.vectorized import compile as vectorized
from service.schedules.vectorized import fast
from service.schedules.vectorized.evaluation import Program, matches_lr0
from service.settings import Settings

log = logging.getLogger("service.schedules")


def _scale_scheduler(spec: specs.SchedulerBase, factor: float) -> specs.SchedulerBase:
    update: dict[str, object] = families.scaled_fields(spec, factor)
    for name in spec.lr_fields:
        value = getattr(spec, name)
        if value is not None:
            update[name] = (
                [v * factor for v in value] if isinstance(value, list) else value * factor
            )
    if spec.children():
        update["schedulers"] = [_scale_scheduler(c, factor) for c in spec.children()]
    return spec.model_copy(update=update)


def apply_batch_scaling(request: specs.ScheduleRequest) -> specs.ScheduleRequest:
    """Return ``request`` with the linear scaling rule applied to every lr-valued parameter.

    Group lrs and every scheduler's ``lr_fields`` (``base_lr``/``max_lr`` of CyclicLR,
    ``swa_lr``, ``eta_min``, ``min_lr``, ...) are multiplied by ``batch_size /
    base_batch_size``; the result has no ``batch_scaling``. Without ``batch_scaling`` the
    request is returned unchanged.
    """
    if request.batch_scaling is None:
        return request
    k = request.batch_scaling.factor
    optimizer = request.optimizer.model_copy(update={"lr": request.optimizer.lr * k})
    groups = None
    if request.param_groups is not None:
        groups = [
            {**g, "lr": g["lr"] * k} if isinstance(g.get("lr"), (int, float)) else dict(g)
            for g in request.param_groups
        ]
    return request.model_copy(
        update={
            "optimizer": optimizer,
            "param_groups": groups,
            "scheduler": _scale_scheduler(request.scheduler, k),
            "batch_scaling": None,
        }
    )


def sample_indices(request: specs.ScheduleRequest) -> np.ndarray:
    """Return the indices to report (int64), as ``sample`` chooses: optimizer steps, or
    micro-batches with ``index_by: "micro_batch"``."""
    n = counters.length(request)
    sample = request.sample
    if sample is None:
        return np.arange(n, dtype=np.int64)
    if sample.every is not None:
        return np.arange(0, n, sample.every, dtype=np.int64)
    if sample.points is not None:
        if sample.points >= n:
            return np.arange(n, dtype=np.int64)
        if sample.points == 1:
            return np.array([n - 1], dtype=np.int64)
        return np.unique(np.rint(np.linspace(0, n - 1, sample.points)).astype(np.int64))
    at = np.asarray(sample.at, dtype=np.int64)
    beyond = at[at >= n]
    if beyond.size:
        raise InvalidSpec(
            f"sample.at index {int(beyond[0])} is outside the schedule: indices run 0..{n - 1}",
            loc=("body", "sample", "at"),
        )
    return at


def count_points(request: specs.ScheduleRequest) -> int:
    """Return how many indices the response will carry, without computing them."""
    n = counters.length(request)
    sample = request.sample
    if sample is None:
        return n
    if sample.every is not None:
        return -(-n // sample.every)
    if sample.points is not None:
        return min(sample.points, n)
    return len(sample.at or [])


def _check_metrics(request: specs.ScheduleRequest) -> None:
    spec = request.scheduler
    metric_driven = getattr(spec, "metric_driven", False)
    if not (isinstance(spec, specs.ReduceLROnPlateau) or metric_driven):
        return
    needed = request.scheduler_steps - 1
    have = len(request.metrics or [])
    if have < needed:
        name = getattr(spec, spec.selector or "name", "")
        what = f"{spec.type} {name}" if metric_driven else spec.type
        raise InvalidSpec(
            f"{what} needs metrics: one value per scheduler step, {needed} for this "
            f"request; {have} given. Add metrics or lower steps.",
            loc=("body", "metrics"),
        )


def check_limits(request: specs.ScheduleRequest, settings: Settings) -> None:
    """Raise LimitExceeded (422) when ``request`` is over a limit of the engine it would run on.

    :func:`compute` checks this itself; callers use it to report the engine's limits before
    the format's (a 20M-step JSON request hears about steps before points).
    """
    _check_limits(request, choose_engine(request), settings)


@dataclass(frozen=True, slots=True)
class Checked:
    """What :func:`checked` found for a request: the engine that runs it and its cost on that
    engine, computed once per request and handed to :func:`compute` (which then neither
    chooses the engine nor costs the request again)."""

    engine: str
    cost: int
    share: float
    """The share of its engine's cost limit the request uses (:func:`request_cost`)."""
    every_step: int = 0
    """Its cost were every scheduler step evaluated (``cost`` when it is priced so; more for a
    sampled closed form, whose failed probes would fall back to the scan over every step):
    what decides whether it may run on the event loop."""


def checked(request: specs.ScheduleRequest, settings: Settings) -> Checked:
    """Return the engine and cost of ``request``, raising LimitExceeded (422) as
    :func:`check_limits` does: one engine choice and one cost per request."""
    engine = choose_engine(request)
    total = _check_limits(request, engine, settings)
    every_step = total
    if engine == "vectorized" and budget.evaluated_steps(request) is not None:
        every_step = budget.cost(request, engine).total
    return Checked(engine, total, _share(total, engine, settings), every_step)


def check_engine_limits(request: specs.ScheduleRequest, engine: str, settings: Settings) -> None:
    """:func:`check_limits` for ``engine``, which :func:`choose_engine` chose already."""
    _check_limits(request, engine, settings)


def _vectorized_over(steps: int, values: int, cost: int, settings: Settings) -> str | None:
    """Return the first vectorized limit of ``settings`` that a request of ``steps`` steps,
    ``values`` scheduler steps × groups and ``cost`` is over (its setting's name), or None.
    Both the full check and a cached plan's :meth:`_Plan.within` ask this one function: the
    rest of the full check (the engine, the metrics, the families' list lengths) depends on
    the request alone, which a cached plan's key is."""
    if steps > settings.vectorized_max_steps:
        return "vectorized_max_steps"
    if values > settings.vectorized_max_values:
        return "vectorized_max_values"
    if cost > settings.vectorized_max_cost:
        return "vectorized_max_cost"
    return None


def _check_limits(
    request: specs.ScheduleRequest, engine: str, settings: Settings, sampled: bool = True
) -> int:
    """Raise LimitExceeded when ``request`` is over a limit of ``engine``; return its cost
    (``sampled``: a sampled closed form priced by the steps it evaluates,
    :func:`~service.schedules.budget.evaluated_steps`)."""
    limit = settings.torch_max_steps if engine == "torch" else settings.vectorized_max_steps
    hint = " Use engine 'auto' or 'vectorized' for longer schedules." if engine == "torch" else ""
    if engine == "torch" and request.steps > limit:
        raise LimitExceeded(
            f"steps={request.steps} is above the {engine} engine's limit of {limit} "
            f"(LRS_{engine.upper()}_MAX_STEPS).{hint}",
            loc=("body", "steps"),
        )
    if engine == "vectorized":
        values = request.scheduler_steps * request.n_groups
        cost = budget.cost(request, engine, sampled=sampled)
        over = _vectorized_over(request.steps, values, cost.total, settings)
        if over == "vectorized_max_steps":
            raise LimitExceeded(
                f"steps={request.steps} is above the {engine} engine's limit of {limit} "
                f"(LRS_{engine.upper()}_MAX_STEPS).{hint}",
                loc=("body", "steps"),
            )
        if over == "vectorized_max_values":
            raise LimitExceeded(
                f"this request spans {request.scheduler_steps} scheduler steps × "
                f"{request.n_groups} param groups = {values} values; the vectorized engine's "
                f"limit is {settings.vectorized_max_values} (LRS_VECTORIZED_MAX_VALUES). "
                "Lower steps or use fewer param groups.",
                loc=("body", "steps"),
            )
        if over == "vectorized_max_cost":
            raise LimitExceeded(
                f"this request's cost is {cost.total} ({cost.describe()}; about 1 ns of CPU "
                "each, as each schedule's closed form is measured); the vectorized engine's "
                f"limit is {settings.vectorized_max_cost} (LRS_VECTORIZED_MAX_COST). Lower "
                "steps, use fewer param groups or schedulers, or a shorter lr_lambda (the "
                "cost counts every scheduler step unless sample picks points of a closed form: an "
                "lr_lambda, a ChainedScheduler, metrics, counters or a closed form that is "
                "not finite at its last step evaluate every step).",
                loc=("body", "steps"),
            )
        return cost.total
    if engine == "torch":
        cost = budget.cost(request, engine)
        if cost.total > settings.torch_max_work:
            raise LimitExceeded(
                f"this request needs {cost.total} scheduler updates ({cost.describe()}; an "
                f"lr_lambda of {budget.TORCH_NODES_PER_UPDATE} operations counts as one more "
                f"update); the torch engine's limit is {settings.torch_max_work} "
                f"(LRS_TORCH_MAX_WORK). Lower steps, or use fewer groups or schedulers.{hint}",
                loc=("body", "steps"),
            )
        return cost.total
    return budget.cost(request, engine).total


def request_cost(request: specs.ScheduleRequest, settings: Settings) -> float:
    """Return the share of its engine's cost limit ``request`` uses (1.0: the most allowed);
    the routes run requests above ``LRS_COMPUTE_HEAVY_SHARE`` in the expensive lane."""
    engine = choose_engine(request)
    return _share(budget.cost(request, engine, sampled=True).total, engine, settings)


def _share(cost: int, engine: str, settings: Settings) -> float:
    limit = settings.torch_max_work if engine == "torch" else settings.vectorized_max_cost
    return cost / max(limit, 1)


def choose_engine(request: specs.ScheduleRequest) -> str:
    """Return the engine that will run ``request``.

    ``auto`` is the vectorized engine whenever it supports the spec, else torch; an explicit
    ``vectorized`` on a spec it cannot compute is a 422 saying why.
    """
    reason = vectorized.unsupported_reason(request)
    if request.engine == "auto":
        return "torch" if reason else "vectorized"
    if request.engine == "vectorized" and reason:
        raise InvalidSpec(
            f"engine 'vectorized' cannot compute this spec: {reason}.", loc=("body", "engine")
        )
    return request.engine


@dataclass
class _Prepared:
    request: specs.ScheduleRequest
    """Batch scaling applied."""
    engine: str
    device: torch.device
    indices: np.ndarray
    sched_index: np.ndarray
    """The scheduler step of every column to compute: one per index, then (with counters)
    one per ``counter.at`` value and the last optimizer step's."""
    n: int
    plan: counters.Plan | None = None
    steps: np.ndarray | None = None
    """With counters: the optimizer step of every index."""


def _with_counters(prep: _Prepared, result: Computed) -> Computed:
    """Split the ``counter.at`` and final columns off ``result`` and describe the counters."""
    plan = prep.plan
    if plan is None or prep.steps is None:
        return result
    k = prep.indices.size
    at_lr = None if plan.at_steps is None else result.lr[:, k:-1]

    def head(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else values[:, :k]

    return replace(
        result,
        lr=result.lr[:, :k],
        momentum=head(result.momentum),
        weight_decay=head(result.weight_decay),
        final_lr=[float(v) for v in result.lr[:, -1]],
        warnings=[*result.warnings, *plan.notes],
        counters=plan.describe(prep.indices, prep.steps, at_lr),
    )


def _vectorized_computed(prep: _Prepared, result: Computed) -> Computed:
    return _with_counters(
        prep,
        replace(
            result,
            indices=prep.indices,
            warnings=caveats(prep.request),
            families=families.families(prep.request),
            weight_decay=libraries.weight_decay(prep.request, prep.sched_index),
        ),
    )


def _torch_computed(prep: _Prepared, settings: Settings) -> Computed:
    every = torch_engine.run_scheduler_steps(prep.request, prep.n)
    columns = prep.sched_index
    return _with_counters(
        prep,
        replace(
            every,
            indices=prep.indices,
            lr=every.lr[:, columns],
            momentum=None if every.momentum is None else every.momentum[:, columns],
            weight_decay=None if every.weight_decay is None else every.weight_decay[:, columns],
            warnings=caveats(prep.request),
            families=families.families(prep.request),
        ),
    )


def _check(request: specs.ScheduleRequest, settings: Settings) -> str:
    engine = choose_engine(request)
    _check_limits(request, engine, settings)
    _check_metrics(request)
    libraries.check(request)
    return engine


def _prepare(request: specs.ScheduleRequest, settings: Settings) -> _Prepared:
    return _prepared(request, _check(request, settings))


def _prepared(request: specs.ScheduleRequest, engine: str, shared_steps: bool = False) -> _Prepared:
    """``shared_steps``: an unsampled request without counters takes the shared read-only
    ``0..n-1`` (:func:`_dense_indices`) as its indices instead of its own array."""
    scaled = apply_batch_scaling(request)
    device = resolve_device(request.device)
    plan = counters.plan(scaled)
    n = counters.length(scaled)
    if shared_steps and plan is None and scaled.sample is None and n <= DENSE_INDICES_MAX:
        indices = _dense_indices(n)
    else:
        indices = sample_indices(scaled)
    steps = None
    columns = indices
    if plan is not None:
        steps = plan.optimizer_steps(indices)
        extra = [] if plan.at_steps is None else [plan.at_steps]
        last = np.array([scaled.steps - 1], dtype=np.int64)
        columns = plan.progress(np.concatenate([steps, *extra, last]))
    sched_index = columns // scaled.steps_per_epoch if scaled.interval == "epoch" else columns
    return _Prepared(
        scaled, engine, device, indices, sched_index, scaled.scheduler_steps, plan, steps
    )


PLAN_CACHE_SIZE = 64
"""Compiled vectorized plans kept (least recently used dropped)."""
PLAN_INDICES_MAX = 1 << 16
"""A plan keeps its step arrays up to this many values (larger ones are made per call)."""
DerivedKey = tuple[str, vectorized_batch.Params, tuple[float, ...], bool]
"""A derived spec's plan's key (:func:`_derived_plan`)."""
DERIVED_PLANS = 32
"""Plans of derived specs (a verified sweep kind's, :func:`_derived_plan`) kept, apart."""
PLAN_KEY_MAX = 1 << 14
"""A plan whose key (the request as given and as validated, in JSON) is longer is not kept."""


@dataclass
class _Plan:
    """Everything a vectorized request's result needs besides evaluating it: the compiled
    program (torch's objects read at step 0, the probes checked), the fast path when it
    applies, and what the response carries about the spec. Made once per spec, as a jitted
    function is compiled once: the next request for the same spec only evaluates."""

    request: specs.ScheduleRequest
    """Batch scaling applied."""
    device: torch.device
    program: Program
    fast: fast.Fast | None
    sorted_steps: bool
    dense: bool
    """The scheduler steps are ``0..n-1`` (no sampling, interval 'step')."""
    indices: np.ndarray | None
    sched_index: np.ndarray | None
    warnings: list[str]
    families: list[dict[str, str | None]]
    steps_n: int
    """The request's ``steps``, scheduler steps × groups, and its vectorized cost: what the
    limits compare with the settings (checked again on every call, settings may differ)."""
    values: int
    cost: int
    weight_decay: bool
    counted: _Prepared | None = None
    """With counters: the prepared request (the columns its counters need), evaluated by the
    generic path as :func:`_vectorized_computed` describes."""

    def within(self, settings: Settings) -> bool:
        """Return True when the request is within ``settings``' vectorized limits: the ones
        the full check compares, by the same function (else the full check runs and says
        which limit, as for a spec never computed)."""
        return _vectorized_over(self.steps_n, self.values, self.cost, settings) is None

    def steps(self) -> tuple[np.ndarray, np.ndarray]:
        if self.indices is not None and self.sched_index is not None:
            return self.indices, self.sched_index
        indices = sample_indices(self.request)
        if self.request.interval == "epoch":
            return indices, indices // self.request.steps_per_epoch
        return indices, indices

    def run(self) -> Computed:
        if self.counted is not None:
            k = torch.as_tensor(self.counted.sched_index, dtype=torch.int64).to(self.device)
            return _vectorized_computed(self.counted, self.program.result(k))
        result = None
        if self.fast is not None and self.dense:
            n = self.program.n
            if n <= DENSE_INDICES_MAX:  # the renderer knows these by identity
                indices = sched_index = _dense_indices(n)
                result = self.fast.evaluate(None)
            elif self.indices is not None:
                indices = sched_index = self.indices
                result = self.fast.evaluate(None)
            else:
                indices = sched_index = np.empty(n, dtype=np.int64)
                result = self.fast.evaluate(None, indices)
        else:
            indices, sched_index = self.steps()
            if self.fast is not None and self.sorted_steps:
                result = self.fast.evaluate(sched_index)
        if result is None:
            steps = sched_index if sched_index.flags.writeable else sched_index.copy()
            k = torch.as_tensor(steps, dtype=torch.int64).to(self.device)
            computed = self.program.result(k)
        else:
            lr, mom, final = result
            return Computed(
                indices=indices,
                lr=lr,
                momentum=mom,
                final_lr=list(final),
                engine="vectorized",
                device="cpu",
                warnings=list(self.warnings),
                families=[dict(f) for f in self.families],
                weight_decay=self._weight_decay(sched_index),
            )
        return replace(
            computed,
            indices=indices,
            warnings=list(self.warnings),
            families=[dict(f) for f in self.families],
            weight_decay=self._weight_decay(sched_index),
        )

    def sibling(
        self, prep: _Prepared, kind: tuple[str, vectorized_batch.Params], cost: int | None
    ) -> "_Plan | None":
        """Return the plan of ``prep``, another spec of this dense derived plan's sweep kind
        (its lr and varied values its own, everything else the same), made from this one:
        what depends on those values (the program, derived; its fast path; the warnings) is
        made as :func:`_make_plan` makes it, the rest (the steps, the families, the limits'
        counts) is this plan's, since it depends on the kind alone. None when this plan is
        not dense or has counters (its probes, sampled price or columns depend on the
        values): :func:`_make_plan` then makes it."""
        if not self.dense or self.counted is not None or prep.plan is not None:
            return None
        program = lr_templates.program(prep, kind)
        request = prep.request
        return replace(
            self,
            request=request,
            program=program,
            fast=_fast_of(program, dense=True),
            warnings=caveats(request),
            cost=budget.cost(request, "vectorized").total if cost is None else cost,
        )

    def _weight_decay(self, sched_index: np.ndarray) -> np.ndarray | None:
        if not self.weight_decay:
            return None
        return libraries.weight_decay(self.request, np.array(sched_index))


DENSE_INDICES_MAX = 1 << 21
"""Steps ``0..n-1`` up to this long are made once per ``n`` (a few lengths kept, read-only,
shared by every response of that length); longer ones are written by the kernel's threads."""


@lru_cache(maxsize=4)
def _dense_indices(n: int) -> np.ndarray:
    # the JSON renderer's own array where it keeps one: it then knows it is 0..n-1 by identity
    # (not comparing n values per response)
    return formats.dense_indices(n)


def _read_only(values: np.ndarray) -> np.ndarray:
    values.flags.writeable = False
    return values


def _fast_of(program: Program, dense: bool = False) -> fast.Fast | None:
    """Return :func:`fast.fast_of`'s answer for ``program``, its probes evaluated by the
    kernel instead of the generic closed form's tensors: where a kernel covers the program,
    it computes the generic closed form's float64 operations in the same order (the fast
    path serves every value on that premise, ``tests/schedules/vectorized/test_fast.py``
    checks it), so the probes' bits are the same, at a fraction of the small tensors' cost.
    The same checks decide: no refused step, no dense check, the closed form at step 0 is
    torch's lr at step 0, the lr finite where it could first stop being so.

    ``dense``: the plan evaluates every step ``0..n-1`` (and only so): the probes are then
    checked on the values each evaluation computes (:class:`fast.DenseChecked`; the generic
    path decides when they fail)."""
    if program.dampen is not None or program.failure() is not None:
        return None
    probes = program._probes()
    if probes is None or probes.ranges:
        return None
    kernel = fast.kernel_of(program)
    if kernel is None:
        return None
    if dense and program.n > 0:
        return fast.DenseChecked(program, kernel, [])
    points = np.asarray(probes.points, dtype=np.int64)
    values = np.empty((kernel.groups, points.size), dtype=np.float64)
    kernel._sparse(points, values)
    read = values.tolist()  # per group, the values at the points (floats, read once)
    # kernel.lr0: the floats of program.lr0 (what Program._matches_lr0 compares with)
    if not matches_lr0([row[0] for row in read], kernel.lr0):
        return None
    index = {p: i for i, p in enumerate(probes.points)}
    wanted = [index[p] for p in probes.finite]
    if not all(math.isfinite(row[i]) for row in read for i in wanted):
        return None
    n = program.n
    final = kernel.lr0 if n == 1 else [row[index[n - 1]] for row in read]
    return fast.Fast(program, kernel, [float(v) for v in final])


class _Templates:
    """Specs that differ only in the optimizer's lr, their scheduler's scalar parameters
    (:data:`_VARIED`: a sweep over T_max, step_size, gamma, eta_min) or a linear warmup's
    length (the common distinct specs: sweeps) share one compilation: a batch's (one instance
    per batch) and specs computed one by one (:data:`lr_templates`, kept across requests).

    The first spec of a kind is compiled (torch's objects built); when its state is where
    :func:`~service.schedules.vectorized.batch.lr_template` puts it, the next one with other
    values is compiled too and compared with what the template derives for it, bit for bit;
    from then on a spec of that kind is derived without building torch's objects. A kind
    whose check failed is compiled every time; a spec that gives no template (its lr is 0,
    or its state is elsewhere) is compiled and the next one tried. The ``size`` most recently
    used kinds are kept.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._kinds: OrderedDict[str, list[object]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(prep: _Prepared) -> tuple[str, vectorized_batch.Params] | None:
        return None if prep.plan is not None else _Templates._request_key(prep.request)

    @staticmethod
    def _request_key(request: specs.ScheduleRequest) -> tuple[str, vectorized_batch.Params] | None:
        """The key of ``request``'s kind (counters aside: the caller rules them out)."""
        if request.metrics or request.param_groups is not None or request.batch_scaling is not None:
            return None
        lr = float(request.optimizer.lr)
        if lr == 0.0 and math.copysign(1.0, lr) < 0:  # -0.0: torch keeps its sign; compiled
            return None
        scheduler = request.scheduler
        fields = _VARIED.get(scheduler.type, ())
        warmup = request.warmup
        # only before torch's own schedulers of _VARIED, which ignore their span (steps - the
        # warmup's): another library's schedule built over its span differs with the warmup
        vary_warmup = isinstance(warmup, specs.LinearWarmup) and bool(fields)
        exclude: dict[str, set[str]] = {"optimizer": {"lr"}}
        if fields:
            exclude["scheduler"] = set(fields)
        if vary_warmup:
            exclude["warmup"] = {"steps"}
        params = vectorized_batch.Params(
            lr=float(request.optimizer.lr),
            main=tuple((name, getattr(scheduler, name)) for name in fields),
            warmup_steps=warmup.steps if vary_warmup else None,  # type: ignore[union-attr]
        )
        return request.model_dump_json(exclude=exclude), params  # type: ignore[arg-type]

    def verified(
        self, request: specs.ScheduleRequest
    ) -> tuple[str, vectorized_batch.Params] | None:
        """Return the key of ``request``'s kind (for :meth:`program`) when that kind's
        template passed its check (its specs are derived, not compiled), else None (and for
        a request with counters or batch scaling, whose prepared request differs)."""
        if counters.requested(request):
            return None
        found = self._request_key(request)
        if found is None:
            return None
        with self._lock:
            kind = self._kinds.get(found[0])
        return found if kind is not None and kind[1] is True else None

    def program(
        self, prep: _Prepared, found: tuple[str, vectorized_batch.Params] | None = None
    ) -> Program:
        """Return ``prep``'s program, derived from its kind's template where it can be
        (``found``: :meth:`verified`'s answer for ``prep``, when the caller asked it)."""
        found = found or self._key(prep)
        kind = None
        if found is not None:
            with self._lock:
                kind = self._kinds.get(found[0])
                if kind is not None:
                    self._kinds.move_to_end(found[0])
        if found is not None and kind is not None and kind[1] is True:
            derived = kind[0].derive(found[1])  # type: ignore[attr-defined]
            if derived is not None:
                return derived
        program = vectorized.compile_request(prep.request, prep.n, prep.device)
        if found is None:
            return program
        key, params = found
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None:
                template = vectorized_batch.lr_template(program, params)
                if template is None:  # none from this spec (say its lr is 0): the next may
                    return program
                self._kinds[key] = [template, False]
                while len(self._kinds) > self.size:
                    self._kinds.popitem(last=False)
            elif kind[0] is not None and kind[1] is False and kind[0].params != params:  # type: ignore[attr-defined]
                # a check needs other values than the template's own (the same spec with a
                # value set explicitly rather than by default derives itself)
                derived = kind[0].derive(params)  # type: ignore[attr-defined]
                if derived is None:  # another structure (a warmup as long as the schedule)
                    return program
                same = vectorized_batch.same_program(derived, program)
                kind[:] = [kind[0], True] if same else [None, False]
        return program

    def clear(self) -> None:
        with self._lock:
            self._kinds.clear()


LR_TEMPLATES = 64
"""Kinds of spec (everything but the optimizer's lr) whose template :func:`compute` keeps."""

lr_templates = _Templates(LR_TEMPLATES)


def _make_plan(
    request: specs.ScheduleRequest,
    engine: str,
    cost: int | None = None,
    derived: tuple[_Prepared, tuple[str, vectorized_batch.Params]] | None = None,
) -> _Plan:
    """Return the plan of ``request``, whose limits were checked (``cost``: its vectorized
    cost, when the check computed it; ``derived``: its prepared request and the key of its
    verified sweep kind, :func:`_derived_plan`)."""
    prep = _prepared(request, engine) if derived is None else derived[0]
    program = lr_templates.program(prep, None if derived is None else derived[1])
    sched = prep.sched_index
    sample = prep.request.sample
    sorted_steps = sample is None or sample.at is None or bool(np.all(sched[1:] >= sched[:-1]))
    dense = (
        sample is None
        and prep.request.interval != "epoch"
        and prep.plan is None
        and sched.size == prep.n
        and (sched.size == 0 or (sched[0] == 0 and sched[-1] == prep.n - 1))
    )
    keep = prep.indices.size <= PLAN_INDICES_MAX and prep.plan is None
    if cost is None or budget.evaluated_steps(request) is not None:
        # priced by its sampled steps only where the compiled program evaluates pointwise
        # (a closed form whose probes need no dense check); else every step, as it runs
        cost = budget.cost(request, engine, sampled=_pointwise(program, prep)).total
    return _Plan(
        request=prep.request,
        device=prep.device,
        program=program,
        # a derived spec's plan (made per request) checks its probes on its dense values
        fast=_fast_of(program, dense=dense and derived is not None),
        sorted_steps=sorted_steps,
        dense=dense,
        indices=_read_only(prep.indices) if keep else None,
        sched_index=(sched if sched is prep.indices else _read_only(sched)) if keep else None,
        warnings=caveats(prep.request),
        families=families.families(prep.request),
        steps_n=request.steps,
        values=request.scheduler_steps * request.n_groups,
        cost=cost,
        weight_decay="weight_decay" in prep.request.include,
        counted=None if prep.plan is None else prep,
    )


def _pointwise(program: Program, prep: _Prepared) -> bool:
    """Return True when ``program`` evaluates only the steps asked for (and its probes): a
    closed form with no dense check whose probes pass (step 0 is torch's lr, the lr finite
    where it could first stop being so), so its evaluation will not fall back to the affine
    scan over every step. The probes' values are kept (the evaluation reuses them)."""
    probes = program._probes()
    if probes is None or probes.ranges or prep.plan is not None:
        return False
    if program.failure() is not None:
        return True  # refused at that step (a 422) before anything is evaluated
    target = program if program.dampen is None else replace(program, dampen=None)
    found, values = target.probed()
    if found is None or values is None or not target._matches_lr0(values[:, 0]):
        return False
    checked = values[:, [found.points.index(p) for p in found.finite]]
    return bool(torch.isfinite(checked).all())


class _Plans:
    """The least recently used compiled plans, by the request as given (its explicitly set
    fields) and as validated (every value): what is computed, and the warnings, depend on
    both (a default lr and the same lr set explicitly warn differently)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._plans: OrderedDict[str, _Plan] = OrderedDict()
        self._derived: OrderedDict[DerivedKey, _Plan] = OrderedDict()
        self._siblings: OrderedDict[str, _Plan] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(request: specs.ScheduleRequest) -> str:
        return request.model_dump_json(exclude_unset=True) + request.model_dump_json()

    def find(self, key: str) -> _Plan | None:
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
            return plan

    def make(
        self, key: str, request: specs.ScheduleRequest, engine: str, cost: int | None = None
    ) -> _Plan:
        """Return the plan of ``request`` (its limits checked), made now and kept when it is
        small: not one with counters (it holds the request's step columns, up to the
        vectorized step limit, handed out as they are), nor a metric-driven one (its scan
        holds the whole series), nor one whose key (the request twice) is long."""
        plan = _make_plan(request, engine, cost)
        if plan.counted is not None or request.metrics or len(key) > PLAN_KEY_MAX:
            return plan
        with self._lock:
            self._plans[key] = plan
            while len(self._plans) > self.size:
                self._plans.popitem(last=False)
        return plan

    def get(self, request: specs.ScheduleRequest, engine: str) -> _Plan:
        key = self.key(request)
        return self.find(key) or self.make(key, request, engine)

    def find_derived(self, key: DerivedKey) -> _Plan | None:
        """Return the kept plan of a derived spec (:func:`_derived_plan`), or None."""
        with self._lock:
            plan = self._derived.get(key)
            if plan is not None:
                self._derived.move_to_end(key)
            return plan

    def keep_derived(self, key: DerivedKey, plan: _Plan) -> None:
        """Keep a derived spec's plan among the DERIVED_PLANS last ones (apart from the
        compiled plans: a sweep's flood of new specs never pushes those out), and, dense,
        as the plan the next spec of its kind is made from (:meth:`_Plan.sibling`)."""
        if plan.counted is not None or len(key[0]) > PLAN_KEY_MAX:
            return
        with self._lock:
            self._derived[key] = plan
            while len(self._derived) > DERIVED_PLANS:
                self._derived.popitem(last=False)
            if plan.dense:
                self._siblings[key[0]] = plan
                self._siblings.move_to_end(key[0])
                while len(self._siblings) > DERIVED_PLANS:
                    self._siblings.popitem(last=False)

    def find_sibling(self, kind: str) -> _Plan | None:
        """Return the last dense plan kept of the verified sweep kind ``kind``, or None."""
        with self._lock:
            return self._siblings.get(kind)

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()
            self._derived.clear()
            self._siblings.clear()
        lr_templates.clear()


plans = _Plans(PLAN_CACHE_SIZE)


class ScanAllowance:
    """What the affine scans that closed forms fall back to at run time may cost, together:
    ``LRS_VECTORIZED_MAX_COST`` for one request or one batch (whose closed forms were priced
    by the steps they evaluate, within the same limit). A request is priced up front by what
    its program evaluates; only its values, computed, show a closed form that overflows
    between the steps its probes looked at (or does not start at torch's lr), and then torch's
    recursion over every step decides. That scan is priced when it is about to run
    (:func:`~service.schedules.budget.scan_cost`) and refused with a 422 when it would not
    fit, before any of it runs: a sampled request of a few points never becomes seconds of
    scan over millions of steps."""

    def __init__(self, settings: Settings) -> None:
        self.limit = settings.vectorized_max_cost
        self.left = self.limit

    def charge(self, request: specs.ScheduleRequest, additive: bool = False) -> None:
        """Take the scan of ``request`` from the allowance, or raise LimitExceeded: first its
        maps and a running product (not for a request priced at every step: it paid for
        about as much), then, once its maps are known to be additive, the log2(steps)
        passes over every value (for every request: those are several times its price)."""
        if not additive and budget.evaluated_steps(request) is None:
            return
        price = budget.scan_cost(request, additive)
        if price.total > self.left:
            spent = self.limit - self.left
            others = f"; the scans before it in this batch cost {spent}" if spent else ""
            raise budget.ScanRefused(
                "this request's closed form is not finite at some of the steps it evaluates "
                "(or does not start at torch's lr), so torch's recursion over every step, an "
                f"affine scan, decides its values: that costs {price.total} "
                f"({price.describe()}; about 1 ns of CPU each){others}, above the vectorized "
                f"engine's limit of {self.limit} (LRS_VECTORIZED_MAX_COST). Lower steps, use "
                "fewer param groups, or keep the values finite (an lr or eta_min of smaller "
                "magnitude).",
                loc=("body", "steps"),
            )
        self.left -= price.total


def compute(
    request: specs.ScheduleRequest, settings: Settings, found: Checked | None = None
) -> Computed:
    """Return the schedule ``request`` describes, at the indices its ``sample`` chooses.

    Raises InvalidSpec/LimitExceeded (422) for anything that cannot be computed. The limits
    are checked on every call; a vectorized spec's compiled plan is reused (:data:`plans`).
    ``found``: what :func:`checked` returned for ``request`` under ``settings`` (its limits
    passed), so the engine is not chosen nor the cost computed again.
    """
    with (
        budget.ensure(settings.compute_max_seconds),
        budget.fallback_gate(partial(ScanAllowance(settings).charge, request)),
    ):
        plan = _derived_plan(request, settings, found)
        if plan is not None:
            return plan.run()
        key = plans.key(request)
        plan = plans.find(key)
        if plan is not None and plan.within(settings):
            return plan.run()
        if found is None:
            engine = _check(request, settings)
            cost = None
        else:
            engine, cost = found.engine, found.cost
            _check_metrics(request)
            libraries.check(request)
        if engine == "vectorized":
            plan = plans.make(key, request, engine, cost)
            if not plan.within(settings):
                # its program evaluates every step (a dense check the spec did not show):
                # the full price's 422
                _check_limits(request, engine, settings, sampled=False)
            return plan.run()
        return _torch_computed(_prepared(request, engine), settings)


def _derived_plan(
    request: specs.ScheduleRequest, settings: Settings, found: Checked | None
) -> _Plan | None:
    """Return the plan of a vectorized spec whose sweep kind's template passed its check
    (:class:`_Templates`: its program is derived, not compiled), made without the plans
    cache: neither keyed (the request in JSON, twice) nor kept, so a sweep's distinct specs
    (every one new) do not push the compiled plans out of it, each holding its own arrays.
    None for any other spec (the plans cache's path)."""
    if found is not None and found.engine != "vectorized":
        return None
    kind = lr_templates.verified(request)
    if kind is None:
        return None
    # the same spec again (a derived plan is kept in a small LRU of its own): what the plan
    # holds is the kind's key, the varied values (with the signs of their zeros: -0.0 ==
    # 0.0; the lr is never -0.0 in a kind) and whether the lr was given (the warnings say
    # when it was not)
    params = kind[1]
    zeros = tuple(math.copysign(1.0, value) for _, value in params.main if value == 0)
    key = (kind[0], params, zeros, "lr" in request.optimizer.model_fields_set)
    plan = plans.find_derived(key)
    if plan is not None and plan.within(settings):
        return plan
    if found is None:
        if _check(request, settings) != "vectorized":
            return None
        cost = None
    else:
        cost = found.cost
        _check_metrics(request)
        libraries.check(request)
    prep = _prepared(request, "vectorized", shared_steps=True)
    sibling = plans.find_sibling(kind[0])
    plan = None if sibling is None else sibling.sibling(prep, kind, cost)
    if plan is None:
        plan = _make_plan(request, "vectorized", cost, (prep, kind))
    if not plan.within(settings):
        _check_limits(request, "vectorized", settings, sampled=False)  # compute's 422
    plans.keep_derived(key, plan)
    return plan


_VARIED = {
    "CosineAnnealingLR": ("T_max", "eta_min"),
    "StepLR": ("step_size", "gamma"),
    "ExponentialLR": ("gamma",),
}
"""The scheduler parameters a batch's specs may differ in and still share one compilation
(:data:`~service.schedules.vectorized.batch.MAIN_FIELDS` says where each one goes)."""


def compute_many(
    requests: list[specs.ScheduleRequest | ServiceError],
    settings: Settings,
    *,
    limits_checked: bool = False,
) -> list[Computed | ServiceError]:
    """Return, slot by slot, what :func:`compute` returns or raises for each request.

    A slot that already holds an error keeps it. Vectorized specs of the same structure
    (scheduler tree, scalar parameters, groups, steps and sampled indices) are stacked and
    evaluated as one tensor computation; the values are the bits :func:`compute` gives.
    ``limits_checked``: :func:`check_limits` already passed for every request (the batch
    route's validation checks them in order), so it is not repeated.
    """
    with budget.ensure(settings.compute_max_seconds):
        return _compute_many(requests, settings, limits_checked)


def _compute_many(
    requests: list[specs.ScheduleRequest | ServiceError],
    settings: Settings,
    limits_checked: bool = False,
) -> list[Computed | ServiceError]:
    out: list[Computed | ServiceError | None] = [None] * len(requests)
    jobs: list[tuple[Program, np.ndarray]] = []
    gates: list[Callable[[bool], None]] = []
    owners: list[tuple[int, _Prepared]] = []
    templates = _Templates(max(1, len(requests)))
    scans = ScanAllowance(settings)
    for i, request in enumerate(requests):
        if isinstance(request, ServiceError):
            out[i] = request
            continue
        budget.check()
        try:
            if limits_checked:
                engine = choose_engine(request)
                _check_metrics(request)
                libraries.check(request)
                prep = _prepared(request, engine)
            else:
                prep = _prepare(request, settings)
            if prep.engine != "vectorized":
                out[i] = _torch_computed(prep, settings)
                continue
            program = templates.program(prep)
        except ServiceError as exc:
            out[i] = exc
            continue
        except Exception:  # a bug: this slot alone fails, the rest of the batch is answered
            log.exception("batch slot %d failed", i)
            out[i] = InternalError("computing this spec failed; this is a bug in the service")
            continue
        jobs.append((program, prep.sched_index))
        gates.append(partial(scans.charge, request))
        owners.append((i, prep))
    results = vectorized_batch.run_many(jobs, gates)
    for (i, prep), result in zip(owners, results, strict=True):
        out[i] = result if isinstance(result, ServiceError) else _vectorized_computed(prep, result)
    return out  # type: ignore[return-value]
