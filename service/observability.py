"""Request ids, structured access logs, Prometheus samples and ``HEAD`` on every ``GET``.

One pure-ASGI middleware, outermost, so what it measures is what the client sees:

- ``X-Request-ID``: taken from the request when it is a sane token (letters, digits and
  ``-_.:``, up to 128), else generated; echoed on the response and in the log line.
- Access log: one JSON object per request on the ``service.access`` logger (stderr), with
  ``request_id``, ``method``, ``path``, ``route`` (the template, e.g. ``/v1/jobs/{job_id}``),
  ``status``, ``duration_ms``, ``engine`` and ``cache`` (schedule responses) and ``client``;
  a streamed body the server cut short at a limit (:mod:`service.streaming`) keeps the
  status it sent (200) and adds ``cut`` (``send_timeout`` or ``max_seconds``) and
  ``sent_bytes``, and counts in ``lrs_http_streams_cut`` by route and reason.
- ``HEAD`` on a path that answers ``GET``: runs the ``GET`` and sends its headers only.

The access log's lines are formatted where the request ends and written to stderr by a
background thread (:class:`BackgroundStderr`): a stderr that drains slowly (a full pipe to a
log collector or a terminal) never stalls the event loop; past
:data:`BackgroundStderr.MAX_PENDING` unwritten lines, lines are dropped and counted.

:func:`watch_runtime` reports what stalls a process (``lrs_gc_pause_seconds``,
``lrs_event_loop_lag_seconds``), so a latency tail can be told from the machine's own noise.
"""

import asyncio
import atexit
import gc
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics

access_log = logging.getLogger("service.access")

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if fields is not None:
            return json.dumps(fields, separators=(",", ":"))
        return json.dumps({"level": record.levelname.lower(), "message": record.getMessage()})


class BackgroundStderr(logging.Handler):
    """A handler that formats records on the caller's thread and writes them to stderr from a
    daemon thread, in batches (at most :data:`INTERVAL_S` late).

    A blocked stderr blocks only that thread; lines beyond :data:`MAX_PENDING` waiting are
    dropped, and a line saying how many follows. :meth:`flush` writes what waits (at exit).
    """

    MAX_PENDING = 20_000
    """Lines kept while stderr does not drain (about 5 MB of access log)."""
    INTERVAL_S = 0.05

    def __init__(self) -> None:
        super().__init__()
        self._pending: deque[str] = deque()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if len(self._pending) >= self.MAX_PENDING:
            self.dropped += 1
            return
        self._pending.append(line)
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="access-log writer", daemon=True
                )
                self._thread.start()
                atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.INTERVAL_S)
            self.flush(timeout=-1)

    def flush(self, timeout: float = 2.0) -> None:
        """Write the lines waiting; give up after ``timeout`` s when another write blocks."""
        if not self._write_lock.acquire(timeout=timeout):
            return
        try:
            lines = []
            while self._pending:
                lines.append(self._pending.popleft())
            if self.dropped:
                dropped, self.dropped = self.dropped, 0
                note = {"level": "warning", "message": f"access log: {dropped} lines dropped "
                        "(stderr did not drain)"}  # fmt: skip
                lines.append(json.dumps(note))
            if not lines:
                return
            stream = sys.stderr
            try:
                stream.write("\n".join(lines) + "\n")
                stream.flush()
            except (OSError, ValueError):  # stderr closed (shutting down): nothing to do
                pass
        finally:
            self._write_lock.release()


def configure_access_log(enabled: bool) -> None:
    """Give the access logger a JSON-lines handler on stderr (once), or silence it."""
    access_log.propagate = False
    access_log.setLevel(logging.INFO if enabled else logging.CRITICAL + 1)
    if enabled and not access_log.handlers:
        handler = BackgroundStderr()
        handler.setFormatter(_JsonLines())
        access_log.addHandler(handler)


_gc_started: list[float] = []
_gc_pauses: deque[tuple[int, float]] = deque(maxlen=100_000)
"""Pauses not yet in the histogram: a collection can start inside a metric's lock (under
PROMETHEUS_MULTIPROC_DIR one lock for all), so the callback only notes them, and the event
loop's watcher observes them."""


