# ruff: noqa: E501 - the table of codes reads best one code a line
"""The stable codes of every warning the service knows, and the warning type that carries one.

A scheduler's ``caveats``/``request_caveats`` return :class:`Caveat` objects: strings (the
message that ``compute`` puts in ``warnings``, unchanged) that also carry a code from
:data:`CODES` and the step where they bite, counted in the scheduler steps of the spec that
raised them. ``POST /v1/schedules/lint`` (:mod:`service.schedules.lint`) reads the code and
step, turns the step into an optimizer step, and adds the hazards compute does not warn
about (``kind="hazard"``). The table in ``docs/lint.md`` lists every code (a test keeps it
equal to :data:`CODES`); a code, once published, never changes its meaning.

This module imports nothing of the service, so every family module can use it.
"""

from dataclasses import dataclass
from typing import Literal

Kind = Literal["caveat", "hazard", "error"]

TORCH_DOCS = "https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.{}.html"
TORCH_OPTIM = "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate"
HF_SCHEDULES = "https://huggingface.co/docs/transformers/main_classes/optimizer_schedules"
HF_SOURCE = "https://github.com/huggingface/transformers/blob/main/src/transformers/optimization.py"
TIMM = "https://github.com/huggingface/pytorch-image-models/blob/main/timm/scheduler/{}.py"
OPTAX = "https://github.com/google-deepmind/optax/blob/main/optax/schedules/_schedule.py"
MEGATRON = (
    "https://github.com/NVIDIA/Megatron-LM/blob/main/megatron/core/optimizer_param_scheduler.py"
)
PYTORCH_WARMUP = "https://github.com/Tony-Y/pytorch_warmup"


@dataclass(frozen=True)
class Code:
    """One kind of finding: its stable ``code``, what it means, and where it is explained."""

    code: str
    kind: Kind
    """``caveat``: compute warns about it too; ``hazard``: only lint reports it (it bites in a
    training loop, not in the values compute returns); ``error``: compute refuses the request."""
    summary: str
    """One line for the documentation table."""
    see: str | None
    """The torch or library issue or doc that explains it."""


