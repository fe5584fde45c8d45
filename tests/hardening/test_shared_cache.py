"""Issue 15 with a shared schedule cache (LRS_CACHE_URL): a Redis that hangs costs the
replicas their shared hits, never an answer, and never the event loop.

A real server (as `make serve` runs it) caches in a redis-server of this module's own, so it
can be frozen (SIGSTOP: connections are taken, nothing is answered) while schedules are asked
for and /healthz is probed.
"""

import contextlib
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from service.optional_redis import BACKOFF_S
from service.schedules.shared_cache import NAMESPACE
from tests.jobs.cluster import start_redis
from tests.servers import free_port

from .conftest import HealthProbe, serving

COMPUTE = "/v1/schedules/compute"
STEPS = 40
TIMEOUT_S = 1.0
"""LRS_CACHE_TIMEOUT_S here (250 ms by default): a Redis call made on the event loop would
stall it for a whole second, well clear of a loaded 2-core machine's noise."""
FAST = 0.5
"""Worst /healthz and cached-hit latency allowed while Redis hangs."""


def _spec() -> dict:
    """A schedule no one asked for yet (a cache miss everywhere)."""
    return {"scheduler": {"type": "StepLR", "step_size": 3}, "steps": STEPS,
            "optimizer": {"type": "SGD", "lr": random.uniform(0.01, 0.5)}}  # fmt: skip


def _key(response: httpx.Response) -> str:
    return NAMESPACE + response.headers["etag"].strip('"')


def _ask(http: httpx.Client, spec: dict, until: float) -> list[tuple[httpx.Response, float]]:
    """Post ``spec`` (a fresh one each time when None) until ``until``; return the answers
    and their latencies."""
    answers = []
    while time.monotonic() < until:
        start = time.perf_counter()
        response = http.post(COMPUTE, json=spec or _spec())
        answers.append((response, time.perf_counter() - start))
        time.sleep(0.05)
    return answers


def test_a_hung_redis_costs_shared_hits_only_and_never_stalls_the_loop(tmp_path):
    """With Redis frozen for longer than the back-off (so the cache tries it more than
    once), misses are computed and cached hits served, all 200, while /healthz and the hits
    stay fast: a Redis call waits off the event loop. Thawed, entries reach Redis again."""
    port = free_port()
    try:
        proc = start_redis(tmp_path, port)
    except FileNotFoundError:
        pytest.skip("redis-server is not installed")
    extra = {
        "LRS_JOB_WORKERS": "0",
        "LRS_CACHE_URL": f"redis://127.0.0.1:{port}/0",
        "LRS_CACHE_TIMEOUT_S": str(TIMEOUT_S),
        "LRS_RATE_LIMIT_URL": "local",  # only the cache speaks to this Redis
    }
    stopped = threading.Event()
    try:
        with (
            serving(tmp_path / "data", "sqlite", extra) as server,
            server.client() as http,
            server.client() as other,
            redis.Redis(port=port, socket_timeout=5) as store,
        ):
            cached = _spec()
            first = http.post(COMPUTE, json=cached)
            assert first.status_code == 200 and first.headers["x-cache"] == "miss"
            assert store.exists(_key(first))  # shared while Redis answers

            proc.send_signal(signal.SIGSTOP)
            stopped.set()
            until = time.monotonic() + TIMEOUT_S + BACKOFF_S + TIMEOUT_S + 0.5  # tried twice
            with HealthProbe(server.url) as probe, ThreadPoolExecutor(2) as pool:
                misses = pool.submit(_ask, http, None, until)
                hits = pool.submit(_ask, other, cached, until)
                misses, hits = misses.result(), hits.result()
            proc.send_signal(signal.SIGCONT)
            stopped.clear()

            for response, _ in misses:
                assert response.status_code == 200, response.text
                assert response.headers["x-cache"] == "miss"
                assert len(response.json()["lr"][0]) == STEPS
            for response, _ in hits:
                assert response.status_code == 200, response.text
                assert response.headers["x-cache"] == "hit"
                assert response.content == first.content
            worst_hit = max(seconds for _, seconds in hits)
            report = (
                f"/healthz: n={len(probe.latencies)} max {probe.worst * 1000:.0f} ms; "
                f"{len(hits)} hits, max {worst_hit * 1000:.0f} ms; {len(misses)} misses, max "
                f"{max(seconds for _, seconds in misses) * 1000:.0f} ms"
            )
            assert probe.failures == [] and probe.worst < FAST, report
            assert worst_hit < FAST, report
            # Redis was asked, and after each wait left alone: one miss a back-off waited
            waited = [seconds for _, seconds in misses if seconds >= 0.9 * TIMEOUT_S]
            assert 1 <= len(waited) <= 2, report

            # Redis answers again: once the back-off is over, computed entries reach it
            deadline = time.monotonic() + BACKOFF_S + 10
            while not store.exists(_key(again := http.post(COMPUTE, json=_spec()))):
                assert again.status_code == 200, again.text
                assert time.monotonic() < deadline, "the cache did not use Redis again"
                time.sleep(0.2)
    finally:
        if stopped.is_set():
            proc.send_signal(signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
