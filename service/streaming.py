"""Streamed responses with a time limit, so a client that reads slowly, or not at all,
cannot hold a computed schedule (and a thread, its memory, and a connection slot) for ever.

:class:`LimitedStreamingResponse` is Starlette's ``StreamingResponse`` whose every send must
be taken by the client within ``LRS_STREAM_SEND_TIMEOUT_S`` (a client that stops reading)
and whose whole body must be sent within ``LRS_STREAM_MAX_SECONDS`` (a client that trickles).
:class:`LimitedEventSourceResponse` is sse-starlette's ``EventSourceResponse`` with the send
timeout alone (an event stream lasts as long as its job).

A streamed body holds its computed schedule and a connection until it is sent, so one client
may have at most ``LRS_STREAM_MAX_PER_CLIENT`` of them in flight (:class:`StreamCap`, per
process, the client as the rate limiter sees it): one more is answered 429 with
``Retry-After`` before it is sent (and, for one schedule, before it is computed too: requests
arriving together may each pass that check and compute, the later ones refused when sent); its place
is freed when its body is sent, cut or dropped by the client.

Past a limit the connection is **aborted** (closed at once, its unsent bytes dropped, the
kernel's too: a reset), not closed politely: a polite close waits for the client to take
what the server still buffers, which a client that stopped reading never does, so its
socket, its place under uvicorn's ``--limit-concurrency`` and the buffer stayed until the
client went away. The client sees a truncated chunked body ending in a reset, never a short
body that looks whole. The body's iterator is closed there and then, which frees the
computed schedule.

The cut is a request that ended as the server chose, not an error: it is logged once, as a
warning on ``service.streaming``, and the access log and ``/metrics`` record the status
that was sent (200) with the reason (``cut``: ``send_timeout`` or ``max_seconds``; see
:mod:`service.observability`); no traceback, no 500.

The abort needs the connection's transport, which ASGI does not hand to an app:
:class:`ConnectionAccess`, the app's outermost layer, takes it from uvicorn's ``send`` (a
method of uvicorn's per-request cycle, both HTTP implementations). Under a server where it
is not found, a deadline raises :class:`StreamDeadline` and the server closes the
connection as it closes any failed response (its traceback is kept out of the logs).
"""

import asyncio
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import TooManyRequests
from service.observability import SEEN_KEY
from service.ratelimit import caller

log = logging.getLogger("service.streaming")

SEND_SLICE = 1 << 20
"""Largest piece of a chunk handed to the server at once: what the server still buffers for
a client that stops reading (a JSON chunk is ~5 MB). Each piece goes through the middlewares'
send wrappers and uvicorn's chunk framing: 1 MB rather than 256 kB took the server's CPU for
a 1M-step JSON body from 57 to 50-54 ms (2 runs each, interleaved, 2-core EPYC)."""

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


async def pulled_in_threadpool(
    content: Iterable[Any], charset: str = "utf-8"
) -> AsyncIterator[Any]:
    """Yield the pieces of a sync iterable, advanced in a worker thread a MB at a time
    (Starlette's ``iterate_in_threadpool`` takes one thread hop per piece), one pull ahead:
    the next pieces are made while the ones before are sent, so making a body (a JSON
    chunk's orjson call) overlaps the client's reading of the chunk before it, instead of
    waiting for it. At most one pull runs at a time (the iterator is never advanced from two
    threads); when the body ends early (a cut, a disconnect), the pull in flight is waited
    for before the iterator is dropped, so it can be closed."""
    iterator = iter(content)
    ahead: asyncio.Future[tuple[list[bytes | memoryview], bool]] | None = None
    try:
        ahead = asyncio.ensure_future(anyio.to_thread.run_sync(_pull, iterator, charset))
        while ahead is not None:
            # shielded: a cancelled send must not cancel the pull's own task (it would
            # finish anyway, its thread cannot be stopped; the finally below waits for it)
            try:
                pieces, done = await asyncio.shield(ahead)
            except BaseException:
                if ahead.done():  # its error is this one: raised once, with its traceback
                    ahead = None
                raise
            ahead = (
                None
                if done
                else asyncio.ensure_future(anyio.to_thread.run_sync(_pull, iterator, charset))
            )
            for piece in pieces:
                yield piece
    finally:
        if ahead is not None:
            with anyio.CancelScope(shield=True), suppress(Exception):
                await ahead


