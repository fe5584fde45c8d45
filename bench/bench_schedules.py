"""Benchmark of the schedule engines: torch vs vectorized in-process vs HTTP end-to-end.

One run, one machine: starts the service with uvicorn on a free loopback port, measures
medians per case, a concurrent load on case (a), the server's peak RSS around case (b) and
the time to serialize the 1M-value array to JSON alone, then prints a markdown table, the
targets of issue 3 (met or missed, with numbers) and the machine, and stops the server.

    .venv/bin/python bench/bench_schedules.py [--repeat 7] [--load-seconds 10]

Every timed HTTP request has a distinct spec (the optimizer's lr differs in the 12th digit),
so the result cache never answers it; the cached rate is reported on its own line.
"""

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.schedules import formats, service, specs  # noqa: E402
from service.settings import Settings  # noqa: E402

SETTINGS = Settings(torch_max_steps=10**7, torch_max_work=10**9, torch_max_seconds=10**6)
_unique = count(1)


def warmup_cosine(steps: int, **extra: Any) -> dict[str, Any]:
    """Return a linear warmup (1% of steps, from 0) then cosine to 0, SGD with momentum."""
    warm = max(1, steps // 100)
    return {
        "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
        "scheduler": {"type": "CosineAnnealingLR", "T_max": steps - warm},
        "warmup": {"type": "linear", "steps": warm, "start_factor": 0.0},
        "steps": steps,
        **extra,
    }


def fresh(body: dict[str, Any]) -> dict[str, Any]:
    """Return ``body`` with an lr no earlier request used (so the cache cannot answer)."""
    lr = 0.1 + next(_unique) * 1e-12
    return {**body, "optimizer": {**body["optimizer"], "lr": lr}}


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_process(body: dict[str, Any], engine: str) -> service.Computed:
    request = specs.ScheduleRequest.model_validate({**body, "engine": engine})
    return service.compute(request, SETTINGS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return (
        f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, {cuda}"
    )


def start_server(port: int, data_dir: str) -> subprocess.Popen:
    env = {**os.environ, "LRS_DATA_DIR": data_dir}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "service.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


async def load(
    url: str,
    body: dict[str, Any],
    seconds: float,
    concurrency: int,
    max_requests: int,
    distinct: bool,
) -> tuple[float, float, float, int]:
    """Return (requests/s, p50 ms, p99 ms, errors) of a closed-loop load on ``url``."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    sent = count()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < stop and next(sent) < max_requests:
            payload = fresh(body) if distinct else body
            start = time.perf_counter()
            r = await client.post(url, json=payload)
            latencies.append(time.perf_counter() - start)
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    ms = np.asarray(latencies) * 1000
    return len(ms) / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), errors


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    repeat = args.repeat

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data_dir = tempfile.mkdtemp(prefix="bench-schedules-")
    server = start_server(port, data_dir)
    rows: list[tuple[str, str, str, str]] = []
    notes: dict[str, float] = {}
    try:
        http = httpx.Client(base_url=base, timeout=600)

        def over_http(body: dict[str, Any], query: str = "") -> Callable[[], object]:
            def call() -> None:
                r = http.post(f"/v1/schedules/compute{query}", json=fresh(body))
                assert r.status_code == 200, r.text[:300]

            return call

        http.post("/v1/schedules/compute", json=fresh(warmup_cosine(1000)))  # warm up
        rss_before = peak_rss_mb(server.pid)

        # (b) first, so the peak RSS it causes is measured from a fresh server
        big = warmup_cosine(1_000_000)
        b_http = median_seconds(over_http(big), repeat)
        rss_after_b = peak_rss_mb(server.pid)
        c_http = median_seconds(over_http(big, "?format=npy"), repeat)
        sampled = warmup_cosine(1_000_000, sample={"points": 1000})
        d_http = median_seconds(over_http(sampled), repeat)

        # torch engine: 10k exactly; 1M extrapolated linearly from 100k
        t_10k = median_seconds(lambda: in_process(warmup_cosine(10_000), "torch"), 3)
        t_100k = median_seconds(lambda: in_process(warmup_cosine(100_000), "torch"), 1)
        t_1m = t_100k * 10

        v_10k = median_seconds(lambda: in_process(warmup_cosine(10_000), "vectorized"), repeat)
        v_1m = median_seconds(lambda: in_process(big, "vectorized"), repeat)
        v_1m_points = median_seconds(lambda: in_process(sampled, "vectorized"), repeat)
        computed = in_process(big, "vectorized")
        v_1m_npy = v_1m + median_seconds(lambda: formats.to_npy(computed), repeat)
        json_alone = median_seconds(lambda: formats.to_json_bytes(computed), repeat)
        a_http = median_seconds(over_http(warmup_cosine(10_000)), repeat * 3)

        batch_specs = [warmup_cosine(10_000) for _ in range(1000)]

        def batch_http() -> None:
            r = http.post("/v1/schedules/batch", json={"requests": [fresh(b) for b in batch_specs]})
            assert r.status_code == 200, r.text[:300]

        def batch_in_process() -> None:
            for body in batch_specs:
                in_process(fresh(body), "vectorized")

        e_http = median_seconds(batch_http, max(3, repeat // 2))
        e_vec = median_seconds(batch_in_process, max(3, repeat // 2))
        e_torch = t_10k * 1000

        rows = [
            ("(a) 10k-step warmup+cosine, JSON", ms(t_10k), ms(v_10k), ms(a_http)),
            ("(b) 1M steps, full JSON", f"{ms(t_1m)} *", ms(v_1m), ms(b_http)),
            ("(c) 1M steps, npy", f"{ms(t_1m)} *", ms(v_1m_npy), ms(c_http)),
            ("(d) 1M steps, points=1000", f"{ms(t_1m)} *", ms(v_1m_points), ms(d_http)),
            ("(e) batch of 1000 × 10k steps, JSON", f"{ms(e_torch)} †", ms(e_vec), ms(e_http)),
        ]

        url = f"{base}/v1/schedules/compute"
        small = warmup_cosine(10_000)
        rps, p50, p99, errs = asyncio.run(
            load(url, small, args.load_seconds, args.concurrency, 100_000, distinct=True)
        )
        rps_c, p50_c, p99_c, errs_c = asyncio.run(
            load(url, fresh(small), args.load_seconds, args.concurrency, 100_000, distinct=False)
        )
        notes.update(
            t_1m=t_1m,
            b_http=b_http,
            d_http=d_http,
            json_alone=json_alone,
            e_http=e_http,
            rps=rps,
            p50=p50,
            p99=p99,
            rss=rss_after_b - rss_before,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)

    print("## Schedules\n")
    print(f"Machine: {machine()}. One uvicorn worker on loopback; medians of {repeat} runs.\n")
    print("| case | torch engine | vectorized, in-process | HTTP end-to-end (vectorized) |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(
        "\n\\* extrapolated linearly from 100k steps "
        f"({ms(t_100k)}); † 1000 × the 10k-step torch time."
    )
    print(f"\nJSON serialization alone of the 1M-value result: {ms(json_alone)}.")
    print(
        f"\nLoad on (a), {args.concurrency} concurrent clients for {args.load_seconds:g} s, "
        f"every spec distinct (computed): {rps:,.0f} requests/s, p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms, {errs} errors. Same spec (cache hits): {rps_c:,.0f} requests/s, "
        f"p50 {p50_c:.1f} ms, p99 {p99_c:.1f} ms, {errs_c} errors."
    )
    print(
        f"\nServer peak RSS (VmHWM): {rss_before:,.0f} MB before (b), {rss_after_b:,.0f} MB "
        f"after: +{rss_after_b - rss_before:,.0f} MB."
    )
    print("\n### Targets (issue 3)\n")
    checks = [
        (
            "(b) over HTTP ≥ 100× faster than the torch engine",
            notes["t_1m"] / notes["b_http"],
            100,
            "×",
        ),
        (
            "(d) over HTTP ≥ 1000× faster than the torch engine",
            notes["t_1m"] / notes["d_http"],
            1000,
            "×",
        ),
        (
            "(b) end-to-end ≤ 3× JSON serialization alone",
            notes["b_http"] / notes["json_alone"],
            3,
            "× (≤)",
        ),
        ("(a) ≥ 500 requests/s", notes["rps"], 500, "req/s"),
        ("(a) p99 ≤ 50 ms", notes["p99"], 50, "ms (≤)"),
        ("(e) ≤ 2 s on CPU", notes["e_http"], 2, "s (≤)"),
        ("peak RSS growth for (b) ≤ 150 MB", notes["rss"], 150, "MB (≤)"),
    ]
    for label, value, target, unit in checks:
        met = value <= target if "≤" in unit else value >= target
        print(f"- {label}: {value:,.1f} {unit.split()[0]} — {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
