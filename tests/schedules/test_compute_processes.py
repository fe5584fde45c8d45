"""LRS_COMPUTE_PROCESSES: cheap schedules computed and rendered in a child process.

One real server with one compute process for the module; every answer is compared with real
torch stepped here, and with what the event loop itself answers (the in-process app, whose
default is no compute process), byte for byte; the vectorized engine's values are torch's
to its tolerance (its parity suites say where they are bit for bit).
"""

import contextlib
import io
import os
import pickle
import re
import signal
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import torch

from service.errors import InvalidSpec
from service.schedules import cache, compute_pool
from tests.problems import assert_problem
from tests.schedules.helpers import torch_loop
from tests.servers import serve

STREAM_MIN = 1 << 20
LONG = 100_000
"""Steps of a streamed body here (its JSON ~2.7 MB, over the server's LRS_STREAM_MIN_BYTES)."""

PLACE = re.compile(r'^lrs_schedule_compute_place_total\{place="(\w+)"\} ([0-9.e+]+)$', re.M)


def places(base: str) -> dict[str, float]:
    """Return the compute-place counter: requests computed in a process and on the loop."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {place: float(value) for place, value in PLACE.findall(text)}


def children(pid: int) -> list[int]:
    """Return the compute processes of the server ``pid``."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread or child gone while listed
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                    if b"service.schedules.compute_pool" in cmdline:
                        found.append(int(child))
    return found


def spec(lr: float, **scheduler) -> dict:
    return {
        "optimizer": {"type": "SGD", "lr": lr},
        "scheduler": scheduler or {"type": "StepLR", "step_size": 7, "gamma": 0.5},
        "steps": 50,
    }


def wait_for_process(base: str, timeout: float = 120) -> None:
    """Send distinct cheap specs until one is computed in the compute process."""
    deadline = time.monotonic() + timeout
    lr = 0.5
    while places(base).get("process", 0) == 0:
        assert time.monotonic() < deadline, "no request was computed in the compute process"
        lr += 1e-6
        assert httpx.post(f"{base}/v1/schedules/compute", json=spec(lr)).status_code == 200
        time.sleep(0.2)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("compute-processes")
    # bodies over 1 MB are streamed: a 100k-step schedule's is, through the process
    env = {"LRS_COMPUTE_PROCESSES": "1", "LRS_STREAM_MIN_BYTES": str(STREAM_MIN)}
    with serve(data, env) as server:
        wait_for_process(server.url)
        yield server


def test_values_are_torchs_and_the_event_loops_bytes(pooled, client) -> None:
    base = pooled.url
    before = places(base)
    for lr, gamma in ((0.1, 0.5), (0.3, 0.9), (0.07, 0.25)):
        body = spec(lr, type="StepLR", step_size=7, gamma=gamma)
        r = httpx.post(f"{base}/v1/schedules/compute", json=body)
        assert r.status_code == 200 and r.headers["x-cache"] == "miss"
        assert r.headers["x-engine"] == "vectorized"
        expected, _ = torch_loop(
            lambda opt, g=gamma: torch.optim.lr_scheduler.StepLR(opt, 7, g), 50, lr=lr
        )
        # the vectorized engine's closed form: torch's values to its tolerance
        np.testing.assert_allclose(r.json()["lr"], expected, rtol=1e-12, atol=0)
        local = client.post("/v1/schedules/compute", json=body)  # computed on the loop
        assert r.content == local.content
        assert r.headers["etag"] == local.headers["etag"]
        again = httpx.post(f"{base}/v1/schedules/compute", json=body)
        assert again.headers["x-cache"] == "hit" and again.content == r.content
    after = places(base)
    assert after["process"] - before.get("process", 0) == 3
    assert after.get("loop", 0) == before.get("loop", 0)


def test_csv_and_npy_come_from_the_process_too(pooled) -> None:
    base = pooled.url
    body = spec(0.2, type="ExponentialLR", gamma=0.93)
    expected, _ = torch_loop(
        lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, 0.93), 50, lr=0.2
    )
    before = places(base)["process"]
    npy = httpx.post(f"{base}/v1/schedules/compute?format=npy", json=body)
    assert npy.status_code == 200 and npy.headers["content-type"] == "application/x-npy"
    np.testing.assert_allclose(np.load(io.BytesIO(npy.content)), expected, rtol=1e-12, atol=0)
    csv = httpx.post(f"{base}/v1/schedules/compute?format=csv", json=body)
    rows = csv.text.strip().splitlines()
    assert rows[0] == "step,lr" and len(rows) == 51
    np.testing.assert_allclose(
        [float(row.split(",")[1]) for row in rows[1:]], expected[0], rtol=1e-12, atol=0
    )
    assert places(base)["process"] - before == 2