CODES: dict[str, Code] = {
    c.code: c
    for c in [
        # ----------------------------------------------------------------- the request
        Code("warmup-covers-schedule", "caveat", "The warmup is not shorter than the schedule: the scheduler never starts.", TORCH_DOCS.format("SequentialLR")),
        Code("metrics-ignored", "caveat", "`metrics` given to a scheduler that does not read them (only a metric-driven one at the top does: ReduceLROnPlateau, timm's plateau, transformers' reduce_lr_on_plateau or greedy).", TORCH_DOCS.format("ReduceLROnPlateau")),
        Code("plateau-after-warmup", "caveat", "A metric-driven scheduler (ReduceLROnPlateau, timm's plateau, transformers' reduce_lr_on_plateau or greedy) after a warmup: SequentialLR refuses it, so the metrics during the warmup are ignored.", "https://github.com/pytorch/pytorch/issues/68978"),
        Code("lr-scale-unread", "caveat", "A param group's `lr_scale` with a warmup or SequentialLR segment that is not timm's: only timm's schedulers multiply it in.", None),
        Code("metrics-extra", "caveat", "More metrics than scheduler steps: the rest are not used.", TORCH_DOCS.format("ReduceLROnPlateau")),
        Code("metrics-missing", "error", "A metric-driven scheduler without a metric for every scheduler step: `step()` needs one (compute refuses the request).", TORCH_DOCS.format("ReduceLROnPlateau")),
        # ----------------------------------------------------------------- torch schedulers
        Code("step-size-beyond-end", "caveat", "StepLR's step_size is not shorter than the schedule: the lr never changes.", TORCH_DOCS.format("StepLR")),
        Code("lr-grows", "caveat", "gamma > 1: the lr grows instead of decaying.", TORCH_DOCS.format("ExponentialLR")),
        Code("milestones-unreached", "caveat", "MultiStepLR milestones at or past the end of the schedule never apply.", TORCH_DOCS.format("MultiStepLR")),
        Code("milestone-repeated", "caveat", "A MultiStepLR milestone listed twice applies gamma twice.", TORCH_DOCS.format("MultiStepLR")),
        Code("milestones-unsorted", "caveat", "MultiStepLR milestones out of order (torch counts them: the order does not matter).", TORCH_DOCS.format("MultiStepLR")),
        Code("sequential-milestones-unsorted", "caveat", "SequentialLR milestones out of order: torch bisects them as given.", TORCH_DOCS.format("SequentialLR")),
        Code("sequential-milestone-zero", "caveat", "SequentialLR milestone 0: the scheduler before it never runs.", TORCH_DOCS.format("SequentialLR")),
        Code("polynomial-zero-iters", "caveat", "PolynomialLR total_iters=0: the lr stays at its initial value.", TORCH_DOCS.format("PolynomialLR")),
        Code("cosine-rises-after-t-max", "caveat", "CosineAnnealingLR run past T_max: torch's lr rises again along the cosine.", TORCH_DOCS.format("CosineAnnealingLR")),
        Code("onecycle-total-steps-defaulted", "caveat", "OneCycleLR without total_steps or epochs: the service defaults it to the request's length.", TORCH_DOCS.format("OneCycleLR")),
        Code("cyclic-stepped-per-epoch", "caveat", "CyclicLR / OneCycleLR stepped per epoch: they are meant to step after every batch.", TORCH_DOCS.format("CyclicLR")),
        Code("cyclic-replaces-lr", "caveat", "CyclicLR / OneCycleLR set every group's lr themselves: the optimizer's lr is not used.", TORCH_DOCS.format("OneCycleLR")),
        Code("cyclic-overwrites-momentum", "caveat", "CyclicLR / OneCycleLR with cycle_momentum overwrite the optimizer's momentum.", TORCH_DOCS.format("CyclicLR")),
        # ----------------------------------------------------------------- other libraries
        Code("family-ignores-lr", "caveat", "optax / Megatron set the lr themselves: the optimizer's and groups' lr are not read.", OPTAX),
        Code("hf-warmup-ratio", "caveat", "transformers num_warmup_steps < 1 is read as a ratio of num_training_steps (as the Trainer does).", "https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments"),
        Code("hf-ignores-argument", "caveat", "transformers' get_scheduler drops num_warmup_steps or num_training_steps for this name.", HF_SCHEDULES),
        Code("hf-cosine-rises-after-training", "caveat", "transformers' cosine schedules rise again after num_training_steps (optax, timm and Megatron hold).", HF_SOURCE),
        Code("hf-warmup-starts-above-zero", "caveat", "transformers' cosine_warmup_with_min_lr starts at lr / num_warmup_steps, not 0.", HF_SOURCE),
        Code("hf-absolute-lr-per-group", "caveat", "transformers' polynomial lr_end (and an absolute min_lr) is divided by the optimizer's lr: each group ends at lr_i * lr_end / lr.", HF_SOURCE),
        Code("hf-wsd-stable-steps-wins", "caveat", "warmup_stable_decay with both num_training_steps and num_stable_steps: num_stable_steps wins.", HF_SOURCE),
        Code("pytorch-warmup-untuned-period", "caveat", "pytorch_warmup's untuned warmup period is int(2 / (1 - beta2)): 1999 steps for beta2=0.999, not 2000.", PYTORCH_WARMUP),
        Code("timm-multistep-one-step-early", "caveat", "timm's multistep applies milestone m at t = m - 1, one step before torch's MultiStepLR.", TIMM.format("multistep_lr")),
        Code("timm-holds-min-lr", "caveat", "timm holds min_lr after its last cycle or decay, where torch's CosineAnnealingLR rises again.", TIMM.format("cosine_lr")),
        Code("optax-holds-final-value", "caveat", "optax holds its final value after decay_steps, where torch's CosineAnnealingLR rises again.", OPTAX),
        Code("optax-onecycle-peak-step", "caveat", "optax's one-cycle schedules peak at int(pct_start * T), one step after torch's OneCycleLR.", OPTAX),
        Code("megatron-holds-min-lr", "caveat", "Megatron holds min_lr after lr_decay_steps, where torch's CosineAnnealingLR rises again.", MEGATRON),
        # ----------------------------------------------------------------- lint only
        Code("last-epoch-resume-restarts-children", "hazard", "SequentialLR / ChainedScheduler (and a warmup, which is a SequentialLR in torch) rebuilt with last_epoch=N resume at the wrong lr; resume with state_dict().", "https://github.com/pytorch/pytorch/issues/162591"),
        Code("last-epoch-resume-chainable", "hazard", "A chainable scheduler (StepLR, MultiStepLR, ExponentialLR, ConstantLR, LinearLR, PolynomialLR, CosineAnnealingLR, MultiplicativeLR; CyclicLR for one step) computes each lr from the group's current lr: rebuilt with last_epoch=k-1 on a fresh optimizer to resume at step k, it continues from the initial lr. The step is the first resume step that gets a wrong lr.", TORCH_OPTIM),
        Code("last-epoch-resume-raises", "hazard", "OneCycleLR rebuilt with last_epoch on a fresh optimizer raises KeyError('max_lr'): it reads the max_lr/min_lr its first construction wrote into the param groups.", TORCH_DOCS.format("OneCycleLR")),
        Code("onecycle-raises-past-total-steps", "hazard", "OneCycleLR raises ValueError when stepped more than total_steps times (a longer run, a resumed run, a miscounted steps_per_epoch).", "https://github.com/pytorch/pytorch/issues/38170"),
        Code("onecycle-peak-step", "hazard", "torch's OneCycleLR peaks at step pct_start * total_steps - 1; optax's one-cycle and a transformers warmup of the same length peak one step later.", TORCH_DOCS.format("OneCycleLR")),
        Code("amp-skipped-steps-advance-schedule", "hazard", "With AMP, GradScaler skips optimizer steps whose gradients overflow (typically the first few) but scheduler.step() still runs: the schedule advances without an update and torch warns.", "https://github.com/pytorch/pytorch/issues/55585"),
        # ----------------------------------------------------------------- step counters
        Code("skipped-steps-repeated", "caveat", "skipped_steps lists a step more than once: it counts once.", "https://github.com/pytorch/pytorch/issues/55585"),
        Code("megatron-holds-on-skipped-steps", "caveat", "Megatron's training loop does not step its scheduler on a skipped iteration: the schedule holds there.", MEGATRON),
        Code("amp-step-order-warning", "caveat", "Every optimizer step before the first scheduler.step() was skipped: torch warns 'Detected call of lr_scheduler.step() before optimizer.step()' once.", TORCH_OPTIM),
        Code("amp-skips-unwarned", "caveat", "Skipped optimizer steps that nothing warns about (torch checks the call order only at the first scheduler.step(); timm, optax and Megatron never).", "https://github.com/pytorch/pytorch/issues/67590"),
        Code("megatron-rampup-counts-samples", "caveat", "Megatron's loop steps its scheduler by samples, so during a batch-size ramp-up its lr follows samples, not optimizer steps.", MEGATRON),
        Code("uncoded", "caveat", "A warning with no code of its own yet (its message says what it is).", None),
    ]
}  # fmt: skip


