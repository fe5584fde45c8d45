"""Compute processes: cheap schedules computed and rendered beside the event loop.

A 10k-step warmup + cosine costs the API process about 1 ms of CPU more than a cache hit:
0.2 ms computing, 0.3-0.5 ms writing its JSON (orjson, holding the GIL), the rest the plan's
bookkeeping, all on the event loop, which serves nothing else meanwhile. With
``LRS_COMPUTE_PROCESSES`` > 0 the requests the event loop would compute itself (vectorized,
JSON, CSV or npy, at most ``LRS_COMPUTE_INLINE_MAX_COST``) go to one of that many child
processes instead (``python -m service.schedules.compute_pool``): the spec, its engine and
cost and the format go down the child's stdin, pickled; the child computes and renders the
body, writes it into the request's slot of memory the two share (:data:`SLOT_BYTES`) and says
so up its stdout, and the API copies it out; the event loop serves other requests meanwhile
(its CPU per request: about 0.15 ms more than a cache hit's, against 1 ms computing). The
child's plans and templates are its own (its sweeps share their compilations as the API's
do); the result cache, the ETag and the metrics stay in the API process.

A vectorized body too long to cache (streamed, :meth:`ComputePool.stream`) goes to a child
too, while the estimates of such bodies in flight stay under :data:`STREAM_BUFFER_BYTES` and
its cost under :data:`STREAM_MAX_COST`: the child sends its head (the headers, or the 4xx),
then writes the body through :data:`WINDOW` slots, a full slot at a time; the API copies each
piece out as its frame comes and hands the slot back at once, so the child never waits for a
client. Should the child die or fail after the head, the API computes the body itself and
sends the rest of it from the byte where the child's pieces stopped.

Never waited for: a child that is starting (its imports and warm-up take about as long as
the service's own start), has :data:`MAX_QUEUED` requests queued, has exited, or sends no
answer within ``LRS_COMPUTE_MAX_SECONDS`` + 1 s. The request is then computed on the event
loop, as without the processes; so is one the child failed by a bug (the loop's 500 is then
its own). A spec that turns out invalid while computing gets the 4xx the child raised (the
same error the loop would raise: it pickles whole). A child that exits is started again (after
0.5 s, doubling to 30 s while it keeps exiting within a minute); one that stops answering is
killed first. Each child is a whole Python with torch: about 400 MB resident after a load
(the API process beside it: 520 MB).
"""

import asyncio
import contextlib
import gc
import logging
import mmap
import os
import pickle
import signal
import struct
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, BinaryIO

from service.devices import TORCH_VERSION
from service.errors import ServiceError
from service.schedules import budget, cache, formats, plots, service, specs
from service.schedules.result import Computed
from service.settings import Settings, bind_settings

log = logging.getLogger("service.schedules")

_HEADER = struct.Struct("!Q")
"""Each frame on the pipes: its length (8 bytes, network order), then a pickle."""

_REPLY = struct.Struct("!QIIBBH")
"""Each reply: the request's id, the sizes of its meta (a pickle of the media type and the
headers; of the ServiceError the computation raised, a 4xx; or of None when the child failed
otherwise) and of its body, whether the body is in a slot (1) or follows the meta on the pipe
(0), the reply's kind (:data:`WHOLE`, or one of a streamed body's) and the slot a piece is in;
then the meta (and the body)."""

WHOLE, HEAD, PIECE, END, FAILED = range(5)
"""Reply kinds: a whole body (its request's slot); a streamed body's head (meta: its headers,
or the 4xx, or None), a piece of it (a slot of its window, full but for the last), its end,
or its rendering failed after the head (the API renders the rest itself)."""

Outcome = cache.Entry | ServiceError | None

_READY_ID = (1 << 64) - 1
"""The id of the child's first reply, once it has warmed up."""

MAX_QUEUED = 32
"""Requests a child may have queued or in hand (its slots); the next is computed on the
event loop."""

