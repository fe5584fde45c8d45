"""A schedule result cache the API replicas share, in Redis (``LRS_CACHE_URL``).

Each replica keeps its in-process LRU (:class:`cache.ResultCache`) in front: a hit there
costs no round trip. On a local miss the entry is looked up in Redis, so a schedule one
replica computed is a hit, with the same strong ETag (a hash of the spec, the format and the
versions), on every other; computed entries go to both. Entries expire after a day (the
``Cache-Control`` max-age); Redis' own ``maxmemory`` policy bounds the total.

Redis is an optimisation, never a dependency: calls time out after
:data:`TIMEOUT_S` and, after a failure, Redis is left alone for :data:`BACKOFF_S`, so a Redis
outage costs at most one short wait and the service keeps answering from its own cache and
by computing.
"""

import logging
import time

import orjson
import redis

from service.schedules import cache
from service.settings import Settings

log = logging.getLogger("service.schedules")

TIMEOUT_S = 0.25
BACKOFF_S = 5.0
TTL_S = 86_400
NAMESPACE = "lrs:schedule:"


def make_cache(settings: Settings) -> "cache.ResultCache | SharedResultCache":
    """Return the cache the settings ask for: shared through Redis when ``cache_url`` is
    set, else the in-process LRU alone."""
    local = cache.ResultCache(settings.cache_max_bytes)
    if not settings.cache_url:
        return local
    return SharedResultCache(local, settings.cache_url)


class SharedResultCache:
    """The in-process LRU in front of a Redis store of rendered bodies."""

    def __init__(self, local: cache.ResultCache, url: str) -> None:
        self.local = local
        self.max_bytes = local.max_bytes
        self.client = redis.Redis.from_url(
            url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S
        )
        self._down_until = 0.0

    def __len__(self) -> int:
        return len(self.local)

    def get(self, key: str) -> cache.Entry | None:
        """Return the entry from the local LRU, else from Redis (keeping it locally), or
        None."""
        entry = self.local.get(key)
        if entry is not None:
            return entry
        raw = self._call("GET", NAMESPACE + key)
        if not raw:
            return None
        try:
            head, body = raw.split(b"\n", 1)
            meta = orjson.loads(head)
            entry = cache.Entry(body=body, media_type=meta["media_type"], headers=meta["headers"])
        except (ValueError, KeyError, TypeError):
            log.warning("shared cache: unreadable entry %s ignored", key)
            return None
        self.local.put(key, entry)
        return entry

    def put(self, key: str, entry: cache.Entry, *, from_loop: bool = False) -> None:
        """Store the entry locally and in Redis (bodies above the byte budget nowhere)."""
        self.local.put(key, entry, from_loop=from_loop)
        if len(entry.body) > self.max_bytes:
            return
        head = orjson.dumps({"media_type": entry.media_type, "headers": entry.headers})
        self._call("SET", NAMESPACE + key, head + b"\n" + bytes(entry.body), "EX", TTL_S)

    def _call(self, *command: object) -> bytes | None:
        now = time.monotonic()
        if now < self._down_until:
            return None
        try:
            return self.client.execute_command(*command)
        except redis.RedisError as exc:
            self._down_until = now + BACKOFF_S
            log.warning("shared cache unreachable, local only for %g s: %s", BACKOFF_S, exc)
            return None