def _gc_callback(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started.append(time.perf_counter())
    elif _gc_started:
        _gc_pauses.append((info["generation"], time.perf_counter() - _gc_started.pop()))


def _observe_gc_pauses() -> None:
    while _gc_pauses:
        generation, seconds = _gc_pauses.popleft()
        metrics.GC_PAUSE[generation].observe(seconds)


LAG_PERIOD_S = 0.1


async def _watch_loop() -> None:
    loop = asyncio.get_running_loop()
    while True:
        start, cpu = loop.time(), time.thread_time()
        await asyncio.sleep(LAG_PERIOD_S)
        lag = max(0.0, loop.time() - start - LAG_PERIOD_S)
        metrics.LOOP_LAG.observe(lag)
        # the part of the lag the loop's thread cannot have spent running (its CPU time over
        # the whole period is at most what it ran): descheduled, waiting for the GIL, blocked
        metrics.LOOP_LAG_OFF_CPU.observe(max(0.0, lag - (time.thread_time() - cpu)))
        _observe_gc_pauses()


@asynccontextmanager
async def watch_runtime() -> AsyncIterator[None]:
    """While the block runs, time this process's garbage collections and how late its event
    loop runs a timer (every :data:`LAG_PERIOD_S`), into ``/metrics``."""
    _watchers.append(None)  # the GC callback is the process's: kept while any app runs
    if _gc_callback not in gc.callbacks:
        gc.callbacks.append(_gc_callback)
    task = asyncio.get_running_loop().create_task(_watch_loop())
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        _watchers.pop()
        if not _watchers:
            with suppress(ValueError):
                gc.callbacks.remove(_gc_callback)


_watchers: list[None] = []


class RouteCapture:
    """Innermost middleware: after the router ran, note the path template of the route it
    chose where the outer middleware can read it (the router writes ``route`` into the scope
    it was given, which outer middlewares may have copied)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            seen = scope.get(SEEN_KEY)
            route = scope.get("route")
            if seen is not None and route is not None:
                seen["route"] = getattr(route, "path_format", None) or getattr(route, "path", None)


SEEN_KEY = "lrs.observed"


class ObservabilityMiddleware:
    """Request id, access log, request metrics and HEAD; see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method = scope["method"]
        given = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        request_id = given if given and REQUEST_ID.match(given) else uuid.uuid4().hex
        seen: dict[str, Any] = {"status": 500, "engine": None, "cache": None, "family": None}
        scope[SEEN_KEY] = seen
        scope.setdefault("state", {})["request_id"] = request_id
        head = method == "HEAD"
        if head:
            scope = dict(scope, method="GET")
        finished = False

        async def wrapped_receive() -> Message:
            if head and seen.get("started"):
                return {"type": "http.disconnect"}  # stops a stream a HEAD does not want
            return await receive()

        async def wrapped_send(message: Message) -> None:
            nonlocal finished
            if finished:
                return
            if message["type"] == "http.response.start":
                seen["started"] = True
                seen["status"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                for k, v in headers:
                    if k == b"x-engine":
                        seen["engine"] = v.decode("latin-1")
                    elif k == b"x-cache":
                        seen["cache"] = v.decode("latin-1")
                    elif k == b"x-schedule-family":
                        seen["family"] = v.decode("latin-1")
                headers.append((b"x-request-id", request_id.encode()))
                message = dict(message, headers=headers)
                await send(message)
                if head:
                    finished = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        try:
            await self.app(scope, wrapped_receive, wrapped_send)
        finally:
            self._record(scope, method, request_id, seen, time.perf_counter() - start)

    def _record(
        self, scope: Scope, method: str, request_id: str, seen: dict[str, Any], seconds: float
    ) -> None:
        route = seen.get("route") or "unmatched"
        status = int(seen["status"])
        metrics.REQUESTS.labels(method, route, str(status)).inc()
        metrics.LATENCY.labels(method, route).observe(seconds)
        if seen["cache"] in ("hit", "miss"):
            metrics.CACHE.labels(seen["cache"]).inc()
        if seen["cache"] == "miss" and seen["engine"]:
            metrics.COMPUTE.labels(seen["engine"], seen["family"] or "torch").observe(seconds)
        if status == 202 and method == "POST" and route == "/v1/jobs":
            metrics.JOBS_SUBMITTED.inc()
        if status == 429:
            metrics.RATE_LIMITED.labels(route).inc()
        cut = seen.get("cut")
        if cut is not None:
            metrics.STREAMS_CUT.labels(route, cut).inc()
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            fields = {
                "ts": round(time.time(), 3),
                "request_id": request_id,
                "method": method,
                "path": scope["path"],
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                "engine": seen["engine"],
                "cache": seen["cache"],
                "client": client[0] if client else None,
            }
            if cut is not None:  # the status was sent, then the body was cut short
                fields["cut"] = cut
                fields["sent_bytes"] = seen.get("sent_bytes")
            access_log.info("%s %s %s", method, scope["path"], status, extra={"fields": fields})
