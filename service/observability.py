"""Request ids, structured access logs, Prometheus samples and ``HEAD`` on every ``GET``.

One pure-ASGI middleware, outermost, so what it measures is what the client sees:

- ``X-Request-ID``: taken from the request when it is a sane token (letters, digits and
  ``-_.:``, up to 128), else generated; echoed on the response and in the log line.
- Access log: one JSON object per request on the ``service.access`` logger (stderr), with
  ``request_id``, ``method``, ``path``, ``route`` (the template, e.g. ``/v1/jobs/{job_id}``),
  ``status``, ``duration_ms``, ``engine`` and ``cache`` (schedule responses) and ``client``.
- ``HEAD`` on a path that answers ``GET``: runs the ``GET`` and sends its headers only.
"""

import json
import logging
import re
import sys
import time
import uuid
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


def configure_access_log(enabled: bool) -> None:
    """Give the access logger a JSON-lines handler on stderr (once), or silence it."""
    access_log.propagate = False
    access_log.setLevel(logging.INFO if enabled else logging.CRITICAL + 1)
    if enabled and not access_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonLines())
        access_log.addHandler(handler)


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
            access_log.info("%s %s %s", method, scope["path"], status, extra={"fields": fields})
