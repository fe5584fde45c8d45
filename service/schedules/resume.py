"""The resume check: what lr a run resumed at an optimizer step gets, recipe by recipe, against
the run that never stopped. Every recipe runs with the real torch objects.

Recipes (at scheduler step ``k``, the one the run stopped at):

- ``state_dict``: the optimizer's and the scheduler's ``state_dict()`` saved at ``k``, fresh
  objects built from the spec, both loaded, stepping continued (the correct recipe);
- ``last_epoch``: a fresh optimizer (``initial_lr`` set to each group's lr) and the scheduler
  rebuilt with ``last_epoch=k - 1``, as many training scripts do; ``SequentialLR`` resumes wrong
  this way (pytorch #162591) since its children start over;
- ``fast_forward``: fresh objects stepped ``k`` times (metrics replayed for ReduceLROnPlateau);
- ``changed``: the state saved at ``k`` loaded into objects built from a modified spec (a longer
  ``T_max``: a horizon extension). torch's ``load_state_dict`` restores every attribute, the
  old horizon included, which the answer makes visible.
"""

import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.optim import lr_scheduler
from torch.optim.lr_scheduler import LRScheduler

from service.errors import InvalidSpec, LimitExceeded
from service.schedules import budget, compare, counters, service, specs, torch_engine
from service.schedules.families import hooks as families
from service.schedules.result import Counters
from service.settings import Settings

Recipe = Literal["state_dict", "last_epoch", "fast_forward", "changed"]
DEFAULT_RECIPES: list[Recipe] = ["state_dict", "last_epoch", "fast_forward"]
TOLERANCE = 1e-12
"""Relative: a recipe's lr differs when |a - b| > 1e-12 · max(|a|, |b|)."""

EXAMPLE_SPEC = {
    "optimizer": {"type": "SGD", "lr": 0.1},
    "scheduler": {"type": "CosineAnnealingLR", "T_max": 90},
    "warmup": {"type": "linear", "steps": 10, "start_factor": 0.1},
    "steps": 100,
}


