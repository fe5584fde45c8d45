"""Schedule throughput with 1 and 2 API worker processes, in one run, measured with wrk.

Starts the service with ``uvicorn --workers 1`` and then ``--workers 2`` on a free loopback
port (local executor, ``LRS_JOB_WORKERS=0`` so no training process competes), and loads
``POST /v1/schedules/compute`` with 10 000-step linear warmup + cosine schedules, each
request with an lr no other request used, so every one is computed (no cache hit). Prints
requests/s, p50 and p99 per setup, the ratio, the machine and its load.

    .venv/bin/python bench/bench_scale.py [--seconds 10] [--concurrency 8]

Needs ``wrk`` (Debian package ``wrk``: ``apt-get install wrk``; ``make bench-scale``
installs it).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import harness  # first: puts the repository root on sys.path
import httpx
from bench_schedules import load_wrk, warmup_cosine
from harness import free_port, loadavg, machine


def serve(workers: int, data_dir: str) -> tuple[str, subprocess.Popen]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    env = {**os.environ, "LRS_DATA_DIR": data_dir, "LRS_JOB_WORKERS": "0"}
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen(command, cwd=harness.ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"uvicorn --workers {workers} did not become ready")
        time.sleep(0.3)
    return base, process


def measure(workers: int, body: dict, seconds: float, concurrency: int) -> tuple:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as data_dir:
        base, process = serve(workers, data_dir)
        try:
            # warm every worker process (each compiles and caches on its first requests)
            load_wrk(base, body, 3, concurrency, distinct=True)
            return load_wrk(base, body, seconds, concurrency, distinct=True)
        finally:
            process.terminate()
            process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk (or make bench-scale)")
    body = warmup_cosine(10_000)
    load_before = loadavg()
    results = {w: measure(w, body, args.seconds, args.concurrency) for w in (1, 2)}
    print(f"Computed 10k-step schedules (warmup 100 + cosine), wrk -c{args.concurrency}, "
          f"{args.seconds:g} s per setup, every request a cache miss\n")  # fmt: skip
    print("| API worker processes | requests/s | p50 | p99 | errors |")
    print("|---|---|---|---|---|")
    for workers, (rps, p50, p99, errors) in results.items():
        print(f"| {workers} | {rps:,.0f} | {p50:,.1f} ms | {p99:,.1f} ms | {errors} |")
    ratio = results[2][0] / results[1][0]
    print(f"\nratio 2 : 1 = {ratio:.2f}")
    print(f"machine: {machine()}")
    print(f"load average before: {load_before}, after: {loadavg()}")


if __name__ == "__main__":
    main()
