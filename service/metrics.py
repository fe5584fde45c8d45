"""Prometheus metrics: ``GET /metrics`` in the text exposition format.

Request counts and latencies by route template, schedule compute time by engine and family,
result-cache hits and misses, job submissions; and at scrape time from the job store, jobs by
status, the queue depth and whether the job workers are alive.

With ``PROMETHEUS_MULTIPROC_DIR`` set (an empty folder, the same for every API worker
process, set before the processes start), each process writes its samples there and a scrape
of any process adds them all up (prometheus-client's multiprocess mode).
"""

import os
from typing import Any

import anyio
import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

router = APIRouter(tags=["service"])

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "lrs_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "lrs_http_request_duration_seconds",
    "Time from request to the end of the response, by method and route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
COMPUTE = Histogram(
    "lrs_schedule_compute_seconds",
    "Schedule requests computed (not served from the cache), by engine and family.",
    ["engine", "family"],
    buckets=LATENCY_BUCKETS,
)
CACHE = Counter(
    "lrs_schedule_cache", "Schedule result cache lookups, by result (hit, miss).", ["result"]
)
JOBS_SUBMITTED = Counter(
    "lrs_jobs_submitted", "Job submissions answered 202 (Idempotency-Key replays included)."
)
RATE_LIMITED = Counter("lrs_rate_limited", "Requests refused with 429, by route.", ["route"])
RATE_LIMIT_FALLBACK = Counter(
    "lrs_rate_limit_fallback",
    "Rate-limited requests the process decided with its own buckets because the shared "
    "store (LRS_RATE_LIMIT_URL's Redis) did not answer, by limit (compute, jobs).",
    ["limit"],
)
COMPUTE_PLACE = Counter(
    "lrs_schedule_compute_place",
    "With LRS_COMPUTE_PROCESSES: the cheap schedule requests by where they were computed "
    "(process: a compute process; loop: the event loop, no process being ready or free, or "
    "the process failed it); a long body streamed from a compute process counts as process.",
    ["place"],
)
STREAMS_CUT = Counter(
    "lrs_http_streams_cut",
    "Streamed responses whose connection the server aborted mid-body at a limit (counted "
    "in lrs_http_requests by the status sent, 200), by route and reason (send_timeout: the "
    "client took no data for LRS_STREAM_SEND_TIMEOUT_S; max_seconds: LRS_STREAM_MAX_SECONDS).",
    ["route", "reason"],
)
STALL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_GC_PAUSE = Histogram(
    "lrs_gc_pause_seconds",
    "Garbage-collector pauses of this process (every collection), by generation.",
    ["generation"],
    buckets=STALL_BUCKETS,
)
GC_PAUSE = [_GC_PAUSE.labels(str(g)) for g in range(3)]
LOOP_LAG = Histogram(
    "lrs_event_loop_lag_seconds",
    "How late the event loop ran a timer it sets every 0.1 s: time it spent busy or stalled.",
    buckets=STALL_BUCKETS,
)
LOOP_LAG_OFF_CPU = Histogram(
    "lrs_event_loop_lag_off_cpu_seconds",
    "Of each event-loop lag, what its thread at least spent not running (the lag less the "
    "thread's CPU time over the period): descheduled, waiting for the GIL or blocked.",
    buckets=STALL_BUCKETS,
)

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")


class JobsCollector(Collector):
    """Jobs by status, queue depth and worker liveness, read when scraped."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self):  # type: ignore[override]
        by_status = GaugeMetricFamily(
            "lrs_jobs", "Jobs in the store, by status.", labels=["status"]
        )
        queue = GaugeMetricFamily("lrs_job_queue_depth", "Jobs queued and not yet started.")
        alive = GaugeMetricFamily(
            "lrs_job_workers_up", "1 when the job workers are alive and ready, else 0."
        )
        counts, ready = getattr(self.app.state, "metrics_snapshot", ({}, False))
        for status in JOB_STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        queue.add_metric([], counts.get("queued", 0))
        alive.add_metric([], 1 if ready else 0)
        yield by_status
        yield queue
        yield alive


class _Together:
    """What one scrape reports: the process's (or all processes') metrics and the jobs'."""

    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


def _job_snapshot(app: Any) -> tuple[dict[str, int], bool]:
    jobs = getattr(app.state, "jobs", None)
    if jobs is None:
        return {}, False
    table = jobs.store.jobs
    query = sa.select(table.c.status, sa.func.count()).group_by(table.c.status)
    try:
        with jobs.store.engine.connect() as conn:
            counts = {status: int(n) for status, n in conn.execute(query)}
        ready, _ = jobs.executor.status()
    except Exception:  # a scrape reports what it can; the store's state is /readyz's job
        return {}, False
    return counts, bool(ready)


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"example": "lrs_http_requests_total"}}}},
)
async def metrics(request: Request) -> Response:
    """Return every metric in Prometheus' text format, added up over all API worker processes
    when `PROMETHEUS_MULTIPROC_DIR` is set."""
    app = request.app
    app.state.metrics_snapshot = await anyio.to_thread.run_sync(_job_snapshot, app)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        base = CollectorRegistry()
        multiprocess.MultiProcessCollector(base)
    else:
        base = REGISTRY
    body = generate_latest(_Together(base, JobsCollector(app)))  # type: ignore[arg-type]
    return Response(body, media_type=CONTENT_TYPE_LATEST)
