"""Where the rate limits' buckets live: in the process by default, in Redis (database 3 here)
when LRS_RATE_LIMIT_URL, or else LRS_CACHE_URL, names one; a Redis that takes connections
but never answers costs a request at most the 100 ms timeout, and it is decided alone.

The real servers sharing a Redis are in tests/hardening/test_shared_rate_limit.py."""

import asyncio
import socket
import time
import uuid

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service import metrics
from service.main import create_app
from service.ratelimit import SharedBuckets, store_url
from service.schedules.shared_cache import NAMESPACE
from service.settings import Settings

REDIS = "redis://127.0.0.1:6379/3"
URL = "/v1/schedules/StepLR?step_size=3&steps=10"
LIMITS = {"rate_limit_compute_per_s": 0.01, "rate_limit_compute_burst": 3}


@pytest.fixture
def prefix():
    """A key prefix of the test's own; its keys (and the schedule cache's) deleted after."""
    client = redis.Redis.from_url(REDIS, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    prefix = f"t{uuid.uuid4().hex[:10]}:rl:"
    yield prefix
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def _replica(tmp_path, name: str, **settings) -> TestClient:
    return TestClient(
        create_app(Settings(data_dir=tmp_path / name, job_workers=0, **LIMITS, **settings))
    )


def _alternate(replicas: list[TestClient], count: int) -> list[int]:
    return [replicas[i % len(replicas)].get(URL).status_code for i in range(count)]


def test_where_the_buckets_live_follows_the_settings(tmp_path):
    def url(**kw):
        return store_url(Settings(data_dir=tmp_path, **kw))

    assert url() is None  # make serve: in the process
    assert url(cache_url="redis://cache:6379/2") == "redis://cache:6379/2"
    assert url(cache_url="redis://cache:6379/2", rate_limit_url="local") is None
    assert url(cache_url="redis://c/2", rate_limit_url="rediss://rl:6380/0") == "rediss://rl:6380/0"
    with pytest.raises(ValidationError, match="LRS_RATE_LIMIT_URL must be a Redis URL"):
        Settings(data_dir=tmp_path, rate_limit_url="http://redis:6379")


@pytest.mark.parametrize("name", ["cache_url", "rate_limit_url"])
def test_a_redis_url_that_does_not_parse_is_refused_at_start(tmp_path, name):
    """Not at the first cache miss or limited request (each one a 500 then)."""
    setting = "LRS_" + name.upper()
    with pytest.raises(ValidationError, match=f"{setting} must be a Redis URL"):
        Settings(data_dir=tmp_path, **{name: "localhost:6379"})
    with pytest.raises(ValidationError, match=f"{setting} is not a Redis URL.*notaport"):
        Settings(data_dir=tmp_path, **{name: "redis://localhost:notaport/0"})


def test_in_process_buckets_are_per_replica(tmp_path):
    """Without a shared store (the default) each process has its own buckets: a client
    alternating between two gets the burst from each."""
    with _replica(tmp_path, "a") as a, _replica(tmp_path, "b") as b:
        assert _alternate([a, b], 8) == [200] * 6 + [429] * 2


def test_replicas_with_the_cache_url_share_the_buckets(tmp_path, prefix):
    """LRS_CACHE_URL alone shares the limits too; `local` keeps them in the process."""
    shared = {"cache_url": REDIS, "rate_limit_prefix": prefix, "rate_limit_timeout_s": 1.0}
    etags = []
    try:
        with _replica(tmp_path, "a", **shared) as a, _replica(tmp_path, "b", **shared) as b:
            etags.append(a.get(URL).headers["etag"].strip('"'))
            assert _alternate([b, a, b, a], 4) == [200, 200, 429, 429]
            refused = a.get(URL)
            assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 100
        local = {**shared, "rate_limit_url": "local"}
        with _replica(tmp_path, "c", **local) as c, _replica(tmp_path, "d", **local) as d:
            assert _alternate([c, d], 8) == [200] * 6 + [429] * 2
    finally:
        if etags:
            with redis.Redis.from_url(REDIS) as client:
                client.delete(*(NAMESPACE + e for e in etags))


def test_a_bucket_refills_at_the_rate_and_its_key_expires_when_full(prefix):
    """Burst 2 at 10 a second: two tokens, then a wait of at most 0.1 s; the key holds a TTL
    of at most 0.2 s and is gone once the bucket would be full."""
    key = prefix + "compute:ip:192.0.2.1"

    async def run() -> tuple[list[float], int]:
        buckets = SharedBuckets(REDIS, "", timeout_s=1.0)
        waits = [await buckets.take(key, 10.0, 2) for _ in range(3)]
        ttl = await buckets._client.pttl(key)
        await buckets.aclose()
        return waits, ttl

    waits, ttl = asyncio.run(run())
    assert waits[:2] == [0.0, 0.0]
    assert 0 < waits[2] <= 0.1
    assert 0 < ttl <= 200
    with redis.Redis.from_url(REDIS) as client:
        deadline = time.monotonic() + 10
        while client.exists(key):
            assert time.monotonic() < deadline, "the key did not expire"
            time.sleep(0.02)


def test_a_redis_that_never_answers_falls_back_to_the_process_buckets(tmp_path):
    """A socket that takes connections and never answers: every request is still answered
    (the first after the 100 ms timeout), the burst holds per process, the fallback counted."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # never accepted: the kernel completes the handshakes
        port = silent.getsockname()[1]
        settings = {"rate_limit_url": f"redis://127.0.0.1:{port}/0"}
        with _replica(tmp_path, "hung", **settings) as app:
            before = metrics.RATE_LIMIT_FALLBACK.labels("compute")._value.get()
            start = time.monotonic()
            statuses = [app.get(URL).status_code for _ in range(4)]
            elapsed = time.monotonic() - start
            text = app.get("/metrics").text
    assert statuses == [200, 200, 200, 429]
    assert f'lrs_rate_limit_fallback_total{{limit="compute"}} {before + 4}' in text
    assert elapsed >= 0.1  # the first waited for the timeout; the others did not try
