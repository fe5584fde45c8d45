"""Export a schedule as code: a runnable Python script that builds it with a library and prints
the lr of every optimizer step, per param group, as JSON (``[[...], ...]``, its last line).

Targets (each spec can be written for the ones :func:`capable` lists; any other is a 422 that
names them):

- ``torch``: torch's own schedulers. The real optimizer (one 1×1 parameter per group), the
  scheduler with the spec's arguments (the service's warmup as the ``SequentialLR`` the torch
  engine builds; a pytorch_warmup ``warmup`` as the library's object, built after the scheduler
  and stepped with its ``dampening()`` loop) and the training loop (``optimizer.step()`` then
  ``scheduler.step()``, every optimizer step or every ``steps_per_epoch``).
- ``lightning``: the same scheduler (torch's own or a transformers one) returned by
  ``configure_optimizers`` with Lightning's ``interval``/``frequency``, and a minimal
  ``Trainer.fit`` that makes Lightning step it; a pytorch_warmup warmup dampens it in the
  ``lr_scheduler_step`` hook; a metric-driven one gets ``"monitor": "metric"`` and the
  request's metrics logged as it (in ``training_step``, or ``on_train_epoch_end`` per epoch).
- ``transformers``: ``transformers.get_scheduler`` with the spec's own name and arguments, in the
  torch loop (warmups as for ``torch``).
- ``timm``: ``timm.scheduler.create_scheduler_v2`` and the loop timm's train.py runs:
  ``step_update(num_updates)`` after every optimizer update, ``step(epoch)`` after every epoch.
- ``optax``: the optax schedule function (one per param group where the spec gives per-group
  values), evaluated in float64 (``jax_enable_x64``) at every scheduler step's count.
- ``megatron``: Megatron-core's ``OptimizerParamScheduler`` stepped once per iteration, with the
  equivalent Megatron-LM command-line flags as a comment.

Every torch-based script (all but optax) prints what the torch engine computes bit for bit;
optax's prints within float64 rounding of the closed forms (the tests allow 1e-9 relative).

Checkpoints: the torch, transformers and lightning scripts end with the resume-safe recipe as a
comment (save and load both ``state_dict()``s into freshly built objects). With
``checkpoint=True`` (torch, transformers) the script runs it instead: halfway through it saves
the optimizer's and scheduler's (and warmup's) ``state_dict()``, builds everything anew, loads
them and carries on, printing the same series as an uninterrupted run.
"""

from typing import Any, Literal, get_args

from service.errors import InvalidSpec
from service.schedules import service, specs, torch_engine
from service.schedules.families import llm
from service.schedules.families import megatron as mg
from service.schedules.families import optax as ox
from service.schedules.families import pytorch_warmup as pw
from service.schedules.families import timm as tm
from service.schedules.families import transformers as hf

Target = Literal["torch", "lightning", "transformers", "timm", "optax", "megatron"]
TARGETS: tuple[Target, ...] = get_args(Target)
CHECKPOINT_TARGETS: tuple[Target, ...] = ("torch", "transformers")
"""Targets whose script can run the checkpoint recipe (``checkpoint=true``)."""

Loc = tuple[str | int, ...]


class _Refusal(Exception):
    """This target cannot write the spec: ``detail`` says why, at ``loc``."""

    def __init__(self, detail: str, loc: Loc) -> None:
        super().__init__(detail)
        self.detail = detail
        self.loc = loc


def _refuse(target: str, detail: str, *loc: str | int) -> InvalidSpec:
    return InvalidSpec(f"export target {target!r}: {detail}", loc=("body", *loc))


def _args(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _kwargs_block(kwargs: dict[str, Any], indent: str) -> str:
    return "".join(f"{indent}{k}={v!r},\n" for k, v in kwargs.items())


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())


# --------------------------------------------------------------------------- which targets


def _family_of(spec: specs.SchedulerBase) -> str | None:
    """Return the family of a spec that is not torch's own (None for torch's)."""
    library = getattr(type(spec), "library", None)
    if library is not None:
        return library.family
    if isinstance(spec, llm.Noam):
        return "noam"
    if isinstance(spec, llm.REX):
        return "rex"
    return None