class ResumeRequest(BaseModel):
    """A schedule, the optimizer step where the run stopped, and the recipes to resume it by."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "spec": EXAMPLE_SPEC,
                    "resume_at": 50,
                    "recipes": ["state_dict", "last_epoch", "fast_forward"],
                },
                {
                    "spec": {
                        "scheduler": {"type": "CosineAnnealingLR", "T_max": 100},
                        "steps": 100,
                    },
                    "resume_at": 40,
                    "recipes": ["state_dict"],
                    "changed": {
                        "scheduler": {"type": "CosineAnnealingLR", "T_max": 200},
                        "steps": 100,
                    },
                },
                {
                    "spec": {
                        "scheduler": {"type": "StepLR", "step_size": 10, "gamma": 0.5},
                        "steps": 60,
                    },
                    "state": {
                        "step_size": 10,
                        "gamma": 0.5,
                        "base_lrs": [0.1],
                        "last_epoch": 25,
                        "_step_count": 26,
                        "_is_initial": False,
                        "_get_lr_called_within_step": False,
                        "_last_lr": [0.025],
                    },
                    "next_steps": 10,
                },
            ]
        },
    )

    spec: specs.ScheduleRequest = Field(
        description="The schedule as `POST /v1/schedules/compute` takes it (torch's own "
        "schedulers and the service's linear/constant warmups)."
    )
    resume_at: int | None = Field(
        default=None,
        ge=1,
        description="The optimizer step where the run stopped: the first step the resumed run "
        "takes. Must be below spec.steps. Give this or `state`.",
    )
    state: dict[str, Any] | None = Field(
        default=None,
        description="Instead of `resume_at`: a real scheduler's `state_dict()` as JSON "
        "(`json.dumps(scheduler.state_dict())`; `Infinity` and the strings "
        '`"Infinity"`/`"-Infinity"` are read as infinities, as ReduceLROnPlateau\'s `best` '
        "holds). It is loaded into the spec's scheduler (a SequentialLR of the warmup and the "
        "scheduler when the spec has a warmup) and the answer is the lr of the next "
        "`next_steps` optimizer steps, beside the uninterrupted run. A `.pt` made by "
        "`torch.save` can be uploaded instead as multipart/form-data.",
    )
    next_steps: int | None = Field(
        default=None,
        ge=1,
        description="With `state`: how many optimizer steps to answer, from the step the "
        "state is at (its `last_epoch`); by default to the end of spec.steps. Bounded by "
        "LRS_TORCH_MAX_STEPS and LRS_TORCH_MAX_WORK.",
    )
    recipes: list[Recipe] = Field(
        default_factory=lambda: list(DEFAULT_RECIPES),
        min_length=1,
        description="Which recipes to run; `changed` is added when `changed` is given.",
    )
    changed: specs.ScheduleRequest | None = Field(
        default=None,
        description="The modified spec the `changed` recipe resumes with (same param groups).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "ResumeRequest":
        if (self.resume_at is None) == (self.state is None):
            raise ValueError(
                "give either resume_at (the optimizer step where the run stopped) or state "
                "(a scheduler's state_dict()), not both or neither"
            )
        if self.state is not None:
            given = {"recipes", "changed"} & self.model_fields_set
            if given:
                raise ValueError(
                    f"{' and '.join(sorted(given))} go with resume_at; with state the answer "
                    "is the loaded state's next steps: drop them"
                )
            return self
        if self.next_steps is not None:
            raise ValueError(
                "next_steps goes with state; with resume_at the answer runs to spec.steps"
            )
        if self.changed is not None and "changed" not in self.recipes:
            self.recipes = [*self.recipes, "changed"]
        if "changed" in self.recipes and self.changed is None:
            raise ValueError("recipe 'changed' needs the modified spec in 'changed'")
        self.recipes = list(dict.fromkeys(self.recipes))
        return self


class RecipeResult(BaseModel):
    lr: list[list[float]] | None = Field(
        description="One list per param group, aligned with steps; null when torch refused."
    )
    first_difference: int | None = Field(
        description="The first optimizer step whose lr differs from the uninterrupted run."
    )
    max_abs_diff: float
    max_rel_diff: float
    verdict: str = Field(description="One line: identical, or where and how it differs.")


class StateDifference(BaseModel):
    key: str = Field(description="Where in the state, e.g. `T_max` or `_schedulers[1].last_epoch`.")
    state: Any = Field(description="The loaded state's value.")
    uninterrupted: Any = Field(description="The uninterrupted run's value at the same step.")


class StateCheck(BaseModel):
    """What the loaded state is, against the run that never stopped."""

    source: Literal["json", "pt"] = Field(description="`json` (the body's state) or `pt`.")
    last_epoch: int = Field(description="The scheduler steps the state has taken.")
    matches_uninterrupted: bool | None = Field(
        description="Whether every value of the state equals the uninterrupted run's "
        "state_dict() at last_epoch; null when that run cannot get there."
    )
    differences: list[StateDifference] = Field(
        description="The values that differ (at most 20), in state_dict() order."
    )
    verdict: str


class ResumeResult(BaseModel):
    steps: list[int] = Field(
        description="The optimizer steps returned: spec.sample applies with resume_at; with "
        "state, every step of the next next_steps."
    )
    resume_at: int = Field(
        description="The optimizer step the resumed run starts at (with state: last_epoch × "
        "steps_per_epoch with interval 'epoch', else last_epoch)."
    )
    uninterrupted: list[list[float]] | None = Field(
        description="The run that never stopped; null when torch stops it before these steps "
        "(a warning says why)."
    )
    recipes: dict[str, RecipeResult] = Field(
        description="Per recipe; with state, one entry `state`: the loaded state's lr."
    )
    state: StateCheck | None = Field(default=None, description="With state: what it holds.")
    warnings: list[str]
    counters: Counters | None = Field(
        default=None,
        description="With skipped_steps/accumulation_steps/counter in spec: each returned "
        "step's counters, as compute returns them (at: the uninterrupted run's lr).",
    )


def _refuse_unsupported(request: specs.ScheduleRequest, field: str) -> None:
    if families.families(request):
        names = ", ".join(str(f["family"]) for f in families.families(request))
        raise InvalidSpec(
            f"the resume check covers torch's own schedulers and the service's warmups; "
            f"{field} uses {names}",
            loc=("body", field),
        )


def _check_limits(request: ResumeRequest, settings: Settings) -> None:
    spec = request.spec
    if spec.steps > settings.torch_max_steps:
        raise LimitExceeded(
            f"steps={spec.steps} is above the torch engine's limit of "
            f"{settings.torch_max_steps} (LRS_TORCH_MAX_STEPS)",
            loc=("body", "spec", "steps"),
        )
    runs = len(request.recipes) + 1
    one = budget.cost(spec, "torch")
    work = work_of(request)
    if work > settings.torch_max_work:
        raise LimitExceeded(
            f"the check needs {runs} runs of {one.describe()} ({one.total} scheduler updates "
            f"each; the recipes replay the first resume_at steps too): {work} scheduler updates; "
            f"the limit is {settings.torch_max_work} (LRS_TORCH_MAX_WORK). Lower steps or recipes.",
            loc=("body", "spec", "steps"),
        )


def work_of(request: ResumeRequest) -> int:
    """Return the torch cost of a resume_at check (budget.cost's scheduler updates): the
    uninterrupted run and, per recipe, the stopped run and the resumed one (each a full run)."""
    one = budget.cost(request.spec, "torch").total
    total = one * (len(request.recipes) + 1)
    if request.changed is not None:
        total += budget.cost(request.changed, "torch").total
    return total


def cost_share(request: ResumeRequest, settings: Settings) -> float:
    """Return the share of LRS_TORCH_MAX_WORK the request uses (the routes run requests
    above LRS_COMPUTE_HEAVY_SHARE in the expensive lane, as compute does)."""
    if request.state is not None:
        n = request.next_steps or request.spec.steps
        spec = request.spec.model_copy(update={"steps": max(request.spec.steps, n)})
        work = 2 * budget.cost(spec, "torch").total
    else:
        work = work_of(request)
    return work / max(settings.torch_max_work, 1)


def _rebuilt(
    optimizer: torch.optim.Optimizer, spec: specs.SchedulerBase, span: int, last_epoch: int
) -> LRScheduler:
    """Return the scheduler for ``spec`` built as a resumed script builds it: the outermost
    torch constructor given ``last_epoch`` (SequentialLR's children built fresh, as users write
    them; each of ChainedScheduler's children given it, since ChainedScheduler takes none)."""
    if isinstance(spec, specs.SequentialLR):
        children = [
            torch_engine._build(optimizer, child, ("body", "spec", "scheduler"), child_span, {})
            for child, child_span in zip(spec.children(), spec.child_spans(span), strict=True)
        ]
        return lr_scheduler.SequentialLR(
            optimizer, children, list(spec.milestones), last_epoch=last_epoch
        )
    if isinstance(spec, specs.ChainedScheduler):
        children = [_rebuilt(optimizer, child, span, last_epoch) for child in spec.children()]
        return lr_scheduler.ChainedScheduler(children, optimizer)
    if isinstance(spec, (specs.LambdaLR, specs.MultiplicativeLR)):
        return spec.torch_class(optimizer, spec._parsed, last_epoch=last_epoch)
    kwargs = spec.torch_kwargs()
    if isinstance(spec, specs.OneCycleLR) and spec.total_steps is None and spec.epochs is None:
        kwargs["total_steps"] = max(span, 1)
    return spec.torch_class(optimizer, **kwargs, last_epoch=last_epoch)


class _Run:
    """One training run's scheduler side: real torch objects stepped, every lr recorded.

    ``last_epoch`` (not -1): the scheduler rebuilt with it on a fresh optimizer whose groups
    have ``initial_lr`` set, as a resumed script does (the warmup becomes the SequentialLR it
    is); ReduceLROnPlateau takes no ``last_epoch``, so it is built fresh.
    """

    def __init__(self, request: specs.ScheduleRequest, last_epoch: int = -1) -> None:
        self.metrics = request.metrics or []
        optimizer = torch_engine.make_optimizer(request.optimizer, request.param_groups)
        n = request.scheduler_steps
        self.stepper = torch_engine.Stepper(
            optimizer, request.scheduler, request.warmup, n, closed=False
        )
        if last_epoch == -1 or self.stepper.plateau:
            return
        optimizer = torch_engine.make_optimizer(request.optimizer, request.param_groups)
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        warmup = request.warmup
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if warmup is None:
                scheduler = _rebuilt(optimizer, request.scheduler, n, last_epoch)
            else:
                first = warmup.build(optimizer)
                main = torch_engine._build(
                    optimizer,
                    request.scheduler,
                    ("body", "spec", "scheduler"),
                    torch_engine.main_span(n, warmup),
                    {},
                )
                scheduler = lr_scheduler.SequentialLR(
                    optimizer, [first, main], milestones=[warmup.steps], last_epoch=last_epoch
                )
        self.stepper.optimizer = optimizer
        self.stepper.scheduler = scheduler

    def advance(self, start: int, stop: int, rows: list[list[float]]) -> None:
        """Take scheduler steps ``start..stop-1`` (1-based counts), appending each lr."""
        for k in range(start, stop):
            metric = self.metrics[k - 1] if self.stepper.plateau else None
            self.stepper.step(metric)
            rows.append(self.stepper.lrs())
            if k % 256 == 0:
                budget.check()

    def state(self) -> dict[str, Any]:
        """Return what a checkpoint holds: the optimizer's and schedulers' ``state_dict()``."""
        stepper = self.stepper
        return {
            "optimizer": stepper.optimizer.state_dict(),
            "scheduler": stepper.scheduler.state_dict(),
            "warmup": None if stepper.warmup is None else stepper.warmup.state_dict(),
        }

    def load(self, state: dict[str, Any], k: int) -> None:
        """Load a checkpoint taken at scheduler step ``k``."""
        stepper = self.stepper
        stepper.optimizer.load_state_dict(state["optimizer"])
        stepper.scheduler.load_state_dict(state["scheduler"])
        if stepper.warmup is not None and state["warmup"] is not None:
            stepper.warmup.load_state_dict(state["warmup"])
        stepper._step_count = k


def _stopped(spec: specs.ScheduleRequest, k: int) -> tuple[list[list[float]], dict[str, Any]]:
    """Return the lrs of scheduler steps 0..k of the run that stops at k, and its state there."""
    run = _Run(spec)
    rows = [run.stepper.lrs()]
    run.advance(1, k + 1, rows)
    return rows, run.state()


def _recipes(
    spec: specs.ScheduleRequest, changed: specs.ScheduleRequest | None, k: int
) -> dict[str, Callable[[], list[list[float]]]]:
    """Return, per recipe, a function giving the lr of scheduler steps 0..n-1 (groups per row)."""
    n = spec.scheduler_steps

    def state_dict() -> list[list[float]]:
        rows, state = _stopped(spec, k)
        resumed = _Run(spec)
        resumed.load(state, k)
        rows = [*rows[:k], resumed.stepper.lrs()]
        resumed.advance(k + 1, n, rows)
        return rows

    def last_epoch() -> list[list[float]]:
        rows, _ = _stopped(spec, k)
        resumed = _Run(spec, last_epoch=k - 1)
        resumed.stepper._step_count = k
        rows = [*rows[:k], resumed.stepper.lrs()]
        resumed.advance(k + 1, n, rows)
        return rows

    def fast_forward() -> list[list[float]]:
        rows, _ = _stopped(spec, k)
        resumed = _Run(spec)
        skipped: list[list[float]] = []
        resumed.advance(1, k + 1, skipped)
        rows = [*rows[:k], resumed.stepper.lrs()]
        resumed.advance(k + 1, n, rows)
        return rows

    def changed_recipe() -> list[list[float]]:
        assert changed is not None
        rows, state = _stopped(spec, k)
        resumed = _Run(changed)
        resumed.load(state, k)
        rows = [*rows[:k], resumed.stepper.lrs()]
        resumed.advance(k + 1, n, rows)
        return rows

    return {
        "state_dict": state_dict,
        "last_epoch": last_epoch,
        "fast_forward": fast_forward,
        "changed": changed_recipe,
    }


def _by_optimizer_step(spec: specs.ScheduleRequest, rows: list[list[float]]) -> np.ndarray:
    """Return lr per group per optimizer step (groups × steps) from per-scheduler-step rows."""
    lr = np.asarray(rows, dtype=np.float64).T
    steps = np.arange(spec.steps)
    return lr[:, steps // spec.steps_per_epoch] if spec.interval == "epoch" else lr


def _verdict(diff: dict[str, Any], ours: np.ndarray, theirs: np.ndarray) -> str:
    step = diff["first_difference"]
    if step is None:
        return "identical"
    group = int(np.argmax(np.abs(ours[:, step] - theirs[:, step])))
    where = f" (group {group})" if ours.shape[0] > 1 else ""
    return (
        f"differs from step {step}{where}: lr {ours[group, step]:.6g} instead of "
        f"{theirs[group, step]:.6g}"
    )


def check(request: ResumeRequest, settings: Settings) -> dict[str, Any]:
    """Return the body of `POST /v1/schedules/resume` (see :class:`ResumeResult`)."""
    spec = request.spec
    assert request.resume_at is not None  # a request with state goes to resume_state
    _refuse_unsupported(spec, "spec")
    if request.resume_at >= spec.steps:
        raise InvalidSpec(
            f"resume_at={request.resume_at} is not inside the run: steps run 0..{spec.steps - 1}",
            loc=("body", "resume_at"),
        )
    _check_limits(request, settings)
    scaled = service.apply_batch_scaling(spec)
    plan = counters.resume_plan(scaled)
    changed = None
    notes: list[str] = []
    if request.changed is not None:
        _refuse_unsupported(request.changed, "changed")
        changed = service.apply_batch_scaling(request.changed)
        if changed.n_groups != scaled.n_groups:
            raise InvalidSpec(
                f"changed has {changed.n_groups} param groups and spec {scaled.n_groups}; "
                "a resumed optimizer keeps its groups",
                loc=("body", "changed", "param_groups"),
            )
        if changed.scheduler_steps < scaled.scheduler_steps:
            changed = changed.model_copy(update={"steps": scaled.steps})
        if changed.steps > scaled.steps:
            notes.append(
                f"the changed spec runs {changed.steps} steps; the answer covers the first "
                f"{scaled.steps}, as the uninterrupted run does"
            )
    k = request.resume_at // spec.steps_per_epoch if spec.interval == "epoch" else request.resume_at
    uninterrupted = torch_engine.run_scheduler_steps(
        scaled, scaled.scheduler_steps, max_seconds=settings.compute_max_seconds
    ).lr
    reference = _by_optimizer_step(spec, uninterrupted.T.tolist())
    indices = service.sample_indices(scaled)
    all_steps = np.arange(spec.steps)
    runners = _recipes(scaled, changed, k)
    results: dict[str, Any] = {}
    for name in request.recipes:
        try:
            rows = runners[name]()
        except (InvalidSpec, ValueError, KeyError, RuntimeError, IndexError, TypeError) as exc:
            reason = exc.detail if isinstance(exc, InvalidSpec) else f"{type(exc).__name__}: {exc}"
            results[name] = {
                "lr": None,
                "first_difference": None,
                "max_abs_diff": 0.0,
                "max_rel_diff": 0.0,
                "verdict": f"torch refused this recipe: {reason}",
            }
            continue
        ours = _by_optimizer_step(spec, rows)
        diff = compare.pair_diff(ours, reference, all_steps, TOLERANCE)
        results[name] = {
            "lr": ours[:, indices].tolist(),
            **diff,
            "verdict": _verdict(diff, ours, reference),
        }
    unchanged = "changed" in results and results["changed"]["first_difference"] is None
    if unchanged and changed is not None and changed.scheduler != scaled.scheduler:
        notes.append(
            "changed: identical to the uninterrupted run although the scheduler changed: "
            "load_state_dict restored the saved scheduler's attributes over the changed "
            "spec's. Set the new value on the scheduler after loading its state."
        )
    body = {
        "steps": indices.tolist(),
        "resume_at": request.resume_at,
        "uninterrupted": reference[:, indices].tolist(),
        "recipes": results,
        "warnings": notes,
    }
    return counters.resume_counters(body, plan, reference, indices, request.resume_at)