class Caveat(str):
    """A warning message (a ``str``: what ``compute``'s ``warnings`` shows) with its ``code``
    and ``step``: where it bites, in the scheduler steps of the spec that raised it (None
    when it is not about one step)."""

    code: str
    step: int | None

    def __new__(cls, message: str, code: str = "uncoded", step: int | None = None) -> "Caveat":
        if code not in CODES:  # pragma: no cover - a programming error, caught by the tests
            raise KeyError(f"unknown warning code {code!r}: add it to CODES")
        obj = super().__new__(cls, message)
        obj.code = code
        obj.step = None if step is None else int(step)
        return obj

    def shifted(self, offset: int) -> "Caveat":
        """Return the same warning with its step ``offset`` scheduler steps later."""
        if self.step is None or offset == 0:
            return self
        return Caveat(str(self), self.code, self.step + offset)


def caveat(code: str, message: str, step: int | None = None) -> Caveat:
    """Return the warning ``message`` with ``code`` (a key of :data:`CODES`) and ``step``."""
    return Caveat(message, code, step)


def code_of(warning: str) -> tuple[str, int | None]:
    """Return the code and step a warning carries (``uncoded``/None for a plain string)."""
    if isinstance(warning, Caveat):
        return warning.code, warning.step
    return "uncoded", None


def shift(warnings: list[str], offset: int) -> list[str]:
    """Return ``warnings`` with every coded step ``offset`` scheduler steps later."""
    return [w.shifted(offset) if isinstance(w, Caveat) else w for w in warnings]


def child_starts(spec: object) -> list[int]:
    """Return the scheduler step (of ``spec``'s own count) at which each child of ``spec``
    starts its own step 0: a SequentialLR's milestones, 0 for every other composite."""
    children = spec.children()  # type: ignore[attr-defined]
    if getattr(spec, "type", None) != "SequentialLR":
        return [0] * len(children)
    bounds = [0, *getattr(spec, "milestones", [])]
    return [bounds[min(i, len(bounds) - 1)] for i in range(len(children))]


def placed(spec: object, offset: int = 0) -> list[tuple[object, int]]:
    """Return ``(spec, offset)`` for ``spec`` and every scheduler nested in it, depth first
    (the order of ``specs.walk``): ``offset`` is the step of the outermost scheduler's count
    at which that one starts its own count."""
    out = [(spec, offset)]
    for child, start in zip(spec.children(), child_starts(spec), strict=True):  # type: ignore[attr-defined]
        out += placed(child, offset + start)
    return out
