"""Computed against cached schedules over HTTP, and the cache hits' tail, measured with wrk.

One server (uvicorn with the Makefile's ``UVICORN_FLAGS``, as ``make serve`` runs it, and one
compute process: ``LRS_COMPUTE_PROCESSES=1``, :data:`SERVER_ENV`) on a free loopback port,
measured once its compute process computes; ``wrk -t2`` sends ``POST /v1/schedules/compute``
with a 10 000-step linear warmup (100 steps) + cosine, JSON. In this order, each load
``--seconds`` long:

1. warm-up: 3 s of distinct specs (not reported);
2. cache hits on the fresh server, 16 connections (the reference the tail is compared with);
3. every spec distinct (each request computed: the Lua script gives each one an lr no other
   request used), 16 connections;
4. cache hits right after it, 16 connections;
5. distinct again, 8 connections, then 6. cache hits, 8 connections;
7. every spec distinct in its T_max instead of its lr (all else the body's), 16 connections
   (a T_max sweep, whose compilation is shared as an lr sweep's is), then every spec distinct
   in its SGD momentum (no sweep's shared compilation applies: every spec compiled);
8. on a second server in the other mode, distinct specs, 16 connections: with the default
   (``LRS_COMPUTE_INLINE_MAX_COST`` > 0: a 10k-step spec computed on the event loop) each
   computed in a compute thread (``LRS_COMPUTE_INLINE_MAX_COST=0``), else on the event loop
   (``LRS_COMPUTE_INLINE_MAX_COST=2000000``);
9. on a third server without a compute process (the default), cache hits then distinct
   specs, 16 connections.

Then it prints each load's requests/s, p50, p99 and max, and issue 14's targets with PASS or
MISS: computed throughput ≥ 60% of the cache hits' (16 connections, the same server, this
run), computed p99 ≤ 50 ms, and the cache hits' p99 ≤ 5 × their p50 after a distinct load at
16 and at 8 connections.

wrk corrects its latencies for coordinated omission: a stall of T seconds adds, for every
connection, samples from T down to one request's interval, so a single stall of the server
(or of the machine: another tenant, the hypervisor) moves the p99 to about T. To tell such a
stall's cause, each load also reports what the server saw (its garbage-collector pauses and
how late its event loop ran a timer, from ``/metrics``), the machine's steal time and the
kernel's TCP retransmissions and timeouts over that load, and the load average.

    .venv/bin/python bench/bench_http.py [--seconds 10] [--env LRS_SETTING=value ...]

Needs ``wrk`` (Debian package ``wrk``: ``make wrk`` installs it).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness  # first: puts the repository root on sys.path
import httpx
from harness import loadavg, machine

from service.settings import Settings

STEPS = 10_000
BODY = {
    "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
    "scheduler": {"type": "CosineAnnealingLR", "T_max": STEPS - 100},
    "warmup": {"type": "linear", "steps": 100, "start_factor": 0.0},
    "steps": STEPS,
}
PATH = "/v1/schedules/compute"
SERVER_ENV = {"LRS_COMPUTE_PROCESSES": "1"}
"""The measured server's settings (``--env`` overrides them): one compute process beside the
API's (the default is none: a second server measures that mode)."""


TCP_COUNTERS = {
    "Tcp:RetransSegs": "retransmitted segments",
    "TcpExt:TCPTimeouts": "retransmission timeouts",
    "TcpExt:TCPSynRetrans": "SYN retransmissions",
    "TcpExt:ListenOverflows": "accept-queue overflows",
}


def uvicorn_flags() -> list[str]:
    """Return the Makefile's UVICORN_FLAGS (what ``make serve`` and the image run with)."""
    for line in (harness.ROOT / "Makefile").read_text().splitlines():
        if line.startswith("UVICORN_FLAGS :="):
            return line.split(":=", 1)[1].split()
    raise SystemExit("the Makefile sets no UVICORN_FLAGS")


