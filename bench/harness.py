"""What every benchmark here shares: the machine's name, a server on loopback, medians.

Each script runs as ``.venv/bin/python bench/<script>.py``; this folder is then on
``sys.path``, so ``import harness`` finds this module, and :data:`ROOT` is put there too so
the scripts can import the service's own code for in-process timings.
"""

import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine() -> str:
    """Return the CPU model, cores, OS, Python, torch and CUDA device, in one line."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return (
        f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, {cuda}"
    )


def loadavg() -> str:
    """Return the 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def median_seconds(call: Callable[[], object], repeat: int, warmup: int = 2) -> float:
    """Return the median wall time of ``call`` over ``repeat`` runs, in seconds."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    """Return the peak resident set size (VmHWM) of process ``pid``, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def server(
    data_dir: str,
    env: dict[str, str] | None = None,
    ready: str = "/healthz",
    args: list[str] | None = None,
    stderr: IO[str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run the service with uvicorn on a free loopback port; yield (base URL, process).

    ``args`` are more uvicorn options; ``stderr`` (a file) takes the server's stderr, its
    access log included, instead of this process's. Waits until ``ready`` answers 200
    (``/readyz`` also waits for the job workers), and stops the server afterwards.
    """
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning", *(args or [])]
    full_env = {**os.environ, "LRS_DATA_DIR": data_dir, **(env or {})}
    process = subprocess.Popen(command, cwd=ROOT, env=full_env, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + ready, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not answer {ready} within 120 s")
            time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


WRK_SCRIPT = """
local body = [[%(body)s]]
local distinct = %(distinct)s
local run = %(run)d
local counter = 0
local tid = 0
function setup(thread) tid = tid + 1; thread:set("tid", tid) end
function init(args) tid = tonumber(wrk.thread:get("tid")) or 0 end
function request()
  local b = body
  if distinct then
    -- an lr no other request of this run used (load, thread, counter): always computed
    counter = counter + 1
    b = string.gsub(body, '"lr":0%%.1,',
                    string.format('"lr":0.1%%02d%%02d%%09d,', run, tid, counter), 1)
  end
  return wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json"}, b)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"max_us": %%d, "non2xx": %%d, "socket_errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""
"""wrk's Lua script for POSTing one JSON body: with ``distinct`` each request gets an lr no other
request of the run used (so the result cache never answers); ``done`` prints one
``WRK_RESULT {json}`` line (requests, duration, p50, p99, max, non-2xx, socket errors)."""


def wrk_script(body: dict, path: str, distinct: bool, run: int = 0) -> str:
    """Return :data:`WRK_SCRIPT` for ``body`` (its ``"lr":0.1,`` rewritten when distinct)."""
    text = json.dumps(body, separators=(",", ":"))
    assert not distinct or '"lr":0.1,' in text
    return WRK_SCRIPT % {
        "body": text,
        "distinct": "true" if distinct else "false",
        "run": run,
        "path": path,
    }


PLACE = re.compile(r'^lrs_schedule_compute_place_total\{place="process"\} ([0-9.e+]+)$', re.M)


def wait_for_compute_process(
    base: str, body: dict, path: str = "/v1/schedules/compute", timeout: float = 120
) -> None:
    """Send distinct copies of ``body`` (a schedule spec: its optimizer's lr nudged) until one
    was computed in a compute process (they start after the server answers /readyz)."""
    deadline = time.monotonic() + timeout
    body = json.loads(json.dumps(body))
    while not PLACE.search(httpx.get(f"{base}/metrics", timeout=10).text):
        if time.monotonic() > deadline:
            raise SystemExit(f"no request was computed in a compute process in {timeout:g} s")
        body["optimizer"]["lr"] += 1e-9
        httpx.post(f"{base}{path}", json=body, timeout=60)
        time.sleep(0.2)
