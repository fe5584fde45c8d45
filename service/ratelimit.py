"""Rate limits on schedule computation and job submission: a token bucket per caller.

The caller is its API key (by digest) when it sends one the service accepts, else its client
address. Each bucket holds up to ``burst`` tokens, refilled at ``per_s`` tokens a second; a
request takes one, and with none left it gets ``429 Too Many Requests`` (problem+json) with
``Retry-After``: the whole seconds until a token is back.

Where the buckets live:

- **In the process** (the default, nothing to run beside ``make serve``): with several API
  processes or replicas each has its own, so a client spreading its requests gets the
  processes times the setting.
- **In Redis** (``LRS_RATE_LIMIT_URL``, by default ``LRS_CACHE_URL``'s Redis when that is
  set): every process and replica takes from the same bucket, so the limit holds in total.
  One Lua script per limited request (one round trip, atomic) runs the same bucket as a GCRA
  on Redis' clock (one key per caller and limit: the time the bucket is next full, set to
  expire then, so an idle caller's key is gone once it would hold a full bucket).

When Redis does not answer within ``LRS_RATE_LIMIT_TIMEOUT_S`` (100 ms; refused, timed out,
no connection free in the pool) the request is decided by the process's own bucket instead, a
warning is logged once per outage and ``lrs_rate_limit_fallback_total`` counts it; Redis is
then left alone for a few seconds (:mod:`service.optional_redis`), so an outage costs one
short wait per process every few seconds, never a 5xx, and a client is still held to the
setting per process. An emptied or restarted Redis starts every bucket full.
"""

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from redis.commands.core import AsyncScript
from starlette.types import ASGIApp, Receive, Scope, Send

from service import metrics
from service.errors import PROBLEM_JSON, problem_body
from service.optional_redis import OptionalRedis
from service.settings import REDIS_SCHEMES, Settings

log = logging.getLogger("service.ratelimit")

COMPUTE = re.compile(r"^/v1/schedules/[^/]+$")
"""POST /v1/schedules/compute|batch|resume|compare|export|lint and GET /v1/schedules/{type}."""
MAX_BUCKETS = 100_000
"""Buckets kept at most; the fullest (idle longest) are dropped first."""


@dataclass
class Bucket:
    tokens: float
    stamp: float


