"""A streamed body's pieces are made one pull ahead of what is sent (the next JSON chunk is
serialized while the client reads the one before), never two pulls at once, and a body
ended early waits for the pull in flight so its iterator can be closed."""

import asyncio
import threading
import time

from service import streaming

PIECE = b"x" * (streaming.PULL_BYTES + 1)  # one piece per pull


class Source:
    """An iterator of ``count`` large pieces that notes each one made, and fails if it is
    advanced from two threads at once."""

    def __init__(self, count: int, gate: threading.Event | None = None) -> None:
        self.count = count
        self.made = 0
        self.made_at: list[float] = []
        self.gate = gate
        self._busy = threading.Lock()

    def __iter__(self) -> "Source":
        return self

    def __next__(self) -> bytes:
        if not self._busy.acquire(blocking=False):
            raise AssertionError("advanced by two pulls at once")
        try:
            if self.made == self.count:
                raise StopIteration
            if self.gate is not None and self.made == 1:
                assert self.gate.wait(5)
            time.sleep(0.01)
            self.made += 1
            self.made_at.append(time.monotonic())
            return PIECE[:-1] + bytes([self.made])
        finally:
            self._busy.release()


def test_the_next_pieces_are_made_while_the_ones_before_are_sent():
    source = Source(4)

    async def consume() -> tuple[list[bytes], list[int]]:
        got, made_after_send = [], []
        async for piece in streaming.pulled_in_threadpool(source, "utf-8"):
            got.append(piece)
            await asyncio.sleep(0.1)  # a slow client's send
            made_after_send.append(source.made)
        return got, made_after_send

    got, made_after_send = asyncio.run(consume())
    assert got == [PIECE[:-1] + bytes([i]) for i in range(1, 5)]
    # while piece i was being sent, piece i + 1 was made (without the pull ahead: only when
    # the send was done, [1, 2, 3, 4])
    assert made_after_send == [2, 3, 4, 4]


def test_a_body_ended_early_waits_for_the_pull_in_flight():
    gate = threading.Event()
    source = Source(3, gate)
    generator = (piece for piece in source)

    async def take_one_then_stop() -> None:
        body = streaming.pulled_in_threadpool(generator, "utf-8")
        first = await body.__anext__()
        assert first.endswith(b"\x01")
        asyncio.get_running_loop().call_later(0.2, gate.set)  # the next pull ends in 0.2 s
        started = time.monotonic()
        await body.aclose()
        assert time.monotonic() - started >= 0.15  # waited for the pull in flight

    asyncio.run(take_one_then_stop())
    generator.close()  # not running in a thread any more: closes (no "already executing")
    assert source.made == 2


def test_an_error_mid_body_keeps_its_traceback():
    """An error the body's iterator raises while the piece before is still being sent comes
    out once, with the frames where it was raised."""

    def body():
        yield PIECE
        raise ValueError("mid-body")

    async def consume() -> None:
        async for _ in streaming.pulled_in_threadpool(body(), "utf-8"):
            await asyncio.sleep(0.1)  # the pull after it has failed by now

    try:
        asyncio.run(consume())
    except ValueError as exc:
        frames = []
        tb = exc.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        assert frames[-1] == "body" and "_pull" in frames, frames
    else:
        raise AssertionError("no ValueError")