def tcp_counters() -> dict[str, int]:
    """Return the kernel's TCP counters (/proc/net/snmp and netstat) named in TCP_COUNTERS."""
    found: dict[str, int] = {}
    for name in ("/proc/net/snmp", "/proc/net/netstat"):
        try:
            lines = Path(name).read_text().splitlines()
        except OSError:
            continue
        for head, values in zip(lines[::2], lines[1::2], strict=False):
            keys, numbers = head.split(), values.split()
            for key, number in zip(keys[1:], numbers[1:], strict=False):
                if f"{keys[0]}{key}" in TCP_COUNTERS:
                    found[f"{keys[0]}{key}"] = int(number)
    return found


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            found += map(int, Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
    return found


def cpu_seconds(pid: int) -> float:
    """Return the CPU time process ``pid`` and its living children (its compute processes)
    have used (user + system, all their threads)."""
    total = 0.0
    for one in (pid, *_children(pid)):
        with suppress(OSError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_queue_wait(pid: int) -> dict[str, float]:
    """Return, per thread of ``pid``, the seconds it has waited runnable for a CPU
    (/proc/PID/task/TID/schedstat: time on CPU, time waiting on a run queue, timeslices)."""
    waits: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return waits
    for tid in tids:
        with suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text()
            waits[tid] = int(stat.split()[1]) / 1e9
    return waits


def steal_seconds() -> float:
    """Return the machine's steal time so far (time the hypervisor ran someone else)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


HISTOGRAMS = (
    "lrs_gc_pause_seconds",
    "lrs_event_loop_lag_seconds",
    "lrs_event_loop_lag_off_cpu_seconds",
)
SAMPLE = re.compile(r'^(\w+)_bucket\{(?:[^}]*,)?le="([^"]+)"[^}]*\} ([0-9.e+-]+)$')


def stall_buckets(base: str) -> dict[str, dict[float, float]]:
    """Return the server's GC-pause and event-loop-lag histograms: name -> {le: count}."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    out: dict[str, dict[float, float]] = {name: {} for name in HISTOGRAMS}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1) in out:
            le = float(match.group(2))
            out[match.group(1)][le] = out[match.group(1)].get(le, 0) + float(match.group(3))
    return out


@dataclass
class Load:
    name: str
    connections: int
    rps: float
    p50: float
    p99: float
    max: float
    errors: int
    cpu_ms: float
    """The server's CPU time per request (all its threads), less noisy than a rate."""
    stalls: dict[str, Any] = field(default_factory=dict)


def _longest(before: dict[float, float], after: dict[float, float]) -> tuple[int, str]:
    """Return (events over 50 ms, the bucket of the longest event) between two snapshots."""
    bounds = sorted(after)
    delta = {le: after[le] - before.get(le, 0) for le in bounds}
    over = int(delta[bounds[-1]] - delta.get(0.05, 0)) if bounds else 0
    longest = "none"
    previous = 0.0
    lower = 0.0
    for le in bounds:
        if delta[le] > previous:
            longest = (
                f"{lower * 1000:g}–{le * 1000:g} ms" if le != float("inf") else (f"> {lower:g} s")
            )
        previous, lower = delta[le], le
    return over, longest


LR_PATTERN = """string.gsub(body, '"lr":0%.1,',
                    string.format('"lr":0.1%02d%02d%09d,', run, tid, counter), 1)"""
T_MAX_PATTERN = """string.gsub(body, '"T_max":9900}',
                    string.format('"T_max":%d}',
                                  9900 + 1000000 * run + 100000 * tid + counter), 1)"""
MOMENTUM_PATTERN = """string.gsub(body, '"momentum":0%.9}',
                    string.format('"momentum":0.9%02d%02d%09d}', run, tid, counter), 1)"""
"""The momentum-distinct load's rewrite: each request an SGD momentum no other request used
(the lr and the schedule the same): no sweep's shared compilation applies, every spec is
compiled (torch's objects built, its probes evaluated)."""
"""The T_max-distinct load's rewrite: each request a T_max no other request used (9900 plus
a million per load, 100 000 per wrk thread, one per request), the lr and all else the same:
no plan of an lr sweep applies, every spec is compiled."""


def wrk_script(distinct: str | None, run: int) -> str:
    """Return the Lua script: ``distinct`` None (the same body: cache hits), "lr" (every
    request its own optimizer lr), "T_max" (its own CosineAnnealingLR T_max) or "momentum"
    (its own SGD momentum)."""
    script = harness.wrk_script(BODY, PATH, distinct is not None, run)
    if distinct == "T_max":
        assert LR_PATTERN in script and '"T_max":9900}' in script
        script = script.replace(LR_PATTERN, T_MAX_PATTERN)
    if distinct == "momentum":
        assert LR_PATTERN in script and '"momentum":0.9}' in script
        script = script.replace(LR_PATTERN, MOMENTUM_PATTERN)
    return script


def run_wrk(
    base: str, seconds: float, connections: int, distinct: bool | str, run: int
) -> tuple[dict, float]:
    """Return wrk's result line and the seconds its threads waited for a CPU (sampled).
    ``distinct``: False (cache hits), True or "lr" (every lr distinct), "T_max", "momentum"."""
    vary = "lr" if distinct is True else (distinct or None)
    script = wrk_script(vary, run)  # type: ignore[arg-type]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s"]
        process = subprocess.Popen(
            [*command, "-s", handle.name, base], stdout=subprocess.PIPE, text=True
        )
        waited: dict[str, float] = {}
        while process.poll() is None:  # wrk's threads' stats go when they end: sample them
            waited.update(run_queue_wait(process.pid))
            time.sleep(0.1)
        out = process.stdout.read() if process.stdout else ""
        if process.returncode:
            raise SystemExit(f"wrk failed ({process.returncode}): {out[-500:]}")
    finally:
        os.unlink(handle.name)
    line = next(x for x in out.splitlines() if x.startswith("WRK_RESULT "))
    return json.loads(line.removeprefix("WRK_RESULT ")), sum(waited.values())


def measure(
    base: str,
    pid: int,
    name: str,
    seconds: float,
    connections: int,
    distinct: bool | str,
    run: int,
) -> Load:
    buckets = stall_buckets(base)
    tcp, steal, load_before, cpu = tcp_counters(), steal_seconds(), loadavg(), cpu_seconds(pid)
    server_wait = run_queue_wait(pid)
    r, wrk_wait = run_wrk(base, seconds, connections, distinct, run)
    cpu_after = cpu_seconds(pid)
    server_waited = sum(w - server_wait.get(t, 0.0) for t, w in run_queue_wait(pid).items())
    steal_after, tcp_after, buckets_after = steal_seconds(), tcp_counters(), stall_buckets(base)
    stalls: dict[str, Any] = {
        "load": f"{load_before} → {loadavg()}",
        "steal_ms": (steal_after - steal) * 1000,
        "waited": (server_waited, wrk_wait, r["duration_us"] / 1e6),
        "tcp": {TCP_COUNTERS[k]: tcp_after[k] - tcp.get(k, 0) for k in tcp_after},
    }
    for histogram in HISTOGRAMS:
        stalls[histogram] = _longest(buckets[histogram], buckets_after[histogram])
    return Load(
        name,
        connections,
        r["requests"] / (r["duration_us"] / 1e6),
        r["p50_us"] / 1000,
        r["p99_us"] / 1000,
        r["max_us"] / 1000,
        r["non2xx"] + r["socket_errors"],
        (cpu_after - cpu) * 1000 / max(1, r["requests"]),
        stalls,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the server, e.g. LRS_CACHE_MAX_BYTES=0 (repeatable)",
    )
    args = parser.parse_args()
    env = {**SERVER_ENV, **dict(item.split("=", 1) for item in args.env)}
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk (or make wrk)")
    flags = uvicorn_flags()
    started = time.monotonic()
    load_start = loadavg()
    with (
        tempfile.TemporaryDirectory(prefix="bench-http-") as data_dir,
        open(Path(data_dir) / "server.log", "w") as log,
        harness.server(data_dir, env, "/readyz", flags, log) as (base, server),
    ):
        # the hit loads' spec, computed once, so their first requests are hits as well
        assert httpx.post(f"{base}{PATH}", json=BODY, timeout=60).status_code == 200
        if int(env.get("LRS_COMPUTE_PROCESSES", "0")):
            harness.wait_for_compute_process(base, BODY, PATH)
        run_wrk(base, 3, 16, distinct=True, run=1)  # warm-up
        s, pid = args.seconds, server.pid
        loads = [
            measure(base, pid, "cache hits, fresh server", s, 16, False, 0),
            measure(base, pid, "every spec distinct (computed)", s, 16, True, 2),
            measure(base, pid, "cache hits, right after the distinct load", s, 16, False, 0),
            measure(base, pid, "every spec distinct (computed)", s, 8, True, 3),
            measure(base, pid, "cache hits, right after the distinct load", s, 8, False, 0),
            measure(base, pid, "every spec's T_max distinct (computed)", s, 16, "T_max", 4),
            measure(base, pid, "every spec's momentum distinct (computed)", s, 16, "momentum", 5),
        ]
    # the distinct load computed in the other mode: in a compute thread rather than on the
    # event loop (or the other way round, when the default computes in threads)
    inline = None
    default_inline = Settings.model_fields["compute_inline_max_cost"].default > 0
    other = "0" if default_inline else "2000000"
    if "LRS_COMPUTE_INLINE_MAX_COST" not in env:
        with (
            tempfile.TemporaryDirectory(prefix="bench-http-") as data_dir,
            open(Path(data_dir) / "server.log", "w") as log,
            harness.server(
                data_dir, {**env, "LRS_COMPUTE_INLINE_MAX_COST": other}, "/readyz", flags, log
            ) as (base, server),
        ):
            run_wrk(base, 3, 16, distinct=True, run=1)  # warm-up
            where = "in a compute thread" if default_inline else "on the event loop"
            inline = measure(
                base,
                server.pid,
                f"every spec distinct, each {where} (second server, "
                f"LRS_COMPUTE_INLINE_MAX_COST={other})",
                s,
                16,
                True,
                2,
            )
            loads.append(inline)
    # the default mode, no compute process: hits and distinct specs on a third server
    without = None
    if int(env.get("LRS_COMPUTE_PROCESSES", "0")):
        with (
            tempfile.TemporaryDirectory(prefix="bench-http-") as data_dir,
            open(Path(data_dir) / "server.log", "w") as log,
            harness.server(
                data_dir, {**env, "LRS_COMPUTE_PROCESSES": "0"}, "/readyz", flags, log
            ) as (base, server),
        ):
            assert httpx.post(f"{base}{PATH}", json=BODY, timeout=60).status_code == 200
            run_wrk(base, 3, 16, distinct=True, run=1)  # warm-up
            name = "(third server, LRS_COMPUTE_PROCESSES=0: the event loop computes)"
            without = (
                measure(base, server.pid, f"cache hits {name}", s, 16, False, 0),
                measure(base, server.pid, f"every spec distinct {name}", s, 16, True, 6),
            )
            loads += without
    fresh, computed, hits16, _, hits8, t_max, momentum = loads[:7]

    print(f"## HTTP: computed against cached, wrk -t2, {s:g} s per load\n")
    print(f"Machine: {machine()}.")
    settings = "".join(f", {k}={v}" for k, v in env.items())
    print(
        f"uvicorn flags: {' '.join(flags)}; one worker process on loopback{settings} "
        "(server CPU: the API process's and its compute processes').\n"
    )
    print(
        f"`POST {PATH}`, {STEPS:,}-step linear warmup (100) + cosine, JSON (252 KB); loads "
        "in this order on one server, after 3 s of distinct specs as warm-up.\n"
    )
    print("| load | connections | requests/s | p50 | p99 | max | errors | server CPU/request |")
    print("|---|---|---|---|---|---|---|---|")
    for x in loads:
        print(
            f"| {x.name} | {x.connections} | {x.rps:,.0f} | {x.p50:.1f} ms | {x.p99:.1f} ms "
            f"| {x.max:.1f} ms | {x.errors} | {x.cpu_ms:.2f} ms |"
        )
    print(
        f"\nServer CPU per request, computed : cache hit (16 connections, after): "
        f"{computed.cpu_ms / hits16.cpu_ms:.2f} (a rate ratio on a quiet machine is near its "
        "inverse when the server's event loop is the bottleneck)."
    )
    for x, what in (
        (t_max, "in T_max rather than lr (a T_max sweep: its compilation shared too)"),
        (momentum, "in SGD's momentum (no sweep's compilation applies: each spec compiled)"),
    ):
        if hits16.rps:
            print(
                f"Specs distinct {what}, 16 connections: {x.rps:,.0f} requests/s, "
                f"{x.rps / hits16.rps:.2f} of the cache hits' (16 connections, after), p99 "
                f"{x.p99:.1f} ms, server CPU {x.cpu_ms:.2f} ms per request."
            )
    if without is not None:
        hits, alone = without
        print(
            f"Without a compute process (third server, the default): distinct specs "
            f"{alone.rps:,.0f} requests/s against {hits.rps:,.0f} cache hits "
            f"({alone.rps / hits.rps:.2f}), p99 {alone.p99:.1f} ms, server CPU "
            f"{alone.cpu_ms:.2f} against {hits.cpu_ms:.2f} ms per request; with one: "
            f"{computed.rps / hits16.rps:.2f}, p99 {computed.p99:.1f} ms, server CPU (the "
            f"API's and its compute process's) {computed.cpu_ms:.2f} ms."
        )
    if inline is not None:
        threads, loop = (inline, computed) if default_inline else (computed, inline)
        print(
            f"Distinct specs in a compute thread against on the event loop (16 connections): "
            f"{threads.rps:,.0f} against {loop.rps:,.0f} requests/s, server CPU "
            f"{threads.cpu_ms:.2f} against {loop.cpu_ms:.2f} ms per request."
        )
    print(
        "\nWhat could stall a load, over each one: the server's garbage-collector pauses and "
        "event-loop lags over 50 ms (count; the longest one's bucket), and of those lags what "
        "the loop's thread at least spent off CPU (descheduled, waiting for the GIL or "
        "blocked); how long the server's threads and wrk's, runnable, waited for a CPU "
        "(/proc/PID/task/TID/schedstat, summed over threads: more than a few percent of the "
        "load's duration means the machine is too busy for latency figures); "
        "the machine's steal time, the kernel's TCP retransmissions and timeouts "
        "(all processes), and the load average (/proc/loadavg, 1/5/15 min, before → after).\n"
    )
    print(
        "| load | connections | GC pauses > 50 ms | loop lags > 50 ms | of which off CPU "
        "| waiting for a CPU: server, wrk | steal | TCP (machine-wide) | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for x in loads:
        gc_over, gc_longest = x.stalls["lrs_gc_pause_seconds"]
        lag_over, lag_longest = x.stalls["lrs_event_loop_lag_seconds"]
        off_over, off_longest = x.stalls["lrs_event_loop_lag_off_cpu_seconds"]
        server_wait, wrk_wait, wall = x.stalls["waited"]
        tcp = ", ".join(f"{v} {k}" for k, v in x.stalls["tcp"].items() if v) or "none"
        print(
            f"| {x.name} | {x.connections} | {gc_over} (longest {gc_longest}) "
            f"| {lag_over} (longest {lag_longest}) | {off_over} (longest {off_longest}) "
            f"| {server_wait:.1f} s, {wrk_wait:.1f} s of {wall:.0f} s "
            f"| {x.stalls['steal_ms']:.0f} ms | {tcp} | {x.stalls['load']} |"
        )
    ratio = computed.rps / fresh.rps if fresh.rps else 0.0
    ratio_after = computed.rps / hits16.rps if hits16.rps else 0.0
    checks = [
        (
            "computed ≥ 60% of cache-hit throughput, 16 connections (against the hits "
            "right after it; against the fresh server's hits: "
            f"{ratio:.2f})",
            ratio_after,
            0.6,
            ">=",
            "",
        ),
        ("computed p99 ≤ 50 ms, 16 connections", computed.p99, 50, "<=", " ms"),
        (
            f"cache-hit p99 ≤ 5 × p50 after a distinct load, 16 connections "
            f"(p50 {hits16.p50:.1f} ms, p99 {hits16.p99:.1f} ms)",
            hits16.p99 / hits16.p50 if hits16.p50 else float("inf"),
            5,
            "<=",
            " ×",
        ),
        (
            f"cache-hit p99 ≤ 5 × p50 after a distinct load, 8 connections "
            f"(p50 {hits8.p50:.1f} ms, p99 {hits8.p99:.1f} ms)",
            hits8.p99 / hits8.p50 if hits8.p50 else float("inf"),
            5,
            "<=",
            " ×",
        ),
    ]
    busiest = max(x.stalls["waited"][0] / x.stalls["waited"][2] for x in loads)
    print("\n### Targets (issue 14)\n")
    if busiest > 0.05:
        print(
            f"The machine was busy: in one load the server's threads waited for a CPU, "
            f"together, {busiest:.0%} of its duration, so its latencies are the machine's; "
            "rerun on a quiet machine before reading the tail targets.\n"
        )
    for label, value, target, op, unit in checks:
        met = value >= target if op == ">=" else value <= target
        print(f"- {label}: {value:,.2f}{unit} — {'PASS' if met else 'MISS'}")
    print(
        f"\nLoad average (1/5/15 min): {load_start} at the start, {loadavg()} at the end; "
        f"the run took {time.monotonic() - started:.0f} s."
    )


if __name__ == "__main__":
    main()
