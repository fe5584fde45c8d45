"""Benchmark of training jobs against a real server (uvicorn in a subprocess).

Measures the default job's time from ``POST /v1/jobs`` to ``succeeded`` (target: 3 s or
less) and the p99 latency of ``POST /v1/schedules/compute`` for a 10k-step warmup + cosine
schedule with no job running and with two jobs training (target: at most 2× apart).
Prints a markdown table naming the machine. Run: ``.venv/bin/python bench/bench_jobs.py``.
"""

import statistics
import tempfile
import time

import harness
import httpx
from harness import machine

SCHEDULE = {
    "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
    "scheduler": {"type": "CosineAnnealingLR", "T_max": 9000},
    "warmup": {"type": "linear", "steps": 1000, "start_factor": 0.0},
    "steps": 10_000,
}
BUSY_JOB = {"epochs": 1000, "batch_size": 4}
REQUESTS = 500
DEFAULT_JOB_RUNS = 5


def _wait_status(client: httpx.Client, job_id: str, statuses: set[str]) -> dict:
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.01)


def _p99(client: httpx.Client) -> tuple[float, float]:
    """Return (median, p99) in milliseconds of REQUESTS schedule requests, one at a time."""
    client.post("/v1/schedules/compute", json=SCHEDULE).raise_for_status()
    times = []
    for _ in range(REQUESTS):
        start = time.perf_counter()
        client.post("/v1/schedules/compute", json=SCHEDULE).raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.99 * len(times)) - 1]


def main() -> None:
    with (
        tempfile.TemporaryDirectory() as data_dir,
        harness.server(data_dir, env={"LRS_JOB_WORKERS": "2"}, ready="/readyz") as (url, _),
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        job_times = []
        for _ in range(DEFAULT_JOB_RUNS):
            start = time.perf_counter()
            job_id = client.post("/v1/jobs", json={}).json()["id"]
            job = _wait_status(client, job_id, {"succeeded", "failed"})
            assert job["status"] == "succeeded", job
            job_times.append(time.perf_counter() - start)
        idle = _p99(client)
        busy_ids = [client.post("/v1/jobs", json=BUSY_JOB).json()["id"] for _ in range(2)]
        for job_id in busy_ids:
            _wait_status(client, job_id, {"running"})
        busy = _p99(client)
        still_running = sum(
            client.get(f"/v1/jobs/{i}").json()["status"] == "running" for i in busy_ids
        )
        for job_id in busy_ids:
            client.post(f"/v1/jobs/{job_id}/cancel")

    print(f"Machine: {machine()}; 2 job workers\n")
    print("| measurement | value | target |")
    print("|---|---|---|")
    print(
        f"| default job, POST → succeeded (median of {DEFAULT_JOB_RUNS}; min–max) | "
        f"{statistics.median(job_times):.2f} s ({min(job_times):.2f}–{max(job_times):.2f}) "
        "| ≤ 3 s |"
    )
    print(
        f"| schedule p99, 0 jobs running ({REQUESTS} requests) | {idle[1]:.1f} ms "
        f"(median {idle[0]:.1f}) | |"
    )
    print(
        f"| schedule p99, 2 jobs running ({still_running} still running at the end) | "
        f"{busy[1]:.1f} ms (median {busy[0]:.1f}) | ≤ 2× idle |"
    )
    print(f"| ratio busy / idle p99 | {busy[1] / idle[1]:.2f}× | ≤ 2× |")


if __name__ == "__main__":
    main()
