"""Issue 15 across replicas: the rate limits hold in total when the API processes share a
Redis (LRS_RATE_LIMIT_URL), and a Redis that hangs or dies costs no 5xx.

Two uvicorn servers (as `make serve` runs them) share a redis-server of this module's own
(so it can be frozen and killed) under a unique key prefix. Each test speaks from its own
loopback address, so each has a fresh bucket.
"""

import contextlib
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from tests.jobs.cluster import start_redis
from tests.servers import free_port

from .conftest import HealthProbe, Server, new_address, start_server, stop_server, wait_ready

PER_S, BURST = 0.01, 4
"""Schedule computations: 4 at once, then one every 100 s (so none comes back in a test)."""
JOBS_PER_S, JOBS_BURST = 20.0, 2
"""Job submissions: a bucket full again (its key gone) 100 ms after its last token."""
URL = "/v1/schedules/StepLR?step_size=3&steps=10"


@dataclass
class Pair:
    servers: list[Server]
    redis_proc: subprocess.Popen
    redis_port: int
    prefix: str
    tmp: Path

    def redis(self) -> redis.Redis:
        return redis.Redis(port=self.redis_port, socket_timeout=5)

    def clients(self, address: str) -> list[httpx.Client]:
        """One client per server, all speaking from ``address`` (one caller)."""
        return [s.client(address) for s in self.servers]

    def restart_redis(self) -> None:
        self.redis_proc = start_redis(self.tmp, self.redis_port)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("shared-rate-limit")
    port = free_port()
    try:
        proc = start_redis(tmp, port)
    except FileNotFoundError:
        pytest.skip("redis-server is not installed")
    prefix = f"t{uuid.uuid4().hex[:10]}:rl:"
    extra = {
        "LRS_JOB_WORKERS": "0",
        "LRS_RATE_LIMIT_URL": f"redis://127.0.0.1:{port}/0",
        "LRS_RATE_LIMIT_PREFIX": prefix,
        # a loaded 2-core machine can stall a loop past the 100 ms default: no spurious
        # fallback in the shared tests (tests/test_rate_limit_store.py hangs at 100 ms)
        "LRS_RATE_LIMIT_TIMEOUT_S": "1",
        "LRS_RATE_LIMIT_COMPUTE_PER_S": str(PER_S),
        "LRS_RATE_LIMIT_COMPUTE_BURST": str(BURST),
        "LRS_RATE_LIMIT_JOBS_PER_S": str(JOBS_PER_S),
        "LRS_RATE_LIMIT_JOBS_BURST": str(JOBS_BURST),
    }
    servers = [start_server(tmp / f"data-{n}", "sqlite", extra) for n in range(2)]
    state = Pair(servers, proc, port, prefix, tmp)
    try:
        for s in servers:
            wait_ready(s)
        yield state
    finally:
        for s in servers:
            stop_server(s)
        with contextlib.suppress(redis.RedisError), state.redis() as client:
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)
        state.redis_proc.kill()
        state.redis_proc.wait()


