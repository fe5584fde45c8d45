"""A schedule result cache the API replicas share, in Redis (``LRS_CACHE_URL``).

Each replica keeps its in-process LRU (:class:`cache.ResultCache`) in front: a hit there
costs no round trip. On a local miss the entry is looked up in Redis, so a schedule one
replica computed is a hit, with the same strong ETag (a hash of the spec, the format and the
versions), on every other; computed entries go to both. Entries expire after a day (the
``Cache-Control`` max-age); Redis' own ``maxmemory`` policy bounds the total.

Redis is an optimisation, never a dependency, and never waited for on the event loop: the
client is :mod:`redis.asyncio`, so a hung Redis holds up the request that asked it, not every
other request (nor ``/healthz``). A call gives up after ``LRS_CACHE_TIMEOUT_S`` (connecting,
a free pooled connection, the answer; 250 ms) and, after a failure, Redis is left alone for
:data:`BACKOFF_S` (a warning once per outage), so an outage costs one short wait per process
every few seconds and the service keeps answering from its own cache and by computing, as
the shared rate limits do (:mod:`service.ratelimit`).
"""

import asyncio
import logging
import time

import orjson
import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.schedules import cache
from service.settings import Settings

log = logging.getLogger("service.schedules")

TIMEOUT_S = 0.25
"""The default of ``LRS_CACHE_TIMEOUT_S``."""
BACKOFF_S = 5.0
TTL_S = 86_400
NAMESPACE = "lrs:schedule:"
MAX_CONNECTIONS = 32
"""Redis connections one process keeps at most (a GET or SET of a body takes well under 1 ms
of one)."""


def make_cache(settings: Settings) -> "cache.ResultCache | SharedResultCache":
    """Return the cache the settings ask for: shared through Redis when ``cache_url`` is
    set, else the in-process LRU alone. Both are used through ``aget`` and ``aput``."""
    local = cache.ResultCache(settings.cache_max_bytes)
    if not settings.cache_url:
        return local
    return SharedResultCache(local, settings.cache_url, settings.cache_timeout_s)


class SharedResultCache:
    """The in-process LRU in front of a Redis store of rendered bodies."""

    def __init__(self, local: cache.ResultCache, url: str, timeout_s: float = TIMEOUT_S) -> None:
        self.local = local
        self.max_bytes = local.max_bytes
        self.url = url
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: redis.asyncio.Redis | None = None
        self._down_until = 0.0
        self._down = False

    def __len__(self) -> int:
        return len(self.local)

    async def aget(self, key: str) -> cache.Entry | None:
        """Return the entry from the local LRU, else from Redis (keeping it locally), or
        None."""
        entry = self.local.get(key)
        if entry is not None:
            return entry
        raw = await self._call("GET", NAMESPACE + key)
        if not raw:
            return None
        try:
            head, body = raw.split(b"\n", 1)
            meta = orjson.loads(head)
            entry = cache.Entry(body=body, media_type=meta["media_type"], headers=meta["headers"])
        except (ValueError, KeyError, TypeError):
            log.warning("shared cache: unreadable entry %s ignored", key)
            return None
        self.local.put(key, entry, from_loop=True)
        return entry

    async def aput(self, key: str, entry: cache.Entry, *, from_loop: bool = False) -> None:
        """Store the entry locally and in Redis (bodies above the byte budget nowhere)."""
        self.local.put(key, entry, from_loop=from_loop)
        if len(entry.body) > self.max_bytes:
            return
        head = orjson.dumps({"media_type": entry.media_type, "headers": entry.headers})
        await self._call("SET", NAMESPACE + key, head + b"\n" + bytes(entry.body), "EX", TTL_S)

    def _connect(self) -> None:
        """Make the client on the running event loop (asyncio connections belong to one)."""
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self.url,
            max_connections=MAX_CONNECTIONS,
            timeout=self.timeout_s,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),  # no second try: the request goes on without Redis
        )
        self._client = redis.asyncio.Redis(connection_pool=pool)
        self._loop = asyncio.get_running_loop()

    async def _call(self, *command: object) -> bytes | None:
        if time.monotonic() < self._down_until:
            return None
        if self._loop is not asyncio.get_running_loop():
            self._connect()
        try:
            async with asyncio.timeout(self.timeout_s):
                answer = await self._client.execute_command(*command)  # type: ignore[union-attr]
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + BACKOFF_S
            if not self._down:
                self._down = True
                log.warning(
                    "shared cache: Redis did not answer (%s: %s); local only, trying Redis "
                    "again every %g s",
                    type(exc).__name__,
                    exc,
                    BACKOFF_S,
                )
            return None
        if self._down:
            self._down = False
            log.warning("shared cache: Redis answers again; entries are shared again")
        return answer

    async def aclose(self) -> None:
        """Close the client's connections (the lifespan's end)."""
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = self._loop = None
