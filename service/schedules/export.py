"""Export a schedule as code: a runnable Python script that builds it with a library and prints
the lr of every optimizer step, per param group, as JSON (``[[...], ...]``).

``torch``: the real optimizer (one 1×1 parameter per group), the scheduler with the spec's
arguments (the service's warmup as the ``SequentialLR`` the torch engine builds) and the
training loop (``optimizer.step()`` then ``scheduler.step()``, every optimizer step or every
``steps_per_epoch``). Its output is bit-identical to the torch engine's.
"""

from typing import Any, Literal

from service.errors import InvalidSpec
from service.schedules import service, specs, torch_engine
from service.schedules.families import hooks as families

Target = Literal["torch"]
TARGETS: tuple[Target, ...] = ("torch",)


def _refuse(detail: str, *loc: str | int) -> InvalidSpec:
    return InvalidSpec(f"export target 'torch': {detail}", loc=("body", *loc))


def _class_path(cls: type) -> str:
    module = cls.__module__
    if module.startswith("torch.optim.lr_scheduler"):
        return f"lr_scheduler.{cls.__name__}"
    if module.startswith("torch.optim.swa_utils"):
        return f"torch.optim.swa_utils.{cls.__name__}"
    raise _refuse(f"{cls.__name__} is not a torch scheduler", "scheduler")


def _args(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _scheduler(spec: specs.SchedulerBase, span: int, loc: tuple[str | int, ...]) -> str:
    """Return the constructor expression of ``spec`` on ``optimizer``."""
    if isinstance(spec, specs.SequentialLR):
        children = [
            _scheduler(child, child_span, (*loc, "schedulers", i))
            for i, (child, child_span) in enumerate(
                zip(spec.children(), spec.child_spans(span), strict=True)
            )
        ]
        inner = ",\n        ".join(children)
        return (
            f"lr_scheduler.SequentialLR(\n    optimizer,\n    [\n        {inner},\n    ],\n"
            f"    milestones={list(spec.milestones)!r},\n)"
        )
    if isinstance(spec, specs.ChainedScheduler):
        children = [
            _scheduler(child, span, (*loc, "schedulers", i))
            for i, child in enumerate(spec.children())
        ]
        return "lr_scheduler.ChainedScheduler([" + ", ".join(children) + "], optimizer)"
    if isinstance(spec, (specs.LambdaLR, specs.MultiplicativeLR)):
        raise InvalidSpec(
            f"export target 'torch': {spec.type}'s lr_lambda expressions are not exported yet",
            loc=("body", *loc),
        )
    if spec.torch_class is None:
        raise InvalidSpec(
            f"export target 'torch': {spec.type} is not a torch scheduler", loc=("body", *loc)
        )
    kwargs = spec.torch_kwargs()
    if isinstance(spec, specs.OneCycleLR) and spec.total_steps is None and spec.epochs is None:
        kwargs["total_steps"] = max(span, 1)
    args = _args(kwargs)
    return f"{_class_path(spec.torch_class)}(optimizer{', ' + args if args else ''})"


def _warmup(warmup: Any) -> str:
    if isinstance(warmup, specs.ConstantWarmup):
        return (
            f"lr_scheduler.ConstantLR(optimizer, factor={warmup.factor!r}, "
            f"total_iters={warmup.steps!r})"
        )
    if warmup.start_factor > 0:
        return (
            f"lr_scheduler.LinearLR(optimizer, start_factor={warmup.start_factor!r}, "
            f"end_factor=1.0, total_iters={warmup.steps!r})"
        )
    return f"lr_scheduler.LambdaLR(optimizer, lambda epoch: epoch / {warmup.steps!r})"


def torch_script(request: specs.ScheduleRequest) -> str:
    """Return the torch script of ``request`` (see the module docstring)."""
    if families.families(request):
        names = ", ".join(str(f["family"]) for f in families.families(request))
        raise _refuse(f"exports torch's own schedulers; this spec uses {names}", "scheduler")
    scaled = service.apply_batch_scaling(request)
    n = scaled.scheduler_steps
    plateau = isinstance(scaled.scheduler, specs.ReduceLROnPlateau)
    warmup = scaled.warmup
    if warmup is not None and plateau:
        raise _refuse("a warmup before ReduceLROnPlateau is not exported yet", "warmup")
    if warmup is None:
        scheduler = _scheduler(scaled.scheduler, n, ("scheduler",))
    else:
        main = _scheduler(scaled.scheduler, torch_engine.main_span(n, warmup), ("scheduler",))
        scheduler = (
            f"lr_scheduler.SequentialLR(\n    optimizer,\n    [\n        {_warmup(warmup)},\n"
            f"        {main},\n    ],\n    milestones=[{warmup.steps!r}],\n)"
        )
    groups = []
    for override in scaled.param_groups or [{}]:
        extra = {k: tuple(v) if isinstance(v, list) else v for k, v in override.items()}
        groups.append(
            '    {"params": [torch.nn.Parameter(torch.zeros(1, 1))]'
            + "".join(f", {k!r}: {v!r}" for k, v in extra.items())
            + "},"
        )
    opt_args = _args(scaled.optimizer.kwargs())
    metrics = list(scaled.metrics or [])[: max(n - 1, 0)] if plateau else []
    step_call = "scheduler.step(metrics[k - 1])" if plateau else "scheduler.step()"
    per_step = (
        f"[lrs[i // {scaled.steps_per_epoch}] for i in range(STEPS)]"
        if scaled.interval == "epoch"
        else "lrs[:STEPS]"
    )
    lines = [
        '"""The learning-rate schedule, built with torch; prints the lr of every optimizer',
        'step, per param group, as JSON."""',
        "",
        "import json",
        "",
        "import torch",
        "from torch.optim import lr_scheduler",
        "",
        f"STEPS = {scaled.steps}  # optimizer steps",
        f"SCHEDULER_STEPS = {n}  # scheduler.step() calls + 1 (interval {scaled.interval!r})",
        *([f"metrics = {metrics!r}"] if plateau else []),
        "",
        "optimizer = torch.optim.{}([\n{}\n]{})".format(
            scaled.optimizer.type, "\n".join(groups), f", {opt_args}" if opt_args else ""
        ),
        f"scheduler = {scheduler}",
        "",
        "lrs = [[group['lr'] for group in optimizer.param_groups]]",
        "for k in range(1, SCHEDULER_STEPS):",
        "    optimizer.step()  # your training step; the scheduler steps after it",
        f"    {step_call}",
        "    lrs.append([group['lr'] for group in optimizer.param_groups])",
        "",
        f"per_step = {per_step}",
        "print(json.dumps([list(group) for group in zip(*per_step)]))",
        "",
        "# To resume safely, checkpoint both and load both into freshly built objects:",
        "#   torch.save({'optimizer': optimizer.state_dict(),",
        "#               'scheduler': scheduler.state_dict()}, 'ckpt.pt')",
        "#   state = torch.load('ckpt.pt', weights_only=True)",
        "#   optimizer.load_state_dict(state['optimizer'])",
        "#   scheduler.load_state_dict(state['scheduler'])",
        "",
    ]
    return "\n".join(lines)


def export(request: specs.ScheduleRequest, target: Target) -> str:
    """Return the script for ``target``."""
    return torch_script(request)