def _kind(request: specs.ScheduleRequest) -> tuple[str, str | None]:
    """Return (what the schedule is, why no target can write it or None).

    The kinds: ``torch`` (torch's own schedulers only), ``transformers``, ``timm``, ``optax``,
    ``megatron`` (one family spec at the top, nothing nested), or ``none``.
    """
    tree = specs.walk(request.scheduler)
    top = request.scheduler
    family = [s for s in tree if _family_of(s)]
    if not family:
        return "torch", None
    if len(tree) > 1:
        names = ", ".join(sorted({str(_family_of(s)) for s in family}))
        return "none", (
            f"a {names} schedule nested in {top.type} is not exported: the scripts build one "
            "library's schedule at the top of the spec"
        )
    kind = _family_of(top)
    if kind not in ("transformers", "timm", "optax", "megatron"):
        return "none", f"{top.type} is a formula no library ships, so there is no code to export"
    warmup = request.warmup
    if warmup is not None and kind != "transformers":
        own = {
            "timm": "warmup_epochs and warmup_lr",
            "optax": "a warmup_* schedule or join_schedules",
            "megatron": "lr_warmup_steps and init_lr",
        }[kind]
        return "none", (
            f"a warmup before a {kind} schedule is not exported: give the warmup in {kind}'s own "
            f"arguments ({own}) instead of the request's warmup"
        )
    return kind, None


def capable(request: specs.ScheduleRequest) -> tuple[Target, ...]:
    """Return the targets that can write ``request`` (batch scaling applied or not)."""
    kind, _ = _kind(request)
    if kind == "torch":
        return ("torch", "lightning")
    if kind == "transformers":
        return ("transformers", "lightning")
    if kind in ("timm", "optax", "megatron"):
        return (kind,)  # type: ignore[return-value]
    return ()


# --------------------------------------------------------------------------- torch builders


def _class_path(cls: type) -> str:
    module = cls.__module__
    if module.startswith("torch.optim.lr_scheduler"):
        return f"lr_scheduler.{cls.__name__}"
    if module.startswith("torch.optim.swa_utils"):
        return f"torch.optim.swa_utils.{cls.__name__}"
    raise _Refusal(f"{cls.__name__} is not a torch scheduler", ("scheduler",))


def _scheduler(spec: specs.SchedulerBase, span: int, loc: Loc) -> str:
    """Return the constructor expression of ``spec`` on ``optimizer`` (torch's own types)."""
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
        raise _Refusal(f"{spec.type}'s lr_lambda expressions are not exported yet", loc)
    if spec.torch_class is None:
        raise _Refusal(f"{spec.type} is not a torch scheduler", loc)
    kwargs = spec.torch_kwargs()
    if isinstance(spec, specs.OneCycleLR) and spec.total_steps is None and spec.epochs is None:
        kwargs["total_steps"] = max(span, 1)
    args = _args(kwargs)
    return f"{_class_path(spec.torch_class)}(optimizer{', ' + args if args else ''})"


def _transformers(spec: hf.TransformersSchedule) -> tuple[str, list[str]]:
    """Return get_scheduler's call for ``spec`` and comment lines above it."""
    notes = []
    kwargs: dict[str, Any] = {}
    w = spec.num_warmup_steps
    if w is not None:
        kwargs["num_warmup_steps"] = spec.warmup_steps
        if 0 < w < 1:
            notes.append(
                f"# num_warmup_steps={w!r} is a ratio of num_training_steps, read as the "
                f"Trainer's TrainingArguments.get_warmup_steps does: "
                f"ceil({spec.num_training_steps} * {w!r}) = {spec.warmup_steps}"
            )
    if spec.num_training_steps is not None:
        kwargs["num_training_steps"] = spec.num_training_steps
    if spec.scheduler_specific_kwargs:
        kwargs["scheduler_specific_kwargs"] = dict(spec.scheduler_specific_kwargs)
    body = _kwargs_block(kwargs, "    ")
    return f"get_scheduler(\n    {spec.name!r},\n    optimizer,\n{body})", notes


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