def test_a_spec_failing_while_computed_gets_the_loops_422(pooled, client) -> None:
    body = {
        "scheduler": {"type": "LambdaLR", "lr_lambda": "1 / (epoch - 3)"},
        "steps": 10,
        "engine": "vectorized",
    }
    before, pids = places(pooled.url), children(pooled.pid)
    r = httpx.post(f"{pooled.url}/v1/schedules/compute", json=body)
    problem = assert_problem(r, 422, None, "epoch 3", "division by zero")
    local = client.post("/v1/schedules/compute", json=body)
    assert local.status_code == 422 and local.json() == problem
    after = places(pooled.url)
    # the process raised it (and lives on): the loop did not compute it again
    assert after["process"] == before["process"] + 1
    assert after.get("loop", 0) == before.get("loop", 0)
    assert children(pooled.pid) == pids


def cosine(lr: float, steps: int = LONG) -> dict:
    return {
        "optimizer": {"type": "SGD", "lr": lr},
        "scheduler": {"type": "CosineAnnealingLR", "T_max": steps, "eta_min": 0.001},
        "steps": steps,
    }


def test_a_long_body_is_streamed_from_the_process(pooled, client) -> None:
    """A body too long to cache is computed and rendered in the process and streamed from
    there: torch's values, the event loop's bytes, in JSON, CSV and npy."""
    base = pooled.url
    expected, _ = torch_loop(
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, LONG, 0.001), LONG, lr=0.3
    )
    before = places(base)
    for fmt, steps in (("json", LONG), ("csv", LONG), ("npy", 2 * LONG)):  # npy: 8 B a step
        body = {**cosine(0.3, steps), "engine": "vectorized"}
        with httpx.stream(
            "POST", f"{base}/v1/schedules/compute?format={fmt}", json=body, timeout=60
        ) as r:
            assert r.status_code == 200, r.read()
            content = r.read()
        assert r.headers["transfer-encoding"] == "chunked" and r.headers["x-cache"] == "bypass"
        assert r.headers["x-engine"] == "vectorized"
        local = client.post(f"/v1/schedules/compute?format={fmt}", json=body)
        assert content == local.content, fmt  # byte for byte what the event loop renders
        assert r.headers["content-type"] == local.headers["content-type"]
        if fmt == "json":
            np.testing.assert_allclose(orjson.loads(content)["lr"], expected, rtol=1e-12, atol=0)
        if fmt == "npy":
            assert np.load(io.BytesIO(content)).shape == (1, 2 * LONG)
    after = places(base)
    assert after["process"] - before["process"] == 3
    assert after.get("loop", 0) == before.get("loop", 0)


def test_a_long_spec_failing_in_the_process_gets_the_loops_422(pooled, client) -> None:
    body = {
        "scheduler": {"type": "LambdaLR", "lr_lambda": "1 / (epoch - 3)"},
        "steps": LONG,
        "engine": "vectorized",
    }
    before = places(pooled.url)
    r = httpx.post(f"{pooled.url}/v1/schedules/compute", json=body, timeout=60)
    problem = assert_problem(r, 422, None, "epoch 3", "division by zero")
    local = client.post("/v1/schedules/compute", json=body)
    assert local.status_code == 422 and local.json() == problem
    assert places(pooled.url)["process"] == before["process"] + 1


def test_a_client_that_stops_reading_does_not_hold_the_process_up(pooled) -> None:
    """The API copies each piece out as it comes: the process goes on to other requests
    while a client reads nothing of its streamed body."""

    base = pooled.url
    port = int(base.rsplit(":", 1)[1])
    payload = orjson.dumps(cosine(0.41, 10 * LONG))  # ~27 MB of JSON
    stalled = []
    opened = places(base)["process"]
    for _ in range(2):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            b"POST /v1/schedules/compute HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode()
            + b"\r\n\r\n"
            + payload
        )
        assert sock.recv(12).startswith(b"HTTP/1.1 200")
        stalled.append(sock)
    try:
        before = places(base)["process"]
        assert before == opened + 2  # both bodies come from the process
        started = time.monotonic()
        for i in range(5):
            r = httpx.post(f"{base}/v1/schedules/compute", json=spec(2.5 + i * 1e-6), timeout=10)
            assert r.status_code == 200
        assert places(base)["process"] == before + 5  # all computed in the process
        assert time.monotonic() - started < 5
    finally:
        for sock in stalled:
            sock.close()