def _fallbacks(server: Server) -> float:
    """Return the server's lrs_rate_limit_fallback_total for the compute limit."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(r'^lrs_rate_limit_fallback_total\{limit="compute"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _alternate(clients: list[httpx.Client], count: int) -> list[httpx.Response]:
    return [clients[i % len(clients)].get(URL) for i in range(count)]


def _assert_refused(r: httpx.Response) -> int:
    """The 429 as the in-process limiter gives it; return its Retry-After."""
    assert r.status_code == 429, r.text
    assert r.headers["content-type"] == "application/problem+json"
    retry_after = int(r.headers["retry-after"])
    body = r.json()
    assert body["retry_after"] == retry_after
    assert body["detail"] == (
        "too many schedule computations (LRS_RATE_LIMIT_COMPUTE_PER_S): 4 at once, then "
        f"0.01 a second per API key or client address; retry after {retry_after} s"
    )
    return retry_after


def test_a_client_alternating_between_replicas_gets_the_budget_in_total(pair):
    """4 at once in all, not 4 per replica; Retry-After is the time until one token is back
    (100 s after the first, less the seconds since)."""
    address = new_address()
    clients = pair.clients(address)
    start = time.monotonic()
    answers = _alternate(clients, BURST + 3)
    elapsed = time.monotonic() - start
    assert [a.status_code for a in answers] == [200] * BURST + [429] * 3
    for r in answers[BURST:]:
        assert 100 - elapsed - 1 <= _assert_refused(r) <= 100
    # the bucket's key carries a TTL: the time until the bucket is full again (400 s at most)
    with pair.redis() as client:
        ttl = client.pttl(f"{pair.prefix}compute:ip:{address}")
    assert 0 < ttl <= BURST / PER_S * 1000
    # another caller has a bucket of its own
    other = pair.clients(new_address())
    assert [a.status_code for a in _alternate(other, 2)] == [200, 200]
    assert all(_fallbacks(s) == 0 for s in pair.servers)


def test_bucket_keys_expire_once_the_bucket_would_be_full(pair):
    """A job-submission bucket (20 a second, burst 2) is full again 100 ms after its last
    token: its key is gone then, and every key of the prefix has a TTL."""
    address = new_address()
    clients = pair.clients(address)
    key = f"{pair.prefix}jobs:ip:{address}"
    r = clients[0].post("/v1/jobs", json={"epochs": 0})  # refused by validation, after the limit
    assert r.status_code == 422
    with pair.redis() as client:
        assert 0 < client.pttl(key) <= JOBS_BURST / JOBS_PER_S * 1000
        deadline = time.monotonic() + 10
        while client.exists(key):
            assert time.monotonic() < deadline, "the bucket's key did not expire"
            time.sleep(0.05)
        keys = list(client.scan_iter(match=pair.prefix + "*"))
        assert keys and all(client.pttl(k) > 0 for k in keys)
    assert clients[1].post("/v1/jobs", json={"epochs": 0}).status_code == 422


def _while_redis_is_away(pair: Pair) -> None:
    """Each replica decides with its own buckets: 4 each, then 429 (never a 5xx), and
    /healthz answers all along; the fallback metric counts every decision."""
    before = [_fallbacks(s) for s in pair.servers]
    clients = pair.clients(new_address())
    with HealthProbe(pair.servers[0].url) as probe, HealthProbe(pair.servers[1].url) as probe2:
        start = time.monotonic()
        answers = _alternate(clients, 2 * BURST + 2)
        elapsed = time.monotonic() - start
    assert [a.status_code for a in answers] == [200] * (2 * BURST) + [429] * 2
    for r in answers[2 * BURST :]:
        assert 100 - elapsed - 1 <= _assert_refused(r) <= 100
    for p in (probe, probe2):
        assert p.failures == [] and p.worst < 0.5, p.latencies
    after = [_fallbacks(s) for s in pair.servers]
    assert [a - b for a, b in zip(after, before, strict=True)] == [BURST + 1, BURST + 1]


def _shared_again(pair: Pair) -> None:
    """After the 5 s back-off the replicas share the buckets again."""
    time.sleep(5.5)
    clients = pair.clients(new_address())
    statuses = [a.status_code for a in _alternate(clients, BURST + 1)]
    assert statuses == [200] * BURST + [429]


def test_a_hung_redis_falls_back_to_each_replicas_buckets_then_shares_again(pair):
    """SIGSTOP: Redis takes connections but never answers (a call times out after 1 s here,
    then Redis is left alone for 5 s)."""
    pair.redis_proc.send_signal(signal.SIGSTOP)
    try:
        _while_redis_is_away(pair)
    finally:
        pair.redis_proc.send_signal(signal.SIGCONT)
    _shared_again(pair)


def test_a_dead_redis_falls_back_to_each_replicas_buckets_then_shares_again(pair):
    """Killed: connections are refused; restarted empty, the limits are shared again."""
    pair.redis_proc.kill()
    pair.redis_proc.wait()
    try:
        _while_redis_is_away(pair)
    finally:
        pair.restart_redis()
    _shared_again(pair)