class _TorchParts:
    """What the torch-based scripts (torch, transformers, lightning) share: the imports, the
    optimizer, the scheduler expression, the warmup, and how the scheduler is stepped."""

    def __init__(self, scaled: specs.ScheduleRequest, target: str, kind: str) -> None:
        self.request = scaled
        n = scaled.scheduler_steps
        self.n = n
        spec = scaled.scheduler
        warmup = scaled.warmup
        self.dampening = warmup if pw.is_pytorch_warmup(warmup) else None
        before = None if self.dampening is not None else warmup
        self.plateau = isinstance(spec, specs.ReduceLROnPlateau) or bool(
            getattr(spec, "metric_driven", False)
        )
        if before is not None and self.plateau:
            raise _Refusal(f"a warmup before {_name(spec)} is not exported yet", ("warmup",))
        self.imports = ["import torch", "from torch.optim import lr_scheduler"]
        self.notes: list[str] = []
        if kind == "transformers":
            self.imports.append("from transformers import get_scheduler")
        if self.dampening is not None:
            self.imports.append("import pytorch_warmup")

        def build(span: int) -> str:
            if kind == "transformers":
                call, notes = _transformers(spec)  # type: ignore[arg-type]
                self.notes += notes
                return call
            return _scheduler(spec, span, ("scheduler",))

        if before is None:
            self.scheduler = build(n)
        else:
            main = build(torch_engine.main_span(n, before))
            self.scheduler = (
                f"lr_scheduler.SequentialLR(\n    optimizer,\n    [\n        {_warmup(before)},\n"
                f"        {_indent(main, '        ').lstrip()},\n    ],\n"
                f"    milestones=[{before.steps!r}],\n)"
            )
        self.warmup = pw.describe(self.dampening) if self.dampening is not None else None
        self.metrics = list(scaled.metrics or [])[: max(n - 1, 0)] if self.plateau else []
        self.optimizer = _optimizer(scaled)

    def build_lines(self) -> list[str]:
        """Return the lines that build ``optimizer``, ``scheduler`` (and ``warmup``)."""
        lines = [*self.notes, f"optimizer = {self.optimizer}", f"scheduler = {self.scheduler}"]
        if self.warmup is not None:
            lines.append(f"warmup = {self.warmup}  # after the scheduler: it dampens its lr")
        return lines

    @property
    def step_call(self) -> str:
        return "scheduler.step(metrics[k - 1])" if self.plateau else "scheduler.step()"

    def step_lines(self) -> list[str]:
        if self.warmup is None:
            return [self.step_call]
        return ["with warmup.dampening():  # pytorch_warmup's loop", f"    {self.step_call}"]


def _name(spec: specs.SchedulerBase) -> str:
    if isinstance(spec, hf.TransformersSchedule):
        return f"transformers' {spec.name}"
    return spec.type


def _optimizer(scaled: specs.ScheduleRequest, extra: list[dict[str, Any]] | None = None) -> str:
    groups = []
    for i, override in enumerate(scaled.param_groups or [{}]):
        entries = {k: tuple(v) if isinstance(v, list) else v for k, v in override.items()}
        entries.update((extra or [{}] * (i + 1))[i] if extra else {})
        groups.append(
            '    {"params": [torch.nn.Parameter(torch.zeros(1, 1))]'
            + "".join(f", {k!r}: {v!r}" for k, v in entries.items())
            + "},"
        )
    opt_args = _args(scaled.optimizer.kwargs())
    return "torch.optim.{}([\n{}\n]{})".format(
        scaled.optimizer.type, "\n".join(groups), f", {opt_args}" if opt_args else ""
    )


def _optimizer_step(scaled: specs.ScheduleRequest) -> str:
    """Return the optimizer step of the loop (LBFGS takes a closure returning the loss)."""
    if scaled.optimizer.type == "LBFGS":
        return "optimizer.step(lambda: 0.0)  # LBFGS: a closure returning your loss"
    return "optimizer.step()"


def _header(library: str) -> list[str]:
    return [
        f'"""The learning-rate schedule, built with {library}.',
        "",
        'Prints the lr of every optimizer step, per param group, as JSON (its last line)."""',
        "",
    ]


def _per_step(request: specs.ScheduleRequest) -> str:
    if request.interval == "epoch":
        return f"[lrs[i // {request.steps_per_epoch}] for i in range(STEPS)]"
    return "lrs[:STEPS]"


CHECKPOINT_COMMENT = [
    "",
    "# To resume safely, checkpoint both (and a pytorch_warmup warmup) and load them into",
    "# freshly built objects (never rebuild the scheduler with last_epoch):",
    "#   torch.save({'optimizer': optimizer.state_dict(),",
    "#               'scheduler': scheduler.state_dict()}, 'ckpt.pt')",
    "#   state = torch.load('ckpt.pt', weights_only=True)",
    "#   optimizer.load_state_dict(state['optimizer'])",
    "#   scheduler.load_state_dict(state['scheduler'])",
    "",
]