ABORT_KEY = "lrs.abort_connection"
"""Scope key of a callable that aborts the request's connection (set by
:class:`ConnectionAccess` where the server's transport is found)."""

DISCONNECT_WAIT_S = 1.0
"""How long a cut response waits for the server to see its aborted connection go (it does
on the event loop's next turn), so the server does not report an unfinished response."""


class StreamDeadline(Exception):
    """A streamed response ran past its time limit; the server closes the connection."""


class ConnectionAccess:
    """Outermost ASGI layer: put ``scope[ABORT_KEY]``, the request's transport's ``abort``,
    where a response past its deadline can reach it (uvicorn's ``send`` is a method of its
    request cycle, which holds the transport; other servers: nothing is set)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if callable(getattr(transport, "abort", None)):
                scope[ABORT_KEY] = partial(_reset, transport)
        await self.app(scope, receive, send)


_LINGER_NONE = struct.pack("ii", 1, 0)


def _reset(transport: Any) -> None:
    """Abort the connection and have the kernel reset it: without ``SO_LINGER`` 0 the kernel
    keeps what its send buffer holds (~4 MB on loopback) in an orphaned socket and delivers
    it at the stalled client's pace (a 4 KB receive window took 100 s)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with suppress(OSError, AttributeError, TypeError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_NONE)
    transport.abort()


class _QuietDeadline(logging.Filter):
    """Keep a traceback out of the logs for a connection closed on purpose (the deadline is
    logged once, as a warning, by the response itself): only where the connection could not
    be aborted and the deadline is raised to the server."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, StreamDeadline):
                return False
            group = getattr(exc, "exceptions", None)  # an ExceptionGroup from a task group
            exc = next((e for e in group if isinstance(e, StreamDeadline)), None) if group else None
        return True


_filter = _QuietDeadline()

QUIET_LOGGERS = ("uvicorn.error", "service")
"""uvicorn's "Exception in ASGI application", and the app's "unhandled error" handler (it
sees what reaches Starlette's outermost error middleware)."""


def install_log_filter() -> None:
    """Silence the tracebacks of deadline closes that had to be raised (called at app start)."""
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)


async def cut_connection(scope: Scope, receive: Receive, reason: str, why: str, sent: int) -> None:
    """End a response past its deadline: log it, note it for the access log and metrics,
    and abort the connection (then wait for the server to see it gone); where that cannot
    be done, raise :class:`StreamDeadline` for the server to close it."""
    client = scope.get("client")
    log.warning(
        "closed a streamed response to %s after %d bytes: %s",
        f"{client[0]}:{client[1]}" if client else "?",
        sent,
        why,
    )
    seen = scope.get(SEEN_KEY)
    if seen is not None:
        seen["cut"] = reason
        seen["sent_bytes"] = sent
    abort: Callable[[], None] | None = scope.get(ABORT_KEY)
    if abort is None:
        raise StreamDeadline(why)
    abort()
    with anyio.move_on_after(DISCONNECT_WAIT_S):
        while (await receive())["type"] != "http.disconnect":
            pass


def _send_timeout_why(send_timeout: float) -> str:
    return f"the client took no data for LRS_STREAM_SEND_TIMEOUT_S={send_timeout:g} s"


STREAM_RETRY_AFTER_S = 5
"""``Retry-After`` of a client over its streams: a body of tens of MB is sent in seconds to
a client that reads."""


