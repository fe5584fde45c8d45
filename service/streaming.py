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
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

import anyio
import anyio.to_thread
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger("service.streaming")

SEND_SLICE = 256 * 1024
"""Largest piece of a chunk handed to the server at once: what a closed connection's buffer
can still hold when its client never reads again (a JSON chunk is ~5 MB)."""


PULL_BYTES = 1 << 20
"""A sync body iterator is advanced in a worker thread until its pieces hold this many bytes
(or one piece is this large): one thread hop per MB or per large piece, not per piece (a
JSON body's pieces include one-byte separators between ~5 MB arrays)."""

SMALL_PIECE = 64 * 1024
"""Consecutive pieces smaller than this are joined into one send (one chunk of the
chunked body); larger ones are sent as they come, sliced, never copied here."""


def _pull(iterator: Iterator[Any], charset: str) -> tuple[list[bytes | memoryview], bool]:
    """Return the next pieces of ``iterator`` (about :data:`PULL_BYTES`, runs of small
    ones joined) and whether it is exhausted; called in a worker thread."""
    pieces: list[bytes | memoryview] = []
    small: list[bytes | memoryview] = []
    size = 0
    done = False
    while size < PULL_BYTES:
        try:
            piece = next(iterator)
        except StopIteration:
            done = True
            break
        if not isinstance(piece, bytes | memoryview):
            piece = piece.encode(charset)
        length = piece.nbytes if isinstance(piece, memoryview) else len(piece)
        size += length
        if length < SMALL_PIECE:
            small.append(piece)
            continue
        if small:
            pieces.append(b"".join(small))
            small = []
        pieces.append(piece)
    if small:
        pieces.append(b"".join(small))
    return pieces, done


async def _pulled_in_threadpool(content: Iterable[Any], charset: str) -> AsyncIterator[Any]:
    """Yield the pieces of a sync iterable, advanced in a worker thread a MB at a time
    (Starlette's ``iterate_in_threadpool`` takes one thread hop per piece)."""
    iterator = iter(content)
    done = False
    while not done:
        pieces, done = await anyio.to_thread.run_sync(_pull, iterator, charset)
        for piece in pieces:
            yield piece


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
        if not isinstance(content, AsyncIterable):
            self.body_iterator = _pulled_in_threadpool(content, self.charset)
        self.max_seconds = max_seconds
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One cancel scope for the whole response: its deadline is the total limit, and a
        # watchdog cancels it when one send has waited send_timeout for the client. A send
        # only notes when it began (no cancel scope per send: a 27 MB body is ~100 sends).
        began: list[float | None] = [None]  # when the send in progress began (monotonic)
        sent = 0
        timed_out = False

        async def watchdog(cut: anyio.CancelScope) -> None:
            nonlocal timed_out
            while True:
                since, now = began[0], time.monotonic()
                if since is not None and now - since >= self.send_timeout:
                    timed_out = True
                    cut.cancel()
                    return
                await anyio.sleep((now if since is None else since) + self.send_timeout - now)

        async def timed_send(message: Message) -> None:
            nonlocal sent
            began[0] = time.monotonic()
            await send(message)
            began[0] = None
            sent += len(message.get("body", b""))

        async def sliced_send(message: Message) -> None:
            body = message.get("body", b"")
            if len(body) <= SEND_SLICE:
                await timed_send(message)
                return
            view = memoryview(body).cast("B")
            for start in range(0, len(view), SEND_SLICE):
                part = view[start : start + SEND_SLICE]  # a view: the server copies it once
                more = message.get("more_body", False) or start + SEND_SLICE < len(view)
                await timed_send({**message, "body": part, "more_body": more})

        with anyio.CancelScope(deadline=anyio.current_time() + self.max_seconds) as cut:
            async with anyio.create_task_group() as watching:
                watching.start_soon(watchdog, cut)
                await super().__call__(scope, receive, sliced_send)
                watching.cancel_scope.cancel()
        if not cut.cancelled_caught:
            return
        if timed_out:
            why = f"the client took no data for LRS_STREAM_SEND_TIMEOUT_S={self.send_timeout:g} s"
        else:
            why = f"the body was not sent within LRS_STREAM_MAX_SECONDS={self.max_seconds:g} s"
        client = scope.get("client")
        log.warning(
            "closed a streamed response to %s after %d bytes: %s",
            f"{client[0]}:{client[1]}" if client else "?",
            sent,
            why,
        )
        raise StreamDeadline(why)