def torch_loop_script(
    scaled: specs.ScheduleRequest, target: str, kind: str, checkpoint: bool
) -> str:
    """Return the torch or transformers script (see the module docstring)."""
    parts = _TorchParts(scaled, target, kind)
    library = "transformers' get_scheduler" if kind == "transformers" else "torch"
    if parts.warmup is not None:
        library += " and pytorch_warmup"
    lines = [
        *_header(library),
        *(["import io"] if checkpoint else []),
        "import json",
        "",
        *parts.imports,
        "",
        f"STEPS = {scaled.steps}  # optimizer steps",
        f"SCHEDULER_STEPS = {parts.n}  # scheduler.step() calls + 1 (interval {scaled.interval!r})",
        *([f"metrics = {parts.metrics!r}"] if parts.plateau else []),
        "",
    ]
    build = parts.build_lines()
    objects = "optimizer, scheduler" + (", warmup" if parts.warmup else "")
    if checkpoint:
        lines += [
            "",
            "def build():",
            '    """Return a freshly built optimizer and scheduler (and warmup)."""',
            *(_indent(line, "    ") for line in build),
            f"    return {objects}",
            "",
            "",
            f"{objects} = build()",
            "RESUME_AT = SCHEDULER_STEPS // 2  # where this run checkpoints and resumes",
        ]
    else:
        lines += build
    lines += [
        "",
        "lrs = [[group['lr'] for group in optimizer.param_groups]]",
        "for k in range(1, SCHEDULER_STEPS):",
    ]
    if checkpoint:
        saved = ["'optimizer': optimizer.state_dict()", "'scheduler': scheduler.state_dict()"]
        if parts.warmup:
            saved.append("'warmup': warmup.state_dict()")
        lines += [
            "    if k == RESUME_AT:",
            "        # the resume-safe recipe: save both state_dicts, build everything anew and",
            "        # load them (never rebuild the scheduler with last_epoch or fast-forward it)",
            "        buffer = io.BytesIO()  # or a file: torch.save(..., 'ckpt.pt')",
            "        torch.save({" + ", ".join(saved) + "}, buffer)",
            "        buffer.seek(0)",
            "        state = torch.load(buffer, weights_only=True)",
            f"        {objects} = build()",
            "        optimizer.load_state_dict(state['optimizer'])",
            "        scheduler.load_state_dict(state['scheduler'])",
            *(["        warmup.load_state_dict(state['warmup'])"] if parts.warmup else []),
        ]
    lines += [
        f"    {_optimizer_step(scaled)}  # your training step; the scheduler steps after it",
        *(_indent(line, "    ") for line in parts.step_lines()),
        "    lrs.append([group['lr'] for group in optimizer.param_groups])",
        "",
        f"per_step = {_per_step(scaled)}",
        "print(json.dumps([list(group) for group in zip(*per_step)]))",
    ]
    if not checkpoint:
        lines += CHECKPOINT_COMMENT
    else:
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- lightning