class StreamCap:
    """Streamed responses each client has in flight in this process, at most
    ``max_per_client`` (0: no cap). The client is the rate limiter's: the digest of one of
    ``keys`` it sends, else its address. Used on the event loop only (no lock)."""

    def __init__(self, max_per_client: int, keys: frozenset[str] = frozenset()) -> None:
        self.max_per_client = max_per_client
        self.keys = keys
        self.in_flight: Counter[str] = Counter()

    def check(self, scope: Scope) -> str:
        """Return the request's client; raise TooManyRequests (429) when it already has
        ``max_per_client`` streams in flight."""
        client = caller(scope, self.keys)
        if self.max_per_client and self.in_flight[client] >= self.max_per_client:
            raise TooManyRequests(
                f"you have {self.max_per_client} streamed responses in flight, the most one "
                "client may (LRS_STREAM_MAX_PER_CLIENT); wait for your other streams to "
                "finish, or sample fewer points (or fewer groups, specs or steps) so the body "
                "stays under LRS_STREAM_MIN_BYTES and is sent in one piece",
                headers={"Retry-After": str(STREAM_RETRY_AFTER_S)},
            )
        return client

    @contextmanager
    def held(self, scope: Scope) -> Iterator[None]:
        """Hold one of the client's places for the ``with`` block (:meth:`check` first)."""
        client = self.check(scope)
        self.in_flight[client] += 1
        try:
            yield
        finally:
            self.in_flight[client] -= 1
            if self.in_flight[client] <= 0:
                del self.in_flight[client]


class LimitedStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that aborts the connection when a send waits longer than
    ``send_timeout`` seconds for the client, or the body is not sent within
    ``max_seconds`` of the response's start. With a ``cap`` it is sent holding one of the
    client's places there, or answered 429 (:meth:`StreamCap.check`) when none is free."""

    def __init__(
        self,
        content: Iterable[Any] | AsyncIterable[Any],
        *,
        max_seconds: float,
        send_timeout: float,
        cap: StreamCap | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(content, **kwargs)
        if not isinstance(content, AsyncIterable):
            self.body_iterator = pulled_in_threadpool(content, self.charset)
        self.content = content
        self.max_seconds = max_seconds
        self.send_timeout = send_timeout
        self.cap = cap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with self.cap.held(scope) if self.cap is not None else nullcontext():
                await self._send_limited(scope, receive, send)
        finally:
            await self._close_body()

    async def _send_limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One cancel scope for the whole response: its deadline is the total limit, and a
        # watchdog cancels it when one send has waited send_timeout for the client. A send
        # only notes when it began (no cancel scope per send: a 27 MB body is ~100 sends).
        began: list[float | None] = [None]  # when the send in progress began (monotonic)
        sent = 0
        timed_out = False
        ends = time.monotonic() + self.max_seconds
        cut = anyio.CancelScope(deadline=anyio.current_time() + self.max_seconds)

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
            now = time.monotonic()
            if now >= ends:  # nothing is sent past the total limit
                cut.cancel()
                await anyio.lowlevel.checkpoint()
            began[0] = now
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

        with cut:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(watchdog, cut)
                await super().__call__(scope, receive, sliced_send)
                tasks.cancel_scope.cancel()
        if cut.cancelled_caught:
            if timed_out:
                late = ("send_timeout", _send_timeout_why(self.send_timeout))
            else:
                limit = f"LRS_STREAM_MAX_SECONDS={self.max_seconds:g} s"
                late = ("max_seconds", f"the body was not sent within {limit}")
            await cut_connection(scope, receive, *late, sent)

    async def _close_body(self) -> None:
        """Close the body's iterators now (a cut or a disconnect left them suspended), so
        what they hold (the computed schedule) is freed here, not when collected."""
        aclose = getattr(self.body_iterator, "aclose", None)
        if aclose is not None:
            await aclose()
        close = getattr(self.content, "close", None)
        if close is not None:
            with suppress(ValueError):  # running in a thread still: dropped when it returns
                close()
        del self.body_iterator, self.content


class LimitedEventSourceResponse(EventSourceResponse):
    """sse-starlette's ``EventSourceResponse`` whose sends (events and pings) must each be
    taken within ``send_timeout`` seconds, else the connection is aborted (see
    :func:`cut_connection`) and the response's background task (freeing the stream's place
    under the per-client and per-job caps) still runs."""

    def __init__(self, content: Any, *, send_timeout: float, **kwargs: Any) -> None:
        super().__init__(content, send_timeout=send_timeout, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = 0

        async def counted_send(message: Message) -> None:
            nonlocal sent
            await send(message)
            sent += len(message.get("body", b""))

        try:
            await super().__call__(scope, receive, counted_send)
        except SendTimeoutError:
            try:
                why = _send_timeout_why(self.send_timeout or 0)
                await cut_connection(scope, receive, "send_timeout", why, sent)
            finally:
                if self.background is not None:
                    await self.background()
