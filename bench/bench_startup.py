"""Benchmark of a cold start: how long a fresh server takes to say ready, and its first requests.

Starts ``uvicorn service.main:app`` (as ``make serve`` does) on a free loopback port, waits
for ``/readyz`` to answer 200, then times the first and the second computed schedule (10k
steps, warmup+cosine, distinct specs: neither is a cache hit) and prints a markdown table.
``--root`` runs another checkout's code (e.g. one without the start-up warm-up) with this
interpreter, for a before/after comparison in one run.

    .venv/bin/python bench/bench_startup.py [--runs 1] [--root PATH]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness  # first: puts the repository root on sys.path
import httpx
from harness import free_port, loadavg, machine


def spec(lr: float) -> dict[str, object]:
    return {
        "optimizer": {"type": "SGD", "lr": lr, "momentum": 0.9},
        "scheduler": {"type": "CosineAnnealingLR", "T_max": 9900},
        "warmup": {"type": "linear", "steps": 100, "start_factor": 0.0},
        "steps": 10_000,
    }


def cold_start(root: Path) -> tuple[float, float, float]:
    """Return (seconds until /readyz answers 200, first compute, second compute)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as data_dir:
        env = {**os.environ, "LRS_DATA_DIR": data_dir}
        env.pop("DATABASE_URL", None)
        command = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--log-level", "warning"]
        began = time.perf_counter()
        process = subprocess.Popen(command, cwd=root, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None:
                    raise SystemExit(f"the server exited with {process.returncode}")
                if time.perf_counter() - began > 300:
                    raise SystemExit("the server did not say ready within 300 s")
                time.sleep(0.05)
            ready = time.perf_counter() - began
            times = []
            with httpx.Client(base_url=url, timeout=120) as client:
                for lr in (0.1, 0.2):
                    start = time.perf_counter()
                    r = client.post("/v1/schedules/compute", json=spec(lr))
                    times.append(time.perf_counter() - start)
                    assert r.status_code == 200, r.text[:300]
            return ready, times[0], times[1]
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--root", type=Path, default=harness.ROOT)
    args = parser.parse_args()
    before = loadavg()
    results = [cold_start(args.root.resolve()) for _ in range(args.runs)]
    after = loadavg()
    print(f"## Cold start ({args.root.resolve()})\n")
    print(f"Machine: {machine()}.\n")
    print("| run | start → /readyz 200 | first compute (10k, JSON) | second compute |")
    print("|---|---|---|---|")
    for i, (ready, first, second) in enumerate(results, 1):
        print(f"| {i} | {ready:.2f} s | {first * 1000:,.0f} ms | {second * 1000:,.0f} ms |")
    print(f"\nLoad average (/proc/loadavg, 1/5/15 min): {before} before, {after} after.")


if __name__ == "__main__":
    main()