def test_a_killed_process_is_replaced_and_nothing_fails(pooled) -> None:
    base = pooled.url
    (first,) = children(pooled.pid)
    computed_here = places(base).get("loop", 0)
    os.kill(first, signal.SIGKILL)
    # while it is gone (and its successor starts), the event loop computes: every answer 200
    lr = 0.9
    deadline = time.monotonic() + 120
    while True:
        lr += 1e-6
        r = httpx.post(f"{base}/v1/schedules/compute", json=spec(lr))
        assert r.status_code == 200, r.text
        now = children(pooled.pid)
        if now and now != [first]:
            break
        assert time.monotonic() < deadline, "no compute process was started again"
        time.sleep(0.1)
    assert places(base).get("loop", 0) > computed_here
    before = places(base)["process"]
    wait_for_process_again(base, before)
    assert "compute process 0 exited" in pooled.log_text()


def wait_for_process_again(base: str, before: float, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    lr = 1.5
    while places(base)["process"] == before:
        assert time.monotonic() < deadline, "the new compute process computed nothing"
        lr += 1e-6
        assert httpx.post(f"{base}/v1/schedules/compute", json=spec(lr)).status_code == 200
        time.sleep(0.2)


def test_stopping_the_server_stops_its_process(pooled) -> None:
    """Last of the module's server tests: it stops the module's server."""
    wait_for_process_again(pooled.url, places(pooled.url)["process"])
    (child,) = children(pooled.pid)
    exits = pooled.log_text().count("compute process 0 exited")
    stopped = time.monotonic()
    pooled.process.send_signal(signal.SIGTERM)  # a graceful stop: its stdin is closed
    pooled.process.wait(30)
    while alive(child):
        # the pool kills a child still there 5 s after closing its stdin: this one left
        assert time.monotonic() - stopped < 4.5, "the compute process did not exit by itself"
        time.sleep(0.05)
    # it ended because its stdin closed: not an exit the pool would have restarted it after
    assert pooled.log_text().count("compute process 0 exited") == exits


def alive(pid: int) -> bool:
    """Return whether the compute process ``pid`` lives (not a zombie)."""
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        return state not in ("Z", "X") and b"compute_pool" in cmdline
    return False


class _Recorder(compute_pool._Child):
    def __init__(self, memory) -> None:
        super().__init__(memory)
        self.ready = True


def _reply(rid: int, entry: cache.Entry | None, memory, slot: int) -> bytes:
    out = io.BytesIO()
    compute_pool._write_reply(out, rid, entry, memory, slot)
    return out.getvalue()


def test_replies_are_read_whole_however_the_pipe_splits_them() -> None:
    """The parent's reader: frames split anywhere (a byte at a time) or several in one read,
    bodies in their slot or on the pipe (larger than a slot), and a failed request's None."""
    import asyncio
    import mmap

    memory = mmap.mmap(-1, compute_pool.MAX_QUEUED * compute_pool.SLOT_BYTES)
    small = cache.Entry(b'{"lr":[0.1]}', "application/json", {"X-Engine": "vectorized"})
    large = cache.Entry(b"x" * (compute_pool.SLOT_BYTES + 5), "text/csv", {})
    invalid = InvalidSpec("steps must be positive", loc=("body", "steps"))
    for split in (1, 7, 10**9):
        loop = asyncio.new_event_loop()
        try:
            child = _Recorder(memory)
            futures = {}
            for rid, slot in ((1, 3), (2, 4), (3, 5), (4, 6)):
                child.free.remove(slot)
                child.slot_of[rid] = slot
                futures[rid] = child.pending[rid] = loop.create_future()
            stream = (
                _reply(1, small, memory, 3)
                + _reply(2, large, memory, 4)
                + _reply(3, None, memory, 5)
                + _reply(4, invalid, memory, 6)
            )
            replies = compute_pool._Replies(child, loop.create_future())
            for start in range(0, len(stream), split):
                replies.pipe_data_received(1, stream[start : start + split])
            assert futures[1].result() == small
            assert futures[2].result() == large
            assert futures[3].result() is None
            error = futures[4].result()
            assert isinstance(error, InvalidSpec) and error.detail == invalid.detail
            assert error.errors == invalid.errors
            assert sorted(child.free) == list(range(compute_pool.MAX_QUEUED))
            assert not child.slot_of
        finally:
            loop.close()


def test_streamed_replies_are_pieces_acks_and_a_freed_window() -> None:
    """The parent's side of a streamed body: its head gives the headers, each piece is
    copied out of its slot and the slot handed back (an ack on the child's stdin) at once,
    the end frees the window; frames split at every byte."""
    import asyncio
    import mmap

    memory = mmap.mmap(-1, compute_pool.MAX_QUEUED * compute_pool.SLOT_BYTES)
    size = compute_pool.SLOT_BYTES
    body = bytes(range(256)) * (size * 5 // 2 // 256)  # two full slots and a half

    async def run(split: int) -> None:
        child = _Recorder(memory)
        acks: list[bytes] = []

        class Stdin:
            def is_closing(self) -> bool:
                return False

            def write(self, data: bytes) -> None:
                acks.append(data)

        child.stdin = Stdin()  # type: ignore[assignment]
        window = [child.free.pop() for _ in range(compute_pool.WINDOW)]
        released = []
        stream = compute_pool.Stream(9, window, lambda: released.append(True))
        child.streams[9] = stream
        out = io.BytesIO()
        head = pickle.dumps({"X-Engine": "vectorized"})
        compute_pool._write_stream_reply(out, 9, compute_pool.HEAD, head)
        for piece, slot in ((body[:size], window[0]), (body[size : 2 * size], window[1])):
            memory[slot * size : slot * size + len(piece)] = piece
            compute_pool._write_stream_reply(out, 9, compute_pool.PIECE, size=len(piece), slot=slot)
        rest = body[2 * size :]
        memory[window[2] * size : window[2] * size + len(rest)] = rest
        compute_pool._write_stream_reply(out, 9, compute_pool.PIECE, size=len(rest), slot=window[2])
        compute_pool._write_stream_reply(out, 9, compute_pool.END)
        frames = out.getvalue()
        replies = compute_pool._Replies(child, asyncio.get_running_loop().create_future())
        for start in range(0, len(frames), split):
            replies.pipe_data_received(1, frames[start : start + split])
        assert stream.head.result() == {"X-Engine": "vectorized"}
        memory[: len(memory)] = bytes(len(memory))  # the slots reused: the pieces were copied

        async def never(sent: int):
            raise AssertionError("nothing failed")
            yield b""

        got = b"".join([bytes(p) async for p in stream.pieces(never)])
        assert got == body
        assert len(acks) == 3  # each slot handed back as its piece was read
        assert sorted(child.free) == list(range(compute_pool.MAX_QUEUED)) and not child.streams
        assert released == [True]

    for split in (1, 1000, 10**9):
        asyncio.run(run(split))


def test_a_body_the_process_fails_midway_is_finished_from_the_same_byte() -> None:
    """When the process dies (or fails rendering) after some pieces, the rest is rendered
    here from the byte where its pieces stopped: the client gets the whole body once."""
    import asyncio

    from service.schedules import formats

    whole = b"".join(
        bytes(c) for c in [b'{"steps":', b"[0,1,2]", b',"lr":', b"[0.1,0.2,0.3]", b"}"]
    )
    chunks = [b'{"steps":', memoryview(b"[0,1,2]"), b',"lr":', b"[0.1,0.2,0.3]", b"}"]
    for count in range(len(whole) + 1):
        assert b"".join(bytes(c) for c in formats.skip(iter(chunks), count)) == whole[count:]

    async def run(cut: int) -> bytes:
        stream = compute_pool.Stream(1, [], lambda: None)
        stream.put(whole[:cut])
        stream.put(None)  # the process failed the rest
        asked = []

        async def rest(sent: int):
            asked.append(sent)
            for piece in formats.skip(iter(chunks), sent):
                yield piece

        got = b"".join([bytes(p) async for p in stream.pieces(rest)])
        assert asked == [cut]
        return got

    for cut in (0, 5, len(whole)):
        assert asyncio.run(run(cut)) == whole


def test_a_body_never_iterated_still_frees_its_place() -> None:
    """A response closed before it sent anything (its client left while the head was being
    computed, or its 429 came from the stream cap) gives its estimate back all the same."""
    import asyncio

    async def run() -> list[int]:
        released: list[int] = []
        stream = compute_pool.Stream(1, [], lambda: released.append(1))

        async def rest(sent: int):
            yield b""

        body = stream.pieces(rest)
        await body.aclose()
        stream.put(b"late")  # a piece after it: dropped
        await body.aclose()
        return released

    assert asyncio.run(run()) == [1]


def test_a_stream_whose_pieces_stop_coming_is_reported_stalled() -> None:
    """The watch on a streamed body: each piece gives the child its time again, a silence
    longer than that calls ``stalled`` (the pool kills the child), and an ended body is
    watched no more."""
    import asyncio

    async def run() -> tuple[list[float], list[float]]:
        calls: list[float] = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        stream = compute_pool.Stream(1, [], lambda: None)
        stream.watch(0.5, lambda: calls.append(loop.time() - start))
        for _ in range(3):  # a piece every 0.05 s: never stalled
            await asyncio.sleep(0.05)
            stream.piece_came()
        await asyncio.sleep(1.0)  # silence past 0.5 s: stalled once
        ended: list[float] = []
        other = compute_pool.Stream(2, [], lambda: None)
        other.watch(0.1, lambda: ended.append(1.0))
        other.unwatch()
        await asyncio.sleep(0.2)
        return calls, ended

    calls, ended = asyncio.run(run())
    assert len(calls) == 1 and calls[0] >= 0.65, calls  # 0.15 s of pieces, then 0.5 s
    assert ended == []
