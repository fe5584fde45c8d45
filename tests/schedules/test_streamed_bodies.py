"""Streamed schedule bodies (above LRS_STREAM_MIN_BYTES) carry what a real torch loop gives,
in arrays split across many chunks, and the same bytes as the body sent whole."""

import io

import numpy as np
import orjson
import pytest
import torch
from fastapi.testclient import TestClient

from service.main import create_app
from service.schedules import formats
from service.settings import Settings

from .helpers import torch_loop

STEPS = 3000
ONE_CYCLE = {
    "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
    "scheduler": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": STEPS},
    "param_groups": [{"lr": 0.1}, {"lr": 0.05}],
    "include": ["momentum"],
    "steps": STEPS,
    "engine": "torch",  # steps the real scheduler: every value is torch's, bit for bit
}


def _torch_one_cycle() -> tuple[list[list[float]], list[list[float]]]:
    return torch_loop(
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=STEPS),
        STEPS,
        groups=[{"lr": 0.1}, {"lr": 0.05}],
        momentum=0.9,
        record_momentum=True,
    )


@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    """A server that streams every JSON/CSV/npy body, and one that sends them whole."""
    streamed = Settings(data_dir=tmp_path_factory.mktemp("streamed"), stream_min_bytes=0)
    whole = Settings(data_dir=tmp_path_factory.mktemp("whole"))
    with TestClient(create_app(streamed)) as s, TestClient(create_app(whole)) as w:
        yield s, w


@pytest.fixture
def small_chunks(monkeypatch):
    """Arrays split every 256 values (a 3000-step array: 12 chunks, separators between)."""
    monkeypatch.setattr(formats, "CHUNK_VALUES", 256)


def test_a_streamed_json_body_is_the_torch_loop_and_the_whole_body(clients, small_chunks):
    streamed, whole = clients
    r = streamed.post("/v1/schedules/compute", json=ONE_CYCLE)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["x-cache"] == "bypass" and "content-length" not in r.headers
    body = orjson.loads(r.content)
    lrs, moms = _torch_one_cycle()
    assert body["steps"] == list(range(STEPS))
    assert body["lr"] == lrs  # every bit: floats are compared exactly
    assert body["momentum"] == moms
    assert body["summary"][1]["final"] == lrs[1][-1]
    sent_whole = whole.post("/v1/schedules/compute", json=ONE_CYCLE)
    assert sent_whole.headers["x-cache"] == "miss"
    assert int(sent_whole.headers["content-length"]) == len(r.content)
    assert sent_whole.content == r.content


def test_a_streamed_sampled_body_keeps_its_steps(clients, small_chunks):
    streamed, _ = clients
    spec = {**ONE_CYCLE, "sample": {"every": 7}, "include": []}
    r = streamed.post("/v1/schedules/compute", json=spec)
    assert r.status_code == 200 and r.headers["x-cache"] == "bypass"
    body = orjson.loads(r.content)
    lrs, _ = _torch_one_cycle()
    assert body["steps"] == list(range(0, STEPS, 7))
    assert body["lr"] == [[group[i] for i in range(0, STEPS, 7)] for group in lrs]
    assert body["momentum"] is None


def test_a_streamed_npy_body_is_the_torch_loop(clients):
    streamed, _ = clients
    r = streamed.post("/v1/schedules/compute?format=npy", json=ONE_CYCLE)
    assert r.status_code == 200 and r.headers["x-cache"] == "bypass"
    values = np.load(io.BytesIO(r.content))
    lrs, _ = _torch_one_cycle()
    assert values.dtype == np.float64 and values.shape == (2, STEPS)
    assert values.tolist() == lrs


def test_the_cached_steps_keep_within_their_byte_budget(monkeypatch):
    cache = formats._DenseSteps(max_bytes=1 << 20)
    monkeypatch.setattr(formats, "_dense_cache", cache)
    for n in range(1000, 60_000, 1000):  # ~3.5 MB of steps and their JSON in all
        indices = np.arange(n, dtype=np.int64)
        text, _ = formats._dense_steps(indices)
        assert orjson.loads(text) == list(range(n))
        assert cache._bytes <= cache.max_bytes
    assert 0 < len(cache._entries) < 59
    big = np.arange(200_000, dtype=np.int64)  # larger than half the budget: served, not kept
    assert orjson.loads(formats._dense_steps(big)[0])[-1] == 199_999
    assert 200_000 not in cache._entries
    assert formats._dense_steps(np.arange(1, 5001, dtype=np.int64)) is None  # not 0..n-1


def test_steps_known_by_identity_are_only_arrays_that_cannot_change():
    shared = np.arange(5000, dtype=np.int64)
    shared.flags.writeable = False  # the compute's shared 0..n-1 of a length
    for _ in range(2):  # compared once, then known by identity: the same JSON each time
        assert orjson.loads(formats._dense_steps(shared)[0]) == list(range(5000))
    assert formats._dense_cache.verified(shared)
    writable = np.arange(5000, dtype=np.int64)
    assert formats._dense_steps(writable) is not None
    assert not formats._dense_cache.verified(writable)
    writable[10] = 7  # changed after it was found dense: never served the cached steps
    assert formats._dense_steps(writable) is None
    view = shared[:]  # a view of a read-only array does not own its data: compared each time
    assert formats._dense_steps(view) is not None and not formats._dense_cache.verified(view)
