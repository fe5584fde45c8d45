"""A schedule result cache the API replicas share, in Redis (``LRS_CACHE_URL``).

Each replica keeps its in-process LRU (:class:`cache.ResultCache`) in front: a hit there
costs no round trip. On a local miss the entry is looked up in Redis, so a schedule one
replica computed is a hit, with the same strong ETag (a hash of the spec, the format and the
versions), on every other; computed entries go to both. Entries expire after a day (the
``Cache-Control`` max-age); Redis' own ``maxmemory`` policy bounds the total.

Redis is an optimisation, never a dependency, and never waited for on the event loop
(:mod:`service.optional_redis`, as the shared rate limits ask it): a hung Redis holds up the
request that asked it, not every other request (nor ``/healthz``). A call gives up after
``LRS_CACHE_TIMEOUT_S`` (connecting, a free pooled connection, the answer; 250 ms) and, after
a failure, Redis is left alone for a few seconds (a warning once per outage), so the service
keeps answering from its own cache and by computing.
"""

import logging

import orjson

from service.optional_redis import OptionalRedis
from service.schedules import cache
from service.settings import Settings

log = logging.getLogger("service.schedules")

TIMEOUT_S = 0.25
"""The default of ``LRS_CACHE_TIMEOUT_S``."""
TTL_S = 86_400
NAMESPACE = "lrs:schedule:"


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
        self._redis = OptionalRedis(
            url,
            timeout_s,
            log=log,
            down="shared cache: Redis did not answer; local only",
            up="shared cache: Redis answers again; entries are shared again",
        )

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

    async def _call(self, *command: object) -> bytes | None:
        return await self._redis.call(lambda client: client.execute_command(*command))

    async def aclose(self) -> None:
        """Close the client's connections (the lifespan's end)."""
        await self._redis.aclose()