class TokenBuckets:
    """Token buckets by caller; thread-safe."""

    def __init__(self, per_s: float, burst: int, clock=time.monotonic) -> None:
        self.per_s = per_s
        self.burst = burst
        self.clock = clock
        self.buckets: dict[str, Bucket] = {}
        self.lock = threading.Lock()

    def take(self, who: str) -> float:
        """Take a token for ``who``; return 0 when allowed, else the seconds until one is back."""
        now = self.clock()
        with self.lock:
            bucket = self.buckets.get(who)
            if bucket is None:
                if len(self.buckets) >= MAX_BUCKETS:
                    self._prune(now)
                bucket = self.buckets[who] = Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.per_s)
            bucket.stamp = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / self.per_s

    def _prune(self, now: float) -> None:
        full = [k for k, b in self.buckets.items() if now - b.stamp >= self.burst / self.per_s]
        for key in full or list(self.buckets)[: len(self.buckets) // 2]:
            del self.buckets[key]


def caller(scope: Scope, keys: frozenset[str] = frozenset()) -> str:
    """Return who is calling: ``key:<digest>`` for one of the configured API keys, else
    ``ip:<address>`` (so a client cannot get a fresh bucket by inventing keys)."""
    for name, value in scope["headers"]:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            digest = hashlib.sha256(value[7:].strip()).hexdigest()
            if digest in keys:
                return "key:" + digest
            break
    client = scope.get("client")
    return f"ip:{client[0] if client else 'unknown'}"


GCRA = """
-- KEYS[1]: the caller's bucket, as the time it is next full (µs on Redis' clock).
-- ARGV[1]: µs per token (1e6 / per_s), ARGV[2]: the burst. Returns 0 when a token was
-- taken, else the µs until one is back (the bucket unchanged).
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local full = tonumber(redis.call('GET', KEYS[1])) or now
if full < now then full = now end
local wait = full - now - (burst - 1) * interval
if wait > 0 then return math.ceil(wait) end
full = full + interval
redis.call('SET', KEYS[1], string.format('%.0f', full), 'PX', math.ceil((full - now) / 1000))
return 0
"""


def store_url(settings: Settings) -> str | None:
    """Return the Redis URL the rate limits share, or None for in-process buckets:
    ``rate_limit_url``, else ``cache_url`` when it is a Redis URL; ``local`` means none."""
    url = settings.rate_limit_url or settings.cache_url
    if not url or url == "local" or not url.startswith(REDIS_SCHEMES):
        return None
    return url


class SharedBuckets:
    """Token buckets in Redis, shared by every process using the same URL and prefix."""

    def __init__(self, url: str, prefix: str, timeout_s: float = 0.1) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._script: AsyncScript | None = None
        self._redis = OptionalRedis(
            url,
            timeout_s,
            log=log,
            down="rate limits: Redis did not answer; each process limits alone (its own buckets)",
            up="rate limits: Redis answers again; the limits are shared again",
            on_connect=self._register,
        )

    @property
    def _client(self) -> "redis.asyncio.Redis | None":
        return self._redis.client

    def _register(self, client: "redis.asyncio.Redis") -> None:
        self._script = client.register_script(GCRA)

    async def take(self, key: str, per_s: float, burst: int) -> float | None:
        """Take a token from ``key``'s bucket; return 0 when allowed, else the seconds until
        one is back, or None when Redis did not answer (the caller decides alone)."""

        def ask(_client: "redis.asyncio.Redis") -> Awaitable[Any]:
            assert self._script is not None
            return self._script(keys=[self.prefix + key], args=[1e6 / per_s, burst])

        wait_us = await self._redis.call(ask)
        return None if wait_us is None else int(wait_us) / 1e6

    async def aclose(self) -> None:
        await self._redis.aclose()


@dataclass
class Limit:
    name: str
    """The key's part naming the limit (``compute``, ``jobs``)."""
    what: str
    local: TokenBuckets


class RateLimitMiddleware:
    """Apply the compute and job-submission limits before the request reaches a route."""

    def __init__(
        self, app: ASGIApp, settings: Settings, keys: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.keys = keys
        self.compute = (
            Limit(
                "compute",
                "schedule computations (LRS_RATE_LIMIT_COMPUTE_PER_S)",
                TokenBuckets(settings.rate_limit_compute_per_s, settings.rate_limit_compute_burst),
            )
            if settings.rate_limit_compute_per_s > 0
            else None
        )
        self.jobs = (
            Limit(
                "jobs",
                "job submissions (LRS_RATE_LIMIT_JOBS_PER_S)",
                TokenBuckets(settings.rate_limit_jobs_per_s, settings.rate_limit_jobs_burst),
            )
            if settings.rate_limit_jobs_per_s > 0
            else None
        )
        url = store_url(settings) if self.compute or self.jobs else None
        self.shared = (
            SharedBuckets(url, settings.rate_limit_prefix, settings.rate_limit_timeout_s)
            if url
            else None
        )

    def _limit(self, scope: Scope) -> Limit | None:
        method, path = scope["method"], scope["path"].rstrip("/")
        if method == "POST" and path == "/v1/jobs":
            return self.jobs
        if method in ("POST", "GET", "HEAD") and COMPUTE.match(path):
            return self.compute
        return None

    async def _take(self, limit: Limit, who: str) -> float:
        if self.shared is not None:
            wait = await self.shared.take(
                f"{limit.name}:{who}", limit.local.per_s, limit.local.burst
            )
            if wait is not None:
                return wait
            metrics.RATE_LIMIT_FALLBACK.labels(limit.name).inc()
        return limit.local.take(who)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            try:
                await self.app(scope, receive, send)
            finally:
                if scope["type"] == "lifespan" and self.shared is not None:
                    await self.shared.aclose()
            return
        limit = self._limit(scope)
        wait = await self._take(limit, caller(scope, self.keys)) if limit is not None else 0.0
        if not wait:
            await self.app(scope, receive, send)
            return
        buckets = limit.local
        retry_after = max(1, math.ceil(wait))
        body = json.dumps(
            problem_body(
                429,
                f"too many {limit.what}: {buckets.burst} at once, then {buckets.per_s:g} a second "
                f"per API key or client address; retry after {retry_after} s",
                title="Too many requests",
                slug="rate-limited",
                extra={"retry_after": retry_after},
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry_after).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
