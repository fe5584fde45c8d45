"""``lrs``: the LR schedule service from a terminal.

Exit codes: 0 ok, 1 a followed job did not succeed (or ``lint --fail-on-findings`` found
something), 2 usage (bad option, unreadable spec),
3 the service refused the request (its problem detail is printed), 4 the service cannot be
reached. ``--url`` / ``$LRS_URL`` and ``--api-key`` / ``$LRS_API_KEY`` choose the service.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from lrs_client import __version__
from lrs_client.client import DEFAULT_URL, EXPORT_TARGETS, Client
from lrs_client.errors import ConnectionFailed, ProblemError
from lrs_client.models import Job, Schedule
from lrs_client.plot import text_plot

OK, JOB_FAILED, USAGE, REFUSED, UNREACHABLE = 0, 1, 2, 3, 4
FINDINGS = JOB_FAILED
"""``lrs lint --fail-on-findings`` found something: 1, as linters exit."""

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

SCHEDULE_OPTIONS = {
    "lr": "the optimizer's lr (default 0.1)",
    "optimizer": "a torch.optim class name (default SGD)",
    "interval": "step or epoch",
    "steps_per_epoch": "optimizer steps per epoch (interval=epoch)",
    "every": "return every k-th step",
    "points": "return n evenly spaced steps",
    "engine": "torch, vectorized or auto",
    "device": "cpu, cuda or auto",
    "include": "extra series, e.g. momentum",
    "warmup": "linear or constant",
    "warmup_steps": "warmup length",
    "warmup_start_factor": "linear warmup's start factor",
}


class UsageError(Exception):
    """Bad command line or unreadable input: exit 2."""


# ------------------------------------------------------------------ output helpers


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


def _rows(n: int, limit: int = 20) -> list[int]:
    if n <= limit:
        return list(range(n))
    return sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})


def _schedule_table(schedule: Schedule) -> Table:
    groups = len(schedule.lr)
    table = Table(box=None, header_style="bold")
    table.add_column("step", justify="right")
    for g in range(groups):
        table.add_column("lr" if groups == 1 else f"lr[{g}]", justify="right")
    for i in _rows(len(schedule.steps)):
        table.add_row(str(schedule.steps[i]), *(f"{schedule.lr[g][i]:.6g}" for g in range(groups)))
    return table


def _show_schedule(schedule: Schedule, args: argparse.Namespace) -> None:
    if args.json:
        _print_json(schedule.raw)
        return
    out.print(_schedule_table(schedule))
    shown = len(_rows(len(schedule.steps)))
    if shown < len(schedule.steps):
        out.print(f"({shown} of {len(schedule.steps)} points shown; --csv or --json for all)")
    if args.plot:
        out.print(text_plot(schedule.steps, schedule.lr), markup=False)
    meta = f"engine {schedule.engine}, device {schedule.device}, torch {schedule.torch_version}"
    out.print(meta, style="dim")
    for warning in schedule.warnings:
        err.print(f"warning: {warning}", style="yellow", markup=False)


class _Download:
    """A progress bar for a download (on stderr, drawn only on a terminal)."""

    def __init__(self, label: str) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            transient=False,
        )
        self.task = self.progress.add_task(label, total=None)

    def __enter__(self) -> Callable[[int, int | None], None]:
        self.progress.start()

        def update(done: int, total: int | None) -> None:
            self.progress.update(self.task, completed=done, total=total)

        return update

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _save(path: Path, data: bytes | str) -> None:
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    err.print(f"wrote {path} ({len(data):,} bytes)")


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("png", "svg", "npy", "csv", "json"):
        raise UsageError(f"--out {path}: the name must end in .png, .svg, .npy, .csv or .json")
    return suffix


def _read_spec(source: str) -> Any:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source} is not JSON: {exc}") from exc


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _extra_params(extras: Sequence[str]) -> dict[str, Any]:
    """``--step-size 30 --T-max=10`` → ``{"step_size": "30", "T_max": "10"}``."""
    params: dict[str, Any] = {}
    items = list(extras)
    while items:
        item = items.pop(0)
        if not item.startswith("--") or item == "--":
            raise UsageError(f"unexpected argument {item!r}")
        name, has_value, value = item[2:].partition("=")
        if not has_value:
            if not items or items[0].startswith("--"):
                raise UsageError(f"--{name} needs a value")
            value = items.pop(0)
        params[name.replace("-", "_")] = value
    return params


# ------------------------------------------------------------------ commands


def cmd_schedule(client: Client, args: argparse.Namespace, extras: Sequence[str]) -> int:
    params = _extra_params(extras)
    for name in SCHEDULE_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            params[name] = value
    if args.csv:
        sys.stdout.write(client.schedule_raw(args.type, args.steps, format="csv", **params))
        return OK
    if args.out:
        fmt = _format_of(args.out)
        with _Download(f"{args.type} → {args.out}") as progress:
            data = client.schedule_raw(
                args.type, args.steps, format=fmt, progress=progress, **params
            )
        _save(args.out, data)
        return OK
    _show_schedule(client.schedule(args.type, args.steps, **params), args)
    return OK


def cmd_compute(client: Client, args: argparse.Namespace, extras: Sequence[str]) -> int:
    spec = _read_spec(args.spec)
    if args.csv:
        sys.stdout.write(client.compute_raw(spec, "csv"))
        return OK
    if args.out:
        fmt = _format_of(args.out)
        with _Download(f"compute → {args.out}") as progress:
            data = client.compute_raw(spec, fmt, progress=progress)
        _save(args.out, data)
        return OK
    _show_schedule(client.compute(spec), args)
    return OK


def cmd_batch(client: Client, args: argparse.Namespace, extras: Sequence[str]) -> int:
    specs = _read_spec(args.specs)
    if isinstance(specs, dict) and "requests" in specs:
        specs = specs["requests"]
    if not isinstance(specs, list):
        raise UsageError(f'{args.specs} must hold a list of specs or {{"requests": [...]}}')
    if args.out:
        if _format_of(args.out) != "npy":
            raise UsageError("batch --out writes .npy (one array: specs × groups × points)")
        with _Download(f"batch → {args.out}") as progress:
            data = client.batch_raw(specs, progress=progress)
        _save(args.out, data)
        return OK
    slots = client.batch(specs)
    if args.json:
        _print_json(
            [
                {"status": s.status, "result": s.result.raw if s.result else None,
                 "problem": s.problem.body if s.problem else None}
                for s in slots
            ]
        )  # fmt: skip
        return OK
    table = Table(box=None, header_style="bold")
    for name in ("#", "status", "points", "first lr", "last lr / problem"):
        table.add_column(name)
    for i, slot in enumerate(slots):
        if slot.result is not None:
            lr = slot.result.lr[0]
            table.add_row(str(i), "200", str(len(lr)), f"{lr[0]:.6g}", f"{lr[-1]:.6g}")
        else:
            table.add_row(str(i), str(slot.status), "", "", slot.problem.detail)
    out.print(table)
    return OK


def cmd_catalog(client: Client, args: argparse.Namespace, extras: Sequence[str]) -> int:
    catalog = client.catalog()
    if args.type:
        try:
            entry = catalog[args.type]
        except KeyError:
            known = ", ".join(catalog.types)
            err.print(f"error: no scheduler type {args.type!r}; known: {known}", markup=False)
            return REFUSED
        if args.json:
            _print_json(next(s for s in catalog.raw["schedulers"] if s["type"] == args.type))
            return OK
        out.print(f"[bold]{entry.type}[/bold]  ({entry.torch_class})")
        out.print(entry.description, markup=False)
        table = Table(box=None, header_style="bold")
        table.add_column("parameter")
        table.add_column("default")
        for name in entry.parameters.get("properties", {}):
            if name == "type":
                continue
            default = "required" if name in entry.required else json.dumps(entry.defaults.get(name))
            table.add_row(name, default)
        out.print(table)
        out.print("example request:", style="dim")
        out.print(json.dumps(entry.example), markup=False)
        return OK
    if args.json:
        _print_json(catalog.raw)
        return OK
    table = Table(box=None, header_style="bold")
    table.add_column("type")
    table.add_column("description")
    for entry in catalog.schedulers:
        table.add_row(entry.type, entry.description)
    out.print(table)
    return OK


def cmd_dropout(client: Client, args: argparse.Namespace, extras: Sequence[str]) -> int:
    result = client.dropout(_read_spec(args.spec))
    if args.json:
        _print_json(result.raw)
        return OK
    out.print(f"seed {result.seed}, scale {result.scale}")
    for name, value in result.stats.items():
        out.print(f"{name}: {value}", markup=False)
    return OK


def _job_summary(job: Job) -> None:
    out.print(f"job {job.id}: [bold]{job.status}[/bold]")
    if job.progress:
        p = job.progress
        out.print(
            f"epoch {p.get('epoch')}/{p.get('epochs')}, step {p.get('step')}/"
            f"{p.get('optimizer_steps')}, loss {p.get('loss')}, lr {p.get('lr')}",
            markup=False,
        )
    if job.result:
        r = job.result
        test_loss = r.get("test_loss")
        last = test_loss[-1] if isinstance(test_loss, list) and test_loss else test_loss
        out.print(f"optimizer steps {r.get('optimizer_steps')}, test loss {last}", markup=False)
    if job.error:
        out.print(f"error: {job.error.get('detail', job.error)}", style="red", markup=False)


def _follow(client: Client, job: Job, args: argparse.Namespace) -> int:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err,
    )
    task = progress.add_task(f"job {job.id[:8]}", total=None, info="queued")
    events = []
    with progress:
        for event in client.follow(job):
            events.append(event)
            data = event.data
            if event.event == "progress":
                progress.update(
                    task,
                    completed=data.get("step", 0),
                    total=data.get("optimizer_steps"),
                    info=f"epoch {data.get('epoch')}/{data.get('epochs')} "
                    f"step {data.get('step')}/{data.get('optimizer_steps')} "
                    f"loss {data.get('loss', 0):.4g} lr {data.get('lr', 0):.4g}",
                )
            elif event.event == "status" or event.event == "done":
                progress.update(task, info=str(data.get("status")))
    final = client.get_job(job)
    if args.json:
        _print_json(final.raw)
    else:
        _job_summary(final)
    return OK if final.status == "succeeded" else JOB_FAILED


def cmd_jobs(client: Client, args: argparse.Namespace, extras: Sequence[str]) -> int:
    action = args.action
    if action == "submit":
        spec = _read_spec(args.spec) if args.spec else {}
        job = client.submit_job(spec, idempotency_key=args.idempotency_key)
        if args.follow:
            err.print(f"submitted job {job.id}", markup=False)
            return _follow(client, job, args)
        if args.json:
            _print_json(job.raw)
        else:
            out.print(job.id)
        return OK
    if action == "list":
        page = client.list_jobs(args.status, page_size=args.page_size, page_token=args.page_token)
        if args.json:
            _print_json(
                {"jobs": [j.raw for j in page.jobs], "next_page_token": page.next_page_token}
            )
            return OK
        table = Table(box=None, header_style="bold")
        for name in ("id", "status", "created", "epochs"):
            table.add_column(name)
        for job in page.jobs:
            created = job.created_at.strftime("%Y-%m-%d %H:%M:%S") if job.created_at else ""
            table.add_row(job.id, job.status, created, str(job.spec.get("epochs", "")))
        out.print(table)
        if page.next_page_token:
            out.print(f"more: --page-token {page.next_page_token}", style="dim")
        return OK
    if action == "get":
        job = client.get_job(args.id)
        if args.json:
            _print_json(job.raw)
        else:
            _job_summary(job)
        return OK
    if action == "follow":
        return _follow(client, client.get_job(args.id), args)
    if action == "events":
        for event in client.follow(args.id):
            if args.json:
                sys.stdout.write(json.dumps({"id": event.id, "event": event.event,
                                             "data": event.data}) + "\n")  # fmt: skip
            else:
                out.print(f"{event.id} {event.event} {json.dumps(event.data)}", markup=False)
        return OK
    if action == "cancel":
        job = client.cancel_job(args.id)
        if args.json:
            _print_json(job.raw)
        else:
            out.print(f"job {job.id}: {job.status}")
        return OK
    if action == "delete":
        client.delete_job(args.id)
        if not args.json:
            out.print(f"deleted job {args.id}")
        return OK
    if action == "artifacts":
        names = args.names or ["model.pt", "metrics.json"]
        folder = args.output or Path(".")
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            with _Download(name) as progress:
                data = client.artifact(args.id, name, progress=progress)
            _save(folder / f"{args.id}-{name}", data)
        return OK
    raise UsageError(f"unknown jobs action {action!r}")  # pragma: no cover


def cmd_info(client: Client, args: argparse.Namespace, extras: Sequence[str]) -> int:
    info = client.info()
    if args.json:
        _print_json(info.raw)
        return OK
    out.print(f"{info.service} {info.version}, torch {info.torch_version}")
    out.print(f"devices: {', '.join(info.devices)}; engines: {', '.join(info.engines)}")
    table = Table(box=None, header_style="bold")
    table.add_column("limit")
    table.add_column("value", justify="right")
    for name, value in sorted(info.limits.items()):
        table.add_row(name, json.dumps(value))
    out.print(table)
    return OK


def cmd_health(client: Client, args: argparse.Namespace, extras: Sequence[str]) -> int:
    ok = client.health()
    ready = client.ready()
    if args.json:
        _print_json({"alive": ok, **ready})
    else:
        out.print(f"alive: {ok}; ready: {ready.get('status')}")
    return OK


def cmd_export(client: Client, args: argparse.Namespace, extras: Sequence[str]) -> int:
    script = client.export(_read_spec(args.spec), args.target, checkpoint=args.checkpoint)
    if args.out:
        _save(args.out, script)
    else:
        sys.stdout.write(script)
    return OK


def cmd_lint(client: Client, args: argparse.Namespace, extras: Sequence[str]) -> int:
    findings = client.lint(_read_spec(args.spec))
    failed = FINDINGS if args.fail_on_findings and findings else OK
    if args.json:
        _print_json(findings)
        return failed
    if not findings:
        out.print("no findings")
        return OK
    sys.stdout.write(_findings_table(findings, shutil.get_terminal_size().columns))
    kinds: dict[str, int] = {}
    for f in findings:
        kinds[str(f.get("kind"))] = kinds.get(str(f.get("kind")), 0) + 1
    counted = ", ".join(f"{n} {k}" for k, n in kinds.items())
    plural = "s" if len(findings) > 1 else ""
    sys.stdout.write(f"{len(findings)} finding{plural} ({counted})\n")
    return failed


def _findings_table(findings: list[dict[str, Any]], width: int) -> str:
    """Columns step, code, kind, message; the message wrapped to the terminal, its see link
    on a line of its own and never broken (a link cut in two cannot be opened)."""
    rows = [
        ("" if f.get("step") is None else str(f["step"]), str(f.get("code", "")),
         str(f.get("kind", "")), str(f.get("message", "")), f.get("see"))
        for f in findings
    ]  # fmt: skip
    heads = ("step", "code", "kind")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    indent = sum(widths) + 2 * len(widths)
    room = max(30, width - indent - 1)

    def line(step: str, code: str, kind: str, text: str) -> str:
        cells = f"{step:>{widths[0]}}  {code:<{widths[1]}}  {kind:<{widths[2]}}  "
        return (cells + text).rstrip() + "\n"

    text = line(*heads, "message")
    for step, code, kind, message, see in rows:
        wrapped = textwrap.wrap(message, room, break_long_words=False) or [""]
        if see:
            wrapped.append(f"see {see}")
        text += line(step, code, kind, wrapped[0])
        text += "".join(line("", "", "", more) for more in wrapped[1:])
    return text


def _read_state(path: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """A state file: .json is a state_dict() as JSON (sent in the body), anything else a .pt
    (uploaded as it is)."""
    if path.suffix.lower() == ".json":
        state = _read_spec(str(path))
        if not isinstance(state, dict):
            raise UsageError(f"{path} must hold a scheduler's state_dict() as a JSON object")
        return state, None
    if not path.is_file():
        raise UsageError(f"cannot read {path}: no such file")
    return None, path


def cmd_resume(client: Client, args: argparse.Namespace, extras: Sequence[str]) -> int:
    spec = _read_spec(args.spec)
    if (args.at is None) == (args.state is None):
        raise UsageError("give --at K (where the run stopped) or --state FILE (its saved state)")
    if args.state is None and args.next_steps is not None:
        raise UsageError("--next-steps goes with --state (with --at the answer runs to the end)")
    if args.state is not None and args.recipes:
        raise UsageError("--recipes goes with --at (a --state is loaded as it was saved)")
    if args.state is not None:
        state, upload = _read_state(args.state)
        result = client.resume(spec, state=state, state_file=upload, next_steps=args.next_steps)
    else:
        fields = {"recipes": args.recipes} if args.recipes else {}
        result = client.resume(spec, args.at, **fields)
    if args.json:
        _print_json(result)
        return OK
    _show_resume(result)
    return OK


def _show_resume(result: dict[str, Any]) -> None:
    steps = result.get("steps") or []
    recipes = result.get("recipes") or {}
    uninterrupted = result.get("uninterrupted")
    check = result.get("state")
    if check is not None:
        out.print(f"state ({check.get('source')}): last_epoch {check.get('last_epoch')}; "
                  f"{check.get('verdict')}", markup=False)  # fmt: skip
        for d in check.get("differences") or []:
            out.print(f"  {d.get('key')}: {json.dumps(d.get('state'))} (uninterrupted "
                      f"{json.dumps(d.get('uninterrupted'))})", markup=False)  # fmt: skip
        resumed = (recipes.get("state") or {}).get("lr")
        table = Table(box=None, header_style="bold")
        table.add_column("step", justify="right")
        groups = len(resumed or uninterrupted or [])
        for g in range(groups):
            tag = "" if groups == 1 else f"[{g}]"
            table.add_column(f"lr{tag}", justify="right")
            table.add_column(f"uninterrupted{tag}", justify="right")
        for i in _rows(len(steps)):
            cells = [str(steps[i])]
            for g in range(groups):
                for series in (resumed, uninterrupted):
                    cells.append("" if series is None else f"{series[g][i]:.6g}")
            table.add_row(*cells)
        out.print(table)
        shown = len(_rows(len(steps)))
        if shown < len(steps):
            out.print(f"({shown} of {len(steps)} steps shown; --json for all)")
    else:
        out.print(f"resumed at step {result.get('resume_at')}")
        table = Table(box=None, header_style="bold")
        for name in ("recipe", "first difference", "verdict"):
            table.add_column(name)
        for name, r in recipes.items():
            first = r.get("first_difference")
            table.add_row(name, "" if first is None else str(first), str(r.get("verdict")))
        out.print(table, markup=False)
    for warning in result.get("warnings") or []:
        err.print(f"warning: {warning}", style="yellow", markup=False)


def cmd_compare(client: Client, args: argparse.Namespace, extras: Sequence[str]) -> int:
    _print_json(client.compare([_read_spec(s) for s in args.specs], labels=args.labels))
    return OK


# ------------------------------------------------------------------ parser


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--url", default=default, help=f"service URL ($LRS_URL, {DEFAULT_URL})")
    parser.add_argument("--api-key", default=default, help="API key ($LRS_API_KEY)")
    parser.add_argument(
        "--timeout", type=float, default=argparse.SUPPRESS if suppress else 60.0,
        help="seconds per request (60)",
    )  # fmt: skip
    parser.add_argument(
        "--retries", type=int, default=argparse.SUPPRESS if suppress else 2,
        help="retries of a failed connection or a 503 (2)",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS if suppress else False,
        help="print the service's JSON",
    )  # fmt: skip


def _output(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--csv", action="store_true", help="print CSV (step,lr,...)")
    group.add_argument("--out", type=Path, help="save as .png, .svg, .npy, .csv or .json")
    parser.add_argument("--plot", action="store_true", help="draw the schedule in the terminal")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lrs",
        description="Learning-rate schedules computed with PyTorch's real schedulers, from "
        "the LR schedule service.",
        epilog="exit codes: 0 ok, 1 job not succeeded or lint findings with --fail-on-findings, "
        "2 usage, 3 refused, 4 unreachable",
    )
    parser.add_argument("--version", action="version", version=f"lrs {__version__}")
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, func: Callable[..., int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _common(p, suppress=True)
        p.set_defaults(func=func)
        return p

    p = add(
        "schedule",
        "one scheduler from its parameters, e.g. lrs schedule StepLR --step-size 30 "
        "--gamma 0.1 --steps 100 (any other --name value is a scheduler parameter)",
        cmd_schedule,
    )
    p.add_argument("type", help="a torch.optim.lr_scheduler class name, e.g. StepLR")
    p.add_argument("--steps", type=int, required=True, help="how many optimizer steps")
    for name, text in SCHEDULE_OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, help=text)
    _output(p)

    p = add("compute", "the schedule of a spec file (JSON; - for stdin)", cmd_compute)
    p.add_argument("spec")
    _output(p)

    p = add("batch", "many specs at once (a JSON list)", cmd_batch)
    p.add_argument("specs")
    p.add_argument("--out", type=Path, help="save all lrs as one .npy array")

    p = add("catalog", "the supported scheduler types, or one type's parameters", cmd_catalog)
    p.add_argument("type", nargs="?")

    p = add("dropout", "run a dropout layer on a spec file", cmd_dropout)
    p.add_argument("spec")

    p = add("export", "a runnable script that builds the spec's schedule", cmd_export)
    p.add_argument("spec")
    p.add_argument(
        "--target", default="torch", metavar="TARGET",
        help=f"the library the script uses: {', '.join(EXPORT_TARGETS)} (default torch)",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint", action="store_true",
        help="torch, transformers: the script also saves and reloads the state halfway",
    )  # fmt: skip
    p.add_argument("--out", type=Path, help="write the script to this file")
    p = add("lint", "findings about a spec: what bites, at which step, and a link", cmd_lint)
    p.add_argument("spec")
    p.add_argument(
        "--fail-on-findings", action="store_true",
        help=f"exit {FINDINGS} when there is any finding (for CI); default: exit 0",
    )  # fmt: skip
    p = add("compare", "several specs side by side", cmd_compare)
    p.add_argument("specs", nargs="+")
    p.add_argument("--labels", nargs="+")
    p = add(
        "resume",
        "what resuming at a step gives, per recipe; or the next lrs from a saved state",
        cmd_resume,
    )
    p.add_argument("spec")
    p.add_argument("--at", type=int, help="the optimizer step to resume at")
    p.add_argument(
        "--state", type=Path,
        help="a scheduler's saved state: a .pt of torch.save(scheduler.state_dict()) "
        "(uploaded), or its state_dict() as .json",
    )  # fmt: skip
    p.add_argument("--next-steps", type=int, help="with --state: how many steps to answer")
    p.add_argument("--recipes", nargs="+", help="with --at: state_dict, last_epoch, fast_forward")

    add("info", "versions, devices and limits in force", cmd_info)
    add("health", "is the service alive and ready", cmd_health)

    jobs = add("jobs", "training jobs", cmd_jobs)
    actions = jobs.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        a = actions.add_parser(name, help=help, description=help)
        _common(a, suppress=True)
        return a

    a = action("submit", "queue a job (spec file, - for stdin; none: the seed's task)")
    a.add_argument("spec", nargs="?")
    a.add_argument("--follow", "-f", action="store_true", help="show a live progress bar")
    a.add_argument("--idempotency-key", help="default: a new random key")
    a = action("list", "jobs, newest first")
    a.add_argument("--status")
    a.add_argument("--page-size", type=int)
    a.add_argument("--page-token")
    for name, text in (
        ("get", "one job"),
        ("follow", "a job's progress bar until it ends"),
        ("events", "a job's events until it ends"),
        ("cancel", "cancel a queued or running job"),
        ("delete", "delete a finished job"),
    ):
        action(name, text).add_argument("id")
    a = action("artifacts", "download model.pt and metrics.json (or the names given)")
    a.add_argument("id")
    a.add_argument("names", nargs="*")
    a.add_argument("--output", "-o", type=Path, help="folder (default: here)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and args.command != "schedule":
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    client = Client(
        args.url or os.environ.get("LRS_URL") or DEFAULT_URL,
        api_key=args.api_key,
        timeout=args.timeout,
        retries=args.retries,
    )
    try:
        return args.func(client, args, extras)
    except UsageError as exc:
        err.print(f"lrs: error: {exc}", markup=False)
        return USAGE
    except ProblemError as exc:
        err.print(f"error: {exc.status} {exc.title}: {exc.detail}", style="red", markup=False)
        for e in exc.errors:
            where = ".".join(str(p) for p in e.get("loc", []))
            err.print(f"  {where}: {e.get('msg')}", markup=False)
        if exc.request_id:
            err.print(f"  (request id {exc.request_id})", style="dim")
        return REFUSED
    except ConnectionFailed as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        return UNREACHABLE
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
