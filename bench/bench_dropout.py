"""Benchmark of POST /v1/dropout: compute time in-process and end-to-end HTTP time.

Starts the service with uvicorn on a free loopback port, measures the median of
``--repeat`` calls per case, prints a markdown table and the machine, stops the server.

    .venv/bin/python bench/bench_dropout.py [--repeat 15]
"""

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.dropout import sampler, specs  # noqa: E402
from service.settings import Settings  # noqa: E402


def cases(settings: Settings) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """Return (label, request body, query) per case: the issue's two, then the largest."""
    largest_k = settings.dropout_max_samples
    per_sample = settings.dropout_max_total // largest_k
    stats_only = {"return": []}
    return [
        ("1M elements, stats only", {"p": 0.3, "shape": [1000, 1000], **stats_only}, {}),
        (
            "K = 100 samples of 10k elements, stats only",
            {"p": 0.3, "shape": [10_000], "samples": 100, **stats_only},
            {},
        ),
        (
            f"largest input: {settings.dropout_max_elements:,} elements, stats only",
            {"p": 0.3, "shape": [settings.dropout_max_elements], **stats_only},
            {},
        ),
        (
            f"largest total: K = {largest_k} × {per_sample:,} elements, stats only",
            {"p": 0.3, "shape": [per_sample], "samples": largest_k, **stats_only},
            {},
        ),
        (
            f"largest JSON: output of {settings.dropout_json_max_values:,} elements",
            {"p": 0.3, "shape": [settings.dropout_json_max_values], "return": ["output"]},
            {},
        ),
        (
            f"largest input as npy: output of {settings.dropout_max_elements:,} elements",
            {"p": 0.3, "shape": [settings.dropout_max_elements], "return": ["output"]},
            {"format": "npy"},
        ),
    ]


def median_seconds(call, repeat: int) -> float:
    call()
    call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, data_dir: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "uvicorn", "service.main:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "LRS_DATA_DIR": data_dir}
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
    server.terminate()
    raise SystemExit("the server did not answer /healthz within 60 s")


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {os.cpu_count()} cores, torch {sampler.TORCH_VERSION} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed calls per case")
    args = parser.parse_args()

    settings = Settings()
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        port = free_port()
        server = start_server(port, data_dir)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                for label, body, query in cases(settings):
                    spec = specs.DropoutRequest.model_validate({**body, "seed": 0})
                    checked = specs.check_request(spec, settings)
                    compute = median_seconds(lambda c=checked: sampler.sample(c), args.repeat)

                    def http(body=body, query=query) -> int:
                        response = client.post("/v1/dropout", json=body, params=query)
                        response.raise_for_status()
                        return len(response.content)

                    size = http()
                    end_to_end = median_seconds(http, args.repeat)
                    rows.append((label, compute, end_to_end, size))
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(f"Median of {args.repeat} calls; machine: {machine()}\n")
    print("| case | compute in-process (ms) | HTTP end-to-end (ms) | response bytes |")
    print("| --- | ---: | ---: | ---: |")
    for label, compute, end_to_end, size in rows:
        print(f"| {label} | {compute * 1e3:.1f} | {end_to_end * 1e3:.1f} | {size:,} |")


if __name__ == "__main__":
    main()
