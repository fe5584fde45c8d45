"""LRS_COMPUTE_PROCESSES: cheap schedules computed and rendered in a child process.

One real server with one compute process for the module; every answer is compared with real
torch stepped here, and with what the event loop itself answers (the in-process app, whose
default is no compute process), byte for byte; the vectorized engine's values are torch's
to its tolerance (its parity suites say where they are bit for bit).
"""

import contextlib
import io
import os
import re
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from service.errors import InvalidSpec
from service.schedules import cache, compute_pool
from tests.problems import assert_problem
from tests.schedules.helpers import torch_loop
from tests.servers import serve

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
    with serve(data, {"LRS_COMPUTE_PROCESSES": "1"}) as server:
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
