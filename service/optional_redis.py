"""A Redis the service can do without: the shared rate limits (:mod:`service.ratelimit`) and
the shared schedule cache (:mod:`service.schedules.shared_cache`) ask it through this.

The client is :mod:`redis.asyncio`, made on the event loop that uses it (asyncio connections
belong to one loop: a TestClient or a second uvicorn worker gets its own), so a hung Redis
holds up the request that asked it, never the event loop. Every call gives up after
``timeout_s`` (connecting, waiting for a pooled connection, the answer; no second try) and,
after a failure, Redis is left alone for :data:`BACKOFF_S`: an outage costs one short wait
per process every few seconds, with one warning when it starts and one when it ends; the
caller goes on without Redis (``None``).
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

T = TypeVar("T")

BACKOFF_S = 5.0
"""Seconds Redis is left alone after a call failed."""
MAX_CONNECTIONS = 32
"""Redis connections one process keeps at most per use (a call takes well under 1 ms)."""


class OptionalRedis:
    """One use's asyncio Redis client; ``down`` and ``up`` are the warnings (``down`` gets
    the error and the back-off) logged to ``log`` when it stops and starts answering."""

    def __init__(
        self,
        url: str,
        timeout_s: float,
        *,
        log: logging.Logger,
        down: str,
        up: str,
        on_connect: Callable[[redis.asyncio.Redis], None] | None = None,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.log = log
        self.down_message = down
        self.up_message = up
        self.on_connect = on_connect
        self.client: redis.asyncio.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down_until = 0.0
        self._down = False

    def _connect(self) -> None:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self.url,
            max_connections=MAX_CONNECTIONS,
            timeout=self.timeout_s,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),  # no second try: the caller goes on without Redis
        )
        self.client = redis.asyncio.Redis(connection_pool=pool)
        if self.on_connect is not None:
            self.on_connect(self.client)
        self._loop = asyncio.get_running_loop()

    async def call(self, ask: Callable[[redis.asyncio.Redis], Awaitable[T]]) -> T | None:
        """Return ``await ask(client)``, or None when Redis is left alone or did not answer
        within ``timeout_s``."""
        if time.monotonic() < self._down_until:
            return None
        if self._loop is not asyncio.get_running_loop():
            self._connect()
        assert self.client is not None
        try:
            async with asyncio.timeout(self.timeout_s):
                answer = await ask(self.client)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + BACKOFF_S
            if not self._down:
                self._down = True
                self.log.warning(
                    "%s (%s: %s; trying Redis again every %g s)",
                    self.down_message,
                    type(exc).__name__,
                    exc,
                    BACKOFF_S,
                )
            return None
        if self._down:
            self._down = False
            self.log.warning(self.up_message)
        return answer

    async def aclose(self) -> None:
        """Close the client's connections (the lifespan's end)."""
        if self.client is not None and self._loop is asyncio.get_running_loop():
            await self.client.aclose()
        self.client = self._loop = None