SLOT_BYTES = 1 << 20
"""Each slot of the memory a child shares with the API: a body up to this size (a 10k-step
JSON body is 253 kB) is written there by the child and copied out by the API, rather than
sent down the pipe (measured: the API's CPU per request 270 -> 130 us without the body on
the pipe, which took six reads of 32 kB and as many wake-ups). A slot is the request's from
when it is sent until its reply is read, whether or not anyone still waits for it."""

WINDOW = 4
"""Slots a streamed body is written through: the child fills one while the API copies the
ones before out (each copied as it arrives, its slot handed back at once, so a client that
reads slowly never holds the child up)."""

STREAM_BUFFER_BYTES = 128 << 20
"""Most bytes of streamed bodies (their upper-bound estimates) a pool has in hand at once: the
pieces wait in the API for their client, so a body goes to a child only while the estimates
of those in flight leave room for it (a 1M-step JSON body: 36 MB); beyond, it is computed in
a compute thread and streamed from there, as without processes."""

STREAM_MAX_COST = 64_000_000
"""Most cost (the cost model's units, about 1 ns each, every step priced) of a streamed body
sent to a child: a 1M-step warmup + cosine costs about 23 000 000 (its compute 3-5 ms, its
JSON 15-20 ms); a longer computation keeps the child from the cheap requests behind it."""


def about(computed: Computed) -> dict[str, str]:
    """Return the response headers that describe how ``computed`` was computed."""
    return {
        "X-Engine": computed.engine,
        "X-Device": computed.device,
        "X-Torch-Version": TORCH_VERSION,
        # for /metrics' compute time by family (torch's own schedulers: "torch")
        "X-Schedule-Family": ",".join(str(f.get("family")) for f in computed.families) or "torch",
    }


def rendered_entry(
    computed: Computed, fmt: str, title: str = "", plot: plots.PlotOptions | None = None
) -> cache.Entry:
    """Return the cache entry of ``computed`` rendered as ``fmt``."""
    rendered = formats.render(computed, fmt, title, plot or plots.PlotOptions())  # type: ignore[arg-type]
    return cache.Entry(body=rendered.body, media_type=rendered.media_type, headers=about(computed))


def _compute_entry(
    spec: specs.ScheduleRequest, settings: Settings, found: service.Checked, fmt: str
) -> cache.Entry:
    with budget.active(budget.Budget(settings.compute_max_seconds)):
        computed = service.compute(spec, settings, found)
        return rendered_entry(computed, fmt)


_DONE = object()
"""Put in a stream's queue after its last piece."""


class Stream:
    """A body a child streams: its headers (once its head came), then its pieces, each
    copied out of its slot as it arrived (:meth:`pieces`)."""

    def __init__(self, rid: int, window: list[int], release: Callable[[], None]) -> None:
        self.rid = rid
        self.window = window
        self.head: asyncio.Future[dict[str, str] | ServiceError | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.headers: dict[str, str] = {}
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._release = release
        self.abandoned = False
        self._watch: tuple[float, Callable[[], None]] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, seconds: float, stalled: Callable[[], None]) -> None:
        """Call ``stalled`` should no piece come within ``seconds`` (of this call, then of
        each piece), until :meth:`unwatch`."""
        self._watch = (seconds, stalled)
        self.piece_came()

    def piece_came(self) -> None:
        if self._watch is not None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(*self._watch)

    def unwatch(self) -> None:
        self._watch = None
        if self._timer is not None:
            self._timer.cancel()

    def put(self, item: Any) -> None:
        """Take a piece (bytes), :data:`_DONE`, or None (the child failed the rest)."""
        if not self.abandoned:
            self._queue.put_nowait(item)

    def abandon(self) -> None:
        """Drop what is queued and what comes (the client left, or the body was sent)."""
        if not self.abandoned:
            self.abandoned = True
            self._queue = asyncio.Queue()
            self._release()

    def pieces(self, rest: Callable[[int], AsyncIterator[bytes | memoryview]]) -> "Body":
        """Return the body: its pieces; if the child fails it after ``n`` bytes, the pieces of
        ``rest(n)`` (the same body rendered here, from byte ``n``). Closing it (iterated or
        not) drops the stream and frees its place under :data:`STREAM_BUFFER_BYTES`."""
        return Body(self, rest)

    async def _pieces(
        self, rest: Callable[[int], AsyncIterator[bytes | memoryview]]
    ) -> AsyncIterator[bytes | memoryview]:
        sent = 0
        try:
            while True:
                item = await self._queue.get()
                if item is _DONE:
                    return
                if item is None:
                    async with contextlib.aclosing(rest(sent)) as pieces:
                        async for piece in pieces:
                            yield piece
                    return
                sent += len(item)
                yield item
        finally:
            self.abandon()