def lightning_script(scaled: specs.ScheduleRequest, kind: str) -> str:
    """Return the Lightning script: ``configure_optimizers`` returns the scheduler with the
    ``interval``/``frequency`` that steps it as the request does, and ``Trainer.fit`` on a
    dataset of ``steps`` one-element batches records each optimizer step's lr."""
    parts = _TorchParts(scaled, "lightning", kind)
    epoch = scaled.interval == "epoch"
    per_epoch = scaled.steps_per_epoch if epoch else scaled.steps
    interval = (
        f'"interval": "epoch",  # scheduler.step() after every epoch of {per_epoch} batches'
        if epoch
        else '"interval": "step",  # scheduler.step() after every optimizer step'
    )
    build = [*parts.notes, f"optimizer = {parts.optimizer}", f"scheduler = {parts.scheduler}"]
    hook: list[str] = []
    step = "scheduler.step(metric)" if parts.plateau else "scheduler.step()"
    if parts.warmup is not None:
        build.append(f"self.warmup = {parts.warmup}  # after the scheduler: it dampens its lr")
        hook = [
            "",
            "    def lr_scheduler_step(self, scheduler, metric):",
            "        # pytorch_warmup's loop: the scheduler steps inside warmup.dampening()",
            "        with self.warmup.dampening():",
            f"            {step}",
        ]
    plateau_config: list[str] = []
    metric_lines: list[str] = []
    log_step: list[str] = []
    log_epoch: list[str] = []
    if parts.plateau:
        plateau_config = ['                "monitor": "metric",  # what Lightning steps it with']
        if not isinstance(scaled.scheduler, specs.ReduceLROnPlateau) and not (
            isinstance(scaled.scheduler, hf.TransformersSchedule)
            and scaled.scheduler.name == "reduce_lr_on_plateau"
        ):
            plateau_config.append('                "reduce_on_plateau": True,  # metric-driven')
            if not hook:
                hook = [
                    "",
                    "    def lr_scheduler_step(self, scheduler, metric):",
                    f"        {step}",
                ]
        metric_lines = [
            f"METRICS = {[*parts.metrics, *(parts.metrics[-1:] or [0.0])]!r}",
            "# the metric after each "
            + ("epoch" if epoch else "optimizer step")
            + " (the last repeated for the step after the last lr)",
        ]
        logged = "torch.tensor(METRICS[{}], dtype=torch.float64)"
        if epoch:
            log_epoch = [
                "",
                "    def on_train_epoch_end(self):",
                "        # your validation metric; Lightning steps the scheduler with it",
                f'        self.log("metric", {logged.format("self.current_epoch")})',
            ]
        else:
            log_step = [
                "        # your metric; Lightning steps the scheduler with it after this step",
                f'        self.log("metric", {logged.format("self.global_step")})',
            ]
    library = "torch" if kind == "torch" else "transformers' get_scheduler"
    lines = [
        f'"""The learning-rate schedule, built with {library} and stepped by Lightning.',
        "",
        'Prints the lr of every optimizer step, per param group, as JSON (its last line)."""',
        "",
        "import json",
        "import logging",
        "",
        *parts.imports,
        "",
        "try:",
        "    import lightning.pytorch as pl",
        "except ImportError:  # the standalone pytorch-lightning package",
        "    import pytorch_lightning as pl",
        "",
        f"STEPS = {scaled.steps}  # optimizer steps",
        f"STEPS_PER_EPOCH = {per_epoch}  # batches per epoch",
        *metric_lines,
        "",
        "",
        "class Schedule(pl.LightningModule):",
        "    def __init__(self):",
        "        super().__init__()",
        "        self.lrs = []  # the lr of every optimizer step, per group",
        "",
        "    def configure_optimizers(self):",
        *(_indent(line, "        ") for line in build),
        "        # your model's parameters would go in the groups; one per group stands in here",
        "        self.stand_ins = torch.nn.ParameterList(",
        "            p for group in optimizer.param_groups for p in group['params']",
        "        )",
        "        return {",
        '            "optimizer": optimizer,',
        '            "lr_scheduler": {',
        '                "scheduler": scheduler,',
        f"                {interval}",
        '                "frequency": 1,',
        *plateau_config,
        "            },",
        "        }",
        *hook,
        "",
        "    def on_train_batch_start(self, batch, batch_idx):",
        "        self.lrs.append([g['lr'] for g in self.trainer.optimizers[0].param_groups])",
        "",
        "    def training_step(self, batch, batch_idx):",
        *log_step,
        "        return sum((p * batch.sum()).sum() for p in self.stand_ins)  # your loss",
        *log_epoch,
        "",
        "    def train_dataloader(self):",
        "        data = torch.ones(STEPS_PER_EPOCH, 1)",
        "        return torch.utils.data.DataLoader(data, batch_size=1)",
        "",
        "",
        'for name in ("lightning.pytorch", "pytorch_lightning"):',
        "    logging.getLogger(name).setLevel(logging.ERROR)",
        "module = Schedule()",
        "trainer = pl.Trainer(",
        "    max_steps=STEPS,",
        "    max_epochs=-1,",
        '    accelerator="cpu",  # the schedule does not depend on the device',
        "    devices=1,",
        "    logger=False,",
        "    enable_checkpointing=False,",
        "    enable_progress_bar=False,",
        "    enable_model_summary=False,",
        "    num_sanity_val_steps=0,",
        ")",
        "trainer.fit(module)",
        "print(json.dumps([list(group) for group in zip(*module.lrs[:STEPS])]))",
        "",
        "# To resume safely, let Lightning checkpoint the optimizer and lr_scheduler states",
        "# (its checkpoints hold both state_dicts, and the loop counters): keep",
        "# enable_checkpointing=True (or a ModelCheckpoint callback) and resume with",
        "#   trainer.fit(module, ckpt_path='last')  # or the path of a .ckpt",
        "# never by rebuilding the scheduler with last_epoch.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- timm


def timm_script(scaled: specs.ScheduleRequest) -> str:
    """Return the timm script: create_scheduler_v2 and train.py's loop."""
    spec: tm.TimmScheduler = scaled.scheduler  # type: ignore[assignment]
    n = scaled.scheduler_steps
    epoch = scaled.interval == "epoch"
    spe = scaled.steps_per_epoch if epoch else 1
    kwargs = spec.factory_kwargs()
    plateau = spec.metric_driven
    metrics = list(scaled.metrics or [])[: max(n - 1, 0)] if plateau else []
    metric = ", metrics[epoch - 1]" if plateau else ""
    if spec.step_on_epochs:
        upe = spe
        note = (
            f"# t counts epochs (step_on_epochs=True): one epoch is {upe} optimizer "
            f"step{'s' if upe != 1 else ''}, so step_update() leaves the lr alone"
        )
        loop = [
            "    scheduler.step_update(num_updates=i)  # timm: after every optimizer update",
            "    if i % UPDATES_PER_EPOCH == 0:",
            "        epoch = i // UPDATES_PER_EPOCH",
            f"        scheduler.step(epoch{metric})  # timm: after every epoch, the epochs done",
        ]
    elif not epoch:
        upe = spec.updates_per_epoch
        note = (
            "# t counts optimizer updates (step_on_epochs=False): step_update() sets the lr and "
            "step() leaves it alone"
        )
        loop = [
            "    scheduler.step_update(num_updates=i)  # timm: after every optimizer update",
            "    if i % UPDATES_PER_EPOCH == 0:",
            "        scheduler.step(i // UPDATES_PER_EPOCH)  # timm: after every epoch",
        ]
    else:
        upe = spe
        note = (
            "# t counts updates (step_on_epochs=False), and this spec steps the scheduler once "
            f"per epoch of {upe} optimizer steps (interval 'epoch'): step_update() gets the "
            "epoch count"
        )
        loop = [
            "    if i % UPDATES_PER_EPOCH == 0:",
            "        scheduler.step_update(num_updates=i // UPDATES_PER_EPOCH)",
        ]
    body = _kwargs_block(kwargs, "    ")
    lines = [
        *_header("timm's create_scheduler_v2"),
        "import json",
        "",
        "import torch",
        "from timm.scheduler import create_scheduler_v2",
        "",
        f"STEPS = {scaled.steps}  # optimizer steps",
        f"UPDATES_PER_EPOCH = {upe}  # optimizer updates per epoch",
        *([f"metrics = {metrics!r}  # the metric after each epoch"] if plateau else []),
        "",
        f"optimizer = {_optimizer(scaled)}",
        f"scheduler, num_epochs = create_scheduler_v2(\n    optimizer,\n{body})",
        note,
        "",
        "lrs = [[group['lr'] for group in optimizer.param_groups]]  # what timm set when built",
        "for i in range(1, STEPS):",
        f"    {_optimizer_step(scaled)}  # your training step (update i)",
        *loop,
        "    lrs.append([group['lr'] for group in optimizer.param_groups])",
        "",
        "print(json.dumps([list(group) for group in zip(*lrs)]))",
        "",
        "# To resume, save scheduler.state_dict() with the optimizer's, load both into fresh",
        "# objects, and carry on with the same epoch and num_updates counts: timm's lr is a",
        "# function of the t it is given.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- optax


def _optax_call(spec: ox.OptaxBase, group: int) -> str:
    """Return the optax call of ``spec`` with group ``group``'s values."""
    name = spec.schedule  # type: ignore[attr-defined]
    if isinstance(spec, ox.JoinSchedules):
        inner = ",\n".join(_indent(_optax_call(s, group), "        ") for s in spec.schedules)
        return (
            f"optax.join_schedules(\n    schedules=[\n{inner},\n    ],\n"
            f"    boundaries={list(spec.boundaries)!r},\n)"
        )
    if isinstance(spec, ox.SgdrSchedule):
        names = ("init_value", "peak_value", "end_value")
        cycles = []
        for cycle in spec.cosine_kwargs:
            values = cycle.model_dump()
            for key in names:
                values[key] = ox._value(getattr(cycle, key), group)
            cycles.append(f"        {values!r},")
        return "optax.sgdr_schedule([\n" + "\n".join(cycles) + "\n])"
    values = spec.model_dump(exclude={"type", "schedule"})
    for key in spec.lr_fields:
        if getattr(spec, key) is not None:
            values[key] = ox._value(getattr(spec, key), group)
    if values.get("boundaries_and_scales") is not None:
        values["boundaries_and_scales"] = dict(sorted(values["boundaries_and_scales"].items()))
    return f"optax.{name}(\n{_kwargs_block(values, '    ')})"


def optax_script(scaled: specs.ScheduleRequest) -> str:
    """Return the optax script: the schedule function(s), evaluated at every count."""
    spec: ox.OptaxBase = scaled.scheduler  # type: ignore[assignment]
    groups = scaled.n_groups
    calls = [_optax_call(spec, g) for g in range(groups)]
    if len(set(calls)) == 1:
        schedules = [f"schedule = {calls[0]}", f"schedules = [schedule] * {groups}"]
        if groups > 1:
            schedules.insert(0, "# optax has no param groups: every group gets this schedule")
    else:
        schedules = [
            "# optax has no param groups: one schedule per group, with that group's values",
            "schedules = [",
            *(_indent(call, "    ") + "," for call in calls),
            "]",
        ]
    counts = (
        f"jnp.arange(STEPS) // {scaled.steps_per_epoch}  # one count per epoch"
        if scaled.interval == "epoch"
        else "jnp.arange(STEPS)  # one count per optimizer step"
    )
    lines = [
        *_header("optax"),
        "import json",
        "",
        "import jax",
        "",
        'jax.config.update("jax_enable_x64", True)  # float64, as the service computes',
        "",
        "import jax.numpy as jnp  # noqa: E402",
        "import optax  # noqa: E402",
        "",
        f"STEPS = {scaled.steps}  # optimizer steps",
        "",
        *schedules,
        "",
        f"counts = {counts}",
        "# in training: optax.inject_hyperparams(optax.adamw)(learning_rate=schedule) or",
        "# optax.adamw(learning_rate=schedule), which calls schedule(count) at every update",
        "print(json.dumps([jax.vmap(schedule)(counts).tolist() for schedule in schedules]))",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- megatron


def _megatron_flags(spec: mg.MegatronScheduler, train_iters: int) -> list[str]:
    kw = spec.constructor_kwargs()
    flags = [
        f"--lr {kw['max_lr']!r}",
        f"--min-lr {kw['min_lr']!r}",
        f"--lr-decay-style {kw['lr_decay_style']}",
        f"--lr-warmup-iters {kw['lr_warmup_steps']}",
        f"--lr-warmup-init {kw['init_lr']!r}",
        f"--lr-decay-iters {kw['lr_decay_steps']}",
    ]
    if kw["lr_decay_style"] == "WSD":
        flags += [
            f"--lr-wsd-decay-style {kw['lr_wsd_decay_style']}",
            f"--lr-wsd-decay-iters {kw['wsd_decay_steps']}",
        ]
    if kw["wd_incr_style"] == "constant":
        flags.append(f"--weight-decay {kw['end_wd']!r}")
    else:
        flags += [
            f"--start-weight-decay {kw['start_wd']!r}",
            f"--end-weight-decay {kw['end_wd']!r}",
        ]
    flags += [
        f"--weight-decay-incr-style {kw['wd_incr_style']}",
        f"--train-iters {kw['wd_incr_steps']}  # Megatron ramps the weight decay over train-iters",
    ]
    return flags


def megatron_script(scaled: specs.ScheduleRequest) -> str:
    """Return the Megatron-core script: OptimizerParamScheduler, stepped once per iteration."""
    spec: mg.MegatronScheduler = scaled.scheduler  # type: ignore[assignment]
    n = scaled.scheduler_steps
    overrides = spec.group_overrides()
    extra = [{k: v[i] for k, v in overrides.items()} for i in range(scaled.n_groups)]
    flags = _megatron_flags(spec, scaled.steps)
    flag_lines = [f"#   {flag}" for flag in flags]
    if spec.group_overrides():
        flag_lines.append(
            "#   (the first group's values: Megatron-LM sets per-group ones by param-group "
            "overrides, not flags)"
        )
    body = _kwargs_block(spec.constructor_kwargs(), "    ")
    lines = [
        *_header("Megatron-core's OptimizerParamScheduler"),
        "import json",
        "",
        "import torch",
        "from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler",
        "",
        f"STEPS = {scaled.steps}  # optimizer steps (iterations)",
        f"SCHEDULER_STEPS = {n}  # scheduler.step() calls + 1 (interval {scaled.interval!r})",
        "",
        "# Megatron-LM's command line for the same schedule (pretrain_gpt.py and friends):",
        *flag_lines,
        "# (Megatron-LM counts these in samples: it multiplies the iterations by the global",
        "# batch size and calls step(increment=global_batch_size) every iteration.)",
        "",
        "# Megatron sets the lr itself: the optimizer's lr is not read"
        + (
            "; the groups' max_lr/min_lr/start_wd/end_wd are its per-group overrides"
            if overrides
            else ""
        ),
        f"optimizer = {_optimizer(scaled, extra if overrides else None)}",
        f"scheduler = OptimizerParamScheduler(\n    optimizer,\n{body})",
        "",
        "lrs = [[group['lr'] for group in optimizer.param_groups]]",
        "for k in range(1, SCHEDULER_STEPS):",
        f"    {_optimizer_step(scaled)}  # your training iteration",
        "    scheduler.step(increment=1)  # Megatron's train_step: once per iteration",
        "    lrs.append([group['lr'] for group in optimizer.param_groups])",
        "",
        f"per_step = {_per_step(scaled)}",
        "print(json.dumps([list(group) for group in zip(*per_step)]))",
        "",
        "# To resume, Megatron saves scheduler.state_dict() in its checkpoints (beside the",
        "# optimizer's) and loads it into the freshly built scheduler",
        "# (--override-opt_param-scheduler / --use-checkpoint-opt_param-scheduler choose",
        "# between the checkpoint's values and the command line's).",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry


def _cannot(target: str, request: specs.ScheduleRequest) -> InvalidSpec:
    kind, reason = _kind(request)
    can = capable(request)
    if not can:
        return InvalidSpec(
            f"export target {target!r}: {reason}; no export target can write this spec",
            loc=("body", "scheduler" if "warmup" not in (reason or "") else "warmup"),
        )
    what = {
        "torch": "torch's own schedulers",
        "transformers": "a transformers schedule",
        "timm": "a timm schedule",
        "optax": "an optax schedule",
        "megatron": "a Megatron schedule",
    }[kind]
    return InvalidSpec(
        f"export target {target!r} cannot write this spec ({what}); the targets that can: "
        + ", ".join(can),
        loc=("query", "target"),
    )


def export(request: specs.ScheduleRequest, target: Target, checkpoint: bool = False) -> str:
    """Return the script for ``target``; InvalidSpec (422) when ``target`` cannot write it."""
    if request.index_by == "micro_batch":
        raise InvalidSpec(
            "export: the script prints the lr of every optimizer step; drop index_by "
            "'micro_batch' (micro-batch j of an optimizer step sees that step's lr)",
            loc=("body", "index_by"),
        )
    if request.skipped_steps and _family_of(request.scheduler) == "megatron":
        raise InvalidSpec(
            "export target 'megatron': the script steps Megatron's scheduler every iteration; "
            "drop skipped_steps (Megatron's own loop holds the schedule on a skipped one)",
            loc=("body", "skipped_steps"),
        )
    can = capable(request)
    if target not in can:
        raise _cannot(target, request)
    if checkpoint and target not in CHECKPOINT_TARGETS:
        raise InvalidSpec(
            f"checkpoint=true runs the checkpoint recipe in the torch loop of targets "
            f"{', '.join(CHECKPOINT_TARGETS)}; target {target!r} writes it as a comment "
            "(drop checkpoint)",
            loc=("query", "checkpoint"),
        )
    scaled = service.apply_batch_scaling(request)
    kind, _ = _kind(scaled)
    try:
        if target in ("torch", "transformers"):
            return torch_loop_script(scaled, target, kind, checkpoint)
        if target == "lightning":
            return lightning_script(scaled, kind)
        if target == "timm":
            return timm_script(scaled)
        if target == "optax":
            return optax_script(scaled)
        return megatron_script(scaled)
    except _Refusal as refusal:
        raise _refuse(target, refusal.detail, *refusal.loc) from None


def torch_script(request: specs.ScheduleRequest) -> str:
    """Return the torch script of ``request`` (kept for callers of the first version)."""
    return export(request, "torch")
