"""Rate limits on schedule computation and job submission: a token bucket per caller.

The caller is its API key (by digest) when it sends one the service accepts, else its client
address. Each bucket
holds up to ``burst`` tokens, refilled at ``per_s`` tokens a second; a request takes one, and
with none left it gets ``429 Too Many Requests`` (problem+json) with ``Retry-After``: the
whole seconds until a token is back. The buckets live in the process: with several API
worker processes each has its own (the effective limit is the workers times the setting).
"""

import hashlib
import json
import math
import re
import threading
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import PROBLEM_JSON, problem_body
from service.settings import Settings

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


class RateLimitMiddleware:
    """Apply the compute and job-submission limits before the request reaches a route."""

    def __init__(
        self, app: ASGIApp, settings: Settings, keys: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.keys = keys
        self.compute = (
            TokenBuckets(settings.rate_limit_compute_per_s, settings.rate_limit_compute_burst)
            if settings.rate_limit_compute_per_s > 0
            else None
        )
        self.jobs = (
            TokenBuckets(settings.rate_limit_jobs_per_s, settings.rate_limit_jobs_burst)
            if settings.rate_limit_jobs_per_s > 0
            else None
        )

    def _limit(self, scope: Scope) -> tuple[TokenBuckets | None, str]:
        method, path = scope["method"], scope["path"].rstrip("/")
        if method == "POST" and path == "/v1/jobs":
            return self.jobs, "job submissions (LRS_RATE_LIMIT_JOBS_PER_S)"
        if method in ("POST", "GET", "HEAD") and COMPUTE.match(path):
            return self.compute, "schedule computations (LRS_RATE_LIMIT_COMPUTE_PER_S)"
        return None, ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        buckets, what = self._limit(scope)
        wait = buckets.take(caller(scope, self.keys)) if buckets is not None else 0.0
        if not wait:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(wait))
        body = json.dumps(
            problem_body(
                429,
                f"too many {what}: {buckets.burst} at once, then {buckets.per_s:g} a second "
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