class Body:
    """A :class:`Stream`'s body as a response iterates it; :meth:`aclose` (which a streamed
    response calls when it ends, however it ends) frees the stream even if it was never
    iterated: a generator's ``finally`` does not run when it never started."""

    def __init__(
        self, stream: Stream, rest: Callable[[int], AsyncIterator[bytes | memoryview]]
    ) -> None:
        self._stream = stream
        self._pieces = stream._pieces(rest)

    def __aiter__(self) -> AsyncIterator[bytes | memoryview]:
        return self._pieces

    async def aclose(self) -> None:
        try:
            await self._pieces.aclose()
        finally:
            self._stream.abandon()


class _Child:
    __slots__ = (
        "free",
        "memory",
        "next_id",
        "pending",
        "pid",
        "ready",
        "slot_of",
        "stdin",
        "streams",
        "transport",
    )

    def __init__(self, memory: mmap.mmap) -> None:
        self.ready = False
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[Outcome]] = {}
        self.memory = memory
        self.free = list(range(MAX_QUEUED))
        self.slot_of: dict[int, int] = {}
        self.streams: dict[int, Stream] = {}
        self.transport: asyncio.SubprocessTransport | None = None
        self.stdin: asyncio.WriteTransport | None = None
        self.pid = 0

    def deliver(
        self, rid: int, meta: bytes, body: bytes | None, size: int, kind: int = WHOLE, slot: int = 0
    ) -> None:
        """Take the reply to ``rid``: its meta (pickled), and its body (None: ``size`` bytes
        in its slot); free its slot. A streamed body's replies go to its :class:`Stream`."""
        if rid == _READY_ID:
            self.ready = True
            log.info("compute process %d is ready", self.pid)
            return
        if self.memory.closed:  # read after the child's end: its requests got None already
            return
        if kind != WHOLE:
            self._stream_reply(rid, meta, size, kind, slot)
            return
        slot = self.slot_of.pop(rid, None)
        if slot is not None:
            if body is None:
                start = slot * SLOT_BYTES
                body = self.memory[start : start + size]
            self.free.append(slot)
        future = self.pending.get(rid)
        if future is None or future.done():
            return
        outcome: Outcome = None
        try:
            what = pickle.loads(meta)
            if isinstance(what, ServiceError):
                outcome = what
            elif what is not None:
                media_type, headers = what
                outcome = cache.Entry(body or b"", media_type, headers)
        except Exception:  # a reply that does not unpickle or is malformed: the loop computes
            log.exception("compute process %d sent a reply this cannot read", self.pid)
            outcome = None
        future.set_result(outcome)

    def _stream_reply(self, rid: int, meta: bytes, size: int, kind: int, slot: int) -> None:
        stream = self.streams.get(rid)
        if stream is None:
            return
        if kind == PIECE:
            stream.piece_came()
            if not stream.abandoned:
                start = slot * SLOT_BYTES
                stream.put(self.memory[start : start + size])  # a copy: the slot goes back
            self._send((rid, slot, None))
            return
        if kind == HEAD:
            head: dict[str, str] | ServiceError | None = None
            try:
                head = pickle.loads(meta)
                if not isinstance(head, dict | ServiceError | None):
                    raise TypeError(f"a stream's head is {type(head).__name__}")
            except Exception:
                log.exception("compute process %d sent a head this cannot read", self.pid)
                head = None
            if not stream.head.done():
                stream.head.set_result(head)
            if isinstance(head, dict):
                return
        else:
            stream.put(_DONE if kind == END else None)
        self.end_stream(stream)  # ended (or failed): its window is free

    def end_stream(self, stream: Stream) -> None:
        """Forget ``stream``; its window's slots are free again (the child writes no more
        of it)."""
        stream.unwatch()
        if self.streams.pop(stream.rid, None) is not None:
            self.free.extend(stream.window)

    def _send(self, frame: Any) -> None:
        if self.stdin is not None and not self.stdin.is_closing():
            payload = pickle.dumps(frame, protocol=5)
            self.stdin.write(_HEADER.pack(len(payload)) + payload)

    def kill(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(ProcessLookupError):
                self.transport.kill()


class _Replies(asyncio.SubprocessProtocol):
    """The parent's end of a child's stdout: its reply frames, each handed to the child's
    :meth:`_Child.deliver` as soon as it is whole (the body copied once, out of the pipe's
    read)."""

    def __init__(self, child: _Child, exited: asyncio.Future[None]) -> None:
        self._child = child
        self._exited = exited
        self._chunks: list[bytes] = []
        self._have = 0
        self._frame: tuple[int, int, int, int, int, int] | None = None

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            return
        self._chunks.append(data)
        self._have += len(data)
        while True:
            if self._frame is None:
                if self._have < _REPLY.size:
                    return
                if len(self._chunks[0]) < _REPLY.size:
                    self._chunks = [b"".join(self._chunks)]
                self._frame = _REPLY.unpack_from(self._chunks[0])
            rid, meta_size, body_size, in_slot, kind, slot = self._frame
            meta_end = _REPLY.size + meta_size
            total = meta_end + (0 if in_slot else body_size)
            if self._have < total:
                return
            buffer = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            view = memoryview(buffer)
            meta = bytes(view[_REPLY.size : meta_end])
            body = None if in_slot else bytes(view[meta_end:total])
            rest = bytes(view[total:]) if len(buffer) > total else b""
            self._chunks = [rest] if rest else []
            self._have = len(rest)
            self._frame = None
            self._child.deliver(rid, meta, body, body_size, kind, slot)

    def process_exited(self) -> None:
        if not self._exited.done():
            self._exited.set_result(None)


class ComputePool:
    """``processes`` child processes the event loop hands its cheap computations to."""

    def __init__(self, settings: Settings, processes: int) -> None:
        self._settings = settings
        self._children: list[_Child | None] = [None] * processes
        self._exits: list[asyncio.Future[None] | None] = [None] * processes
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._timeout = settings.compute_max_seconds + 1
        self._buffered = 0
        """The estimates of the streamed bodies in flight (:data:`STREAM_BUFFER_BYTES`)."""

    def start(self) -> None:
        """Start the children (in the background: they are used once they are ready)."""
        self._tasks = [
            asyncio.create_task(self._supervise(slot), name=f"compute process {slot}")
            for slot in range(len(self._children))
        ]

    async def run(
        self, spec: specs.ScheduleRequest, found: service.Checked, fmt: str
    ) -> cache.Entry | None:
        """Return the entry a child computed for ``spec`` as ``fmt``; None when no child is
        ready with room in its queue, or it failed or did not answer (compute it here)."""
        child = self._pick(1)
        request = None if child is None else _pickled(spec, found, fmt)
        if child is None or child.stdin is None or request is None:
            return None
        loop = asyncio.get_running_loop()
        rid = child.next_id
        child.next_id += 1
        slot = child.free.pop()
        child.slot_of[rid] = slot
        payload = pickle.dumps((rid, slot, request), protocol=5)
        future: asyncio.Future[Outcome] = loop.create_future()
        child.pending[rid] = future
        expire = loop.call_later(self._timeout, self._expired, child, future)
        try:
            child.stdin.write(_HEADER.pack(len(payload)) + payload)
            outcome = await future
        finally:
            expire.cancel()
            child.pending.pop(rid, None)
        if isinstance(outcome, ServiceError):
            raise outcome  # the 4xx computing it raised (the event loop's would be the same)
        return outcome

    async def stream(
        self, spec: specs.ScheduleRequest, found: service.Checked, fmt: str, estimate: int
    ) -> Stream | None:
        """Return the body a child computes for ``spec`` and streams as ``fmt``, its headers
        come; None when it is not for a child (too costly, no room, no child ready with a
        window's slots free), or the child failed before its head (compute it here)."""
        every_step = max(found.cost, found.every_step)
        if (
            found.engine != "vectorized"
            or fmt not in formats.STREAMED
            or every_step > STREAM_MAX_COST
            or self._buffered + estimate > STREAM_BUFFER_BYTES
        ):
            return None
        child = self._pick(WINDOW)
        request = None if child is None else _pickled(spec, found, fmt)
        if child is None or child.stdin is None or request is None:
            return None
        self._buffered += estimate

        def release() -> None:
            self._buffered -= estimate

        rid = child.next_id
        child.next_id += 1
        window = [child.free.pop() for _ in range(WINDOW)]
        stream = Stream(rid, window, release)
        child.streams[rid] = stream
        loop = asyncio.get_running_loop()
        expire = loop.call_later(self._timeout, self._expired, child, stream.head)
        try:
            child._send((rid, tuple(window), request))
            head = await stream.head
        except BaseException:
            stream.abandon()
            raise
        finally:
            expire.cancel()
        if not isinstance(head, dict):
            stream.abandon()
            if isinstance(head, ServiceError):
                raise head  # the 4xx computing it raised
            return None
        stream.headers = head
        if stream.rid in child.streams:  # not ended already: watch for its pieces

            def stalled() -> None:
                log.error(
                    "compute process %d sent no piece of a streamed body within %g s; killing "
                    "it (the API renders the rest)",
                    child.pid,
                    self._timeout,
                )
                child.ready = False
                child.kill()

            stream.watch(self._timeout, stalled)
        return stream

    def _pick(self, slots: int) -> _Child | None:
        """Return the ready child with the most free slots, at least ``slots``."""
        child = None
        for candidate in self._children:
            if (
                candidate is not None
                and candidate.ready
                and len(candidate.free) >= slots
                and candidate.stdin is not None
                and not candidate.stdin.is_closing()
                and (child is None or len(candidate.free) > len(child.free))
            ):
                child = candidate
        return child

    def _expired(self, child: _Child, future: asyncio.Future[Any]) -> None:
        if future.done():
            return
        future.set_result(None)
        child.ready = False  # killed: no more requests for it
        log.error(
            "compute process %d did not answer within %g s; killing it", child.pid, self._timeout
        )
        child.kill()

    async def _supervise(self, slot: int) -> None:
        failures = 0
        while not self._closed:
            started = time.monotonic()
            try:
                code = await self._serve(slot)
            except Exception:  # a bug here: start another child rather than none
                log.exception("compute process %d failed", slot)
                code = None
            if self._closed:
                return
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            delay = min(30.0, 0.5 * 2 ** (failures - 1)) if failures else 0.5
            log.warning(
                "compute process %d exited (code %s); starting another in %.1f s",
                slot,
                code,
                delay,
            )
            await asyncio.sleep(delay)

    async def _serve(self, slot: int) -> int | None:
        loop = asyncio.get_running_loop()
        fd = _shared_file()
        try:
            size = MAX_QUEUED * SLOT_BYTES
            os.ftruncate(fd, size)
            child = _Child(mmap.mmap(fd, size))
            exited: asyncio.Future[None] = loop.create_future()
            transport, _ = await loop.subprocess_exec(
                lambda: _Replies(child, exited),
                sys.executable,
                "-m",
                "service.schedules.compute_pool",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,
                pass_fds=(fd,),
            )
        finally:
            os.close(fd)
        child.transport = transport
        child.pid = transport.get_pid()
        child.stdin = transport.get_pipe_transport(0)  # type: ignore[assignment]
        self._children[slot] = child
        self._exits[slot] = exited
        try:
            payload = pickle.dumps((self._settings, fd, size), protocol=5)
            assert child.stdin is not None
            child.stdin.write(_HEADER.pack(len(payload)) + payload)
            await exited
        finally:
            child.ready = False
            self._children[slot] = None
            for future in child.pending.values():
                if not future.done():
                    future.set_result(None)
            child.pending.clear()
            for stream in list(child.streams.values()):
                if not stream.head.done():
                    stream.head.set_result(None)
                stream.put(None)  # the rest is rendered here
                child.end_stream(stream)
            if not exited.done():
                child.kill()
            transport.close()
            child.memory.close()  # every body read from it was copied
        return transport.get_returncode()

    async def aclose(self) -> None:
        """Stop the children: their stdin closed (they exit when they read its end), killed
        after 5 s."""
        self._closed = True
        running = [
            (child, exited)
            for child, exited in zip(self._children, self._exits, strict=True)
            if child is not None and exited is not None
        ]
        for child, _ in running:
            if child.stdin is not None:
                child.stdin.close()
        if running:
            await asyncio.wait([exited for _, exited in running], timeout=5)
            for child, exited in running:
                if not exited.done():
                    child.kill()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _pickled(spec: specs.ScheduleRequest, found: service.Checked, fmt: str) -> bytes | None:
    """Return the request a child computes, pickled; None when it does not pickle."""
    try:
        # the Checked as a tuple: a slots dataclass pickles through dataclasses.fields();
        # the request pickled apart, so a child that cannot read one still answers it
        checked = (found.engine, found.cost, found.share, found.every_step)
        return pickle.dumps((spec, checked, fmt), protocol=5)
    except Exception:
        log.exception("a spec did not pickle for the compute process; computed here")
        return None


def _shared_file() -> int:
    """Return the descriptor of a new file in memory (unnamed), for a child's slots."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("lrs-compute-slots")
    with tempfile.TemporaryFile() as handle:  # unlinked already
        return os.dup(handle.fileno())


def _read_frame(stream: BinaryIO) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError
    return pickle.loads(payload)


def _write_reply(
    stream: BinaryIO, rid: int, entry: Outcome, memory: mmap.mmap | None, slot: int
) -> None:
    """Send the reply to ``rid``: ``entry``'s body in its ``slot`` of ``memory`` when it
    fits, else on the pipe after the meta."""
    if isinstance(entry, ServiceError):
        meta = _error_meta(entry)
        entry = None
    else:
        meta = pickle.dumps(None if entry is None else (entry.media_type, entry.headers))
    body = b"" if entry is None else entry.body
    in_slot = memory is not None and 0 < len(body) <= SLOT_BYTES
    if in_slot:
        start = slot * SLOT_BYTES
        memory[start : start + len(body)] = body  # type: ignore[index]
    stream.write(_REPLY.pack(rid, len(meta), len(body), in_slot, WHOLE, 0) + meta)
    if not in_slot:
        stream.write(body)
    stream.flush()


def _error_meta(error: ServiceError) -> bytes:
    """Return the pickle of a 4xx for the API, or of None when it does not pickle (the API
    then computes the request again and raises the error itself)."""
    try:
        return pickle.dumps(error)
    except Exception:
        return pickle.dumps(None)


def _write_stream_reply(
    out: BinaryIO, rid: int, kind: int, data: bytes = b"", size: int = 0, slot: int = 0
) -> None:
    """Send a streamed body's head (``data``: the pickle of its headers, of a ServiceError
    or of None), a piece (``size`` bytes in ``slot``), its end or its failure."""
    out.write(_REPLY.pack(rid, len(data), size, kind == PIECE, kind, slot) + data)
    out.flush()


class _SlotWriter:
    """A streamed body's pieces packed into full slots of its window, each sent as it fills;
    a slot used before is waited for (the API hands each back as soon as it copied it)."""

    def __init__(
        self,
        out: BinaryIO,
        stdin: BinaryIO,
        memory: mmap.mmap,
        rid: int,
        window: tuple[int, ...],
        deferred: deque[Any],
    ) -> None:
        self.out, self.stdin, self.memory, self.rid = out, stdin, memory, rid
        self.free = list(window)
        self.deferred = deferred
        self.slot: int | None = None
        self.used = 0

    def write(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk).cast("B")
        while len(view):
            if self.slot is None:
                self.slot, self.used = self._take(), 0
            part = view[: SLOT_BYTES - self.used]
            start = self.slot * SLOT_BYTES + self.used
            self.memory[start : start + len(part)] = part
            self.used += len(part)
            view = view[len(part) :]
            if self.used == SLOT_BYTES:
                self.flush()

    def flush(self) -> None:
        if self.slot is not None and self.used:
            _write_stream_reply(self.out, self.rid, PIECE, size=self.used, slot=self.slot)
            self.slot = None

    def _take(self) -> int:
        while not self.free:
            frame = _read_frame(self.stdin)  # EOFError: the API is gone
            rid, slot, request = frame
            if request is None:
                if rid == self.rid:
                    self.free.append(slot)
            else:  # a request: answered after this body
                self.deferred.append(frame)
        return self.free.pop(0)


def _serve_stream(
    out: BinaryIO,
    stdin: BinaryIO,
    memory: mmap.mmap,
    settings: Settings,
    frame: tuple[int, tuple[int, ...], bytes],
    deferred: deque[Any],
) -> None:
    """Compute a request to stream: send its head, then its body through its window."""
    rid, window, request = frame
    try:
        spec, checked, fmt = pickle.loads(request)
        with budget.active(budget.Budget(settings.compute_max_seconds)):
            computed = service.compute(spec, settings, service.Checked(*checked))
    except ServiceError as exc:  # a 4xx: the API answers it
        _write_stream_reply(out, rid, HEAD, _error_meta(exc))
        return
    except Exception:
        log.exception("computing a request failed; the API computes it itself")
        _write_stream_reply(out, rid, HEAD, pickle.dumps(None))
        return
    _write_stream_reply(out, rid, HEAD, pickle.dumps(about(computed)))
    writer = _SlotWriter(out, stdin, memory, rid, window, deferred)
    try:
        for chunk in formats.stream(computed, fmt):
            writer.write(chunk)
        writer.flush()
    except (EOFError, BrokenPipeError):
        raise
    except Exception:
        log.exception("rendering a streamed body failed; the API renders the rest itself")
        _write_stream_reply(out, rid, FAILED)
        return
    _write_stream_reply(out, rid, END)


def main() -> None:
    """The child: read the settings, warm up, then answer requests until stdin ends."""
    import torch

    from service import memory
    from service.schedules import warmup

    # Ctrl-C, or a SIGTERM to the whole process group (systemd's default), is the API's to
    # handle: it closes our stdin when it stops, and we exit then
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what a library prints goes to stderr, never into the frames
    stdin = sys.stdin.buffer
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"compute process {os.getpid()}: %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings, fd, size = _read_frame(stdin)
    except EOFError:
        return
    slots = mmap.mmap(fd, size)
    os.close(fd)
    bind_settings(settings)  # what current_settings() says while computing
    torch.set_num_threads(settings.torch_threads)
    memory.tune_malloc(settings.malloc_retain_mb)
    warmup.warm_up(settings)
    gc.collect()
    gc.freeze()
    _write_reply(out, _READY_ID, None, None, 0)
    deferred: deque[Any] = deque()  # requests read while a body was streamed
    while True:
        try:
            frame = deferred.popleft() if deferred else _read_frame(stdin)
            rid, slot, request = frame
            if request is None:  # a streamed body's slot handed back after its end
                continue
            if isinstance(slot, tuple):
                _serve_stream(out, stdin, slots, settings, frame, deferred)
                continue
        except (EOFError, BrokenPipeError):
            return
        entry: cache.Entry | ServiceError | None
        try:
            spec, checked, fmt = pickle.loads(request)
            entry = _compute_entry(spec, settings, service.Checked(*checked), fmt)
        except ServiceError as exc:  # a 4xx: the API answers it
            entry = exc
        except Exception:  # the API computes it again: its answer is its own (a 500)
            log.exception("computing a request failed; the API computes it itself")
            entry = None
        try:
            _write_reply(out, rid, entry, slots, slot)
        except BrokenPipeError:
            return


if __name__ == "__main__":
    main()
