"""Caching computed schedules: a canonical hash as a strong ETag, and a byte-bounded LRU.

A schedule is a pure function of its normalized spec, the output format and the torch
version, so the hash of those is a strong validator: equal hashes mean byte-identical bodies.
"""

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import orjson
from pydantic import BaseModel

from service import __version__
from service.devices import TORCH_VERSION

CACHE_CONTROL = "public, max-age=86400"
"""Results never change for one service and torch version; a day is a safe freshness."""


def spec_hash(spec: BaseModel, fmt: str, device: str) -> str:
    """Return the hex SHA-256 of the normalized spec (defaults filled, keys sorted), the
    format, the device that will run it, and the service and torch versions."""
    canonical = {
        "spec": spec.model_dump(mode="json"),
        "format": fmt,
        "device": device,
        "service": __version__,
        "torch": TORCH_VERSION,
    }
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def etag_matches(if_none_match: str | None, etag: str, *, exists: bool) -> bool:
    """Return True when an ``If-None-Match`` header matches ``etag`` (weak comparison).

    ``*`` matches only when a representation ``exists`` (a computed result is cached): a spec
    that would fail must get its error, not a 304.
    """
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if (candidate == "*" and exists) or candidate.removeprefix("W/") == etag:
            return True
    return False


ENTRY_OVERHEAD = 512
"""Bytes one entry costs beyond its body and key, rounded up from what was measured: the
entry, the bytes object and the OrderedDict slot take about 270 bytes (tracemalloc), and a
real server holding 6000 distinct tiny entries (~400-byte bodies) grew 0.59 KB of RSS per
entry. (Before bodies were copied on the event loop it grew 4.5 KB per entry: a worker
thread's body pinned that request's freed heap.) Counted, the budget bounds memory, not
just body bytes."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A rendered response body and what is needed to send it again."""

    body: bytes
    media_type: str
    headers: dict[str, str]


_SHARED_HEADERS: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}


def _shared(headers: dict[str, str]) -> dict[str, str]:
    """Return one dict per distinct set of headers (engine, device and torch version take a
    handful of values), so entries do not each carry their own."""
    key = tuple(headers.items())
    found = _SHARED_HEADERS.get(key)
    if found is None:
        if len(_SHARED_HEADERS) >= 256:
            return headers
        found = _SHARED_HEADERS[key] = dict(headers)
    return found


def entry_bytes(key: str, entry: Entry) -> int:
    """Return what ``entry`` stored under ``key`` costs: body, key and overhead."""
    return len(entry.body) + len(key) + ENTRY_OVERHEAD


class ResultCache:
    """An LRU of rendered bodies whose total cost stays within ``max_bytes``.

    Each entry costs its body, its key and :data:`ENTRY_OVERHEAD` (the memory an entry
    really holds), so the budget bounds the process's memory even for many tiny bodies.
    Used from the event loop only, so it needs no lock. Entries larger than the whole
    budget are not stored.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Entry | None:
        """Return the entry for ``key`` (marking it most recently used), or None."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    async def aget(self, key: str) -> Entry | None:
        """:meth:`get`, awaited as :meth:`shared_cache.SharedResultCache.aget` is (the
        routes use either)."""
        return self.get(key)

    async def aput(self, key: str, entry: Entry, *, from_loop: bool = False) -> None:
        """:meth:`put`, awaited as :meth:`shared_cache.SharedResultCache.aput` is."""
        self.put(key, entry, from_loop=from_loop)

    def put(self, key: str, entry: Entry, *, from_loop: bool = False) -> None:
        """Store ``entry``, evicting the least recently used until the budget holds.

        ``from_loop``: the body was made on the event loop (not in a worker thread), so it
        is kept as it is rather than copied."""
        if entry_bytes(key, entry) > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= entry_bytes(key, old)
        # A worker thread's body is copied here, on the event loop: the thread's copy sits
        # among that request's temporaries, and a long-lived object there pins their heap.
        body = entry.body if from_loop else memoryview(entry.body).tobytes()
        entry = Entry(body, entry.media_type, _shared(entry.headers))
        self._entries[key] = entry
        self.size += entry_bytes(key, entry)
        while self.size > self.max_bytes:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.size -= entry_bytes(evicted_key, evicted)
