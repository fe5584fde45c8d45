"""Streamed responses with a time limit, so a client that reads slowly cannot hold a
computed schedule (and a thread, and its memory) for ever.

:class:`LimitedStreamingResponse` is Starlette's ``StreamingResponse`` whose every send must
be taken by the client within ``LRS_STREAM_SEND_TIMEOUT_S`` (a client that stops reading)
and whose whole body must be sent within ``LRS_STREAM_MAX_SECONDS`` (a client that trickles).
Past either, the connection is closed mid-body: the client sees a truncated chunked body (an
incomplete read), never a short body that looks whole, and the server frees the response
(what is left is at most a slice, :data:`SEND_SLICE`, in the closed connection's buffer).
"""

import logging
from collections.abc import AsyncIterable, Iterable
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger("service.streaming")

SEND_SLICE = 256 * 1024
"""Largest piece of a chunk handed to the server at once: what a closed connection's buffer
can still hold when its client never reads again (a JSON chunk is ~5 MB)."""


class StreamDeadline(Exception):
    """A streamed response ran past its time limit; the server closes the connection."""


class _QuietDeadline(logging.Filter):
    """Keep uvicorn from logging a traceback for a connection closed on purpose (the
    deadline is logged once, as a warning, by the response itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, StreamDeadline):
                return False
            group = getattr(exc, "exceptions", None)  # an ExceptionGroup from a task group
            exc = next((e for e in group if isinstance(e, StreamDeadline)), None) if group else None
        return True


_filter = _QuietDeadline()


def install_log_filter() -> None:
    """Silence uvicorn's traceback for deadline closes (called at app start)."""
    logger = logging.getLogger("uvicorn.error")
    if _filter not in logger.filters:
        logger.addFilter(_filter)


class LimitedStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that closes the connection when a send waits longer than
    ``send_timeout`` seconds for the client, or the body is not sent within
    ``max_seconds`` of the response's start."""

    def __init__(
        self,
        content: Iterable[Any] | AsyncIterable[Any],
        *,
        max_seconds: float,
        send_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(content, **kwargs)
        self.max_seconds = max_seconds
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        deadline = anyio.current_time() + self.max_seconds
        sent = 0

        async def limited_send(message: Message) -> None:
            nonlocal sent
            left = deadline - anyio.current_time()
            wait = min(left, self.send_timeout)
            if wait > 0:
                with anyio.move_on_after(wait):
                    await send(message)
                    sent += len(message.get("body", b""))
                    return
            total = left <= self.send_timeout
            if total:
                why = f"the body was not sent within LRS_STREAM_MAX_SECONDS={self.max_seconds:g} s"
            else:
                why = (
                    f"the client took no data for LRS_STREAM_SEND_TIMEOUT_S={self.send_timeout:g} s"
                )
            client = scope.get("client")
            log.warning(
                "closed a streamed response to %s after %d bytes: %s",
                f"{client[0]}:{client[1]}" if client else "?",
                sent,
                why,
            )
            raise StreamDeadline(why)

        async def sliced_send(message: Message) -> None:
            body = message.get("body", b"")
            if len(body) <= SEND_SLICE:
                await limited_send(message)
                return
            view = memoryview(body)
            for start in range(0, len(view), SEND_SLICE):
                part = bytes(view[start : start + SEND_SLICE])
                more = message.get("more_body", False) or start + SEND_SLICE < len(view)
                await limited_send({**message, "body": part, "more_body": more})

        await super().__call__(scope, receive, sliced_send)
