"""Issue 15, item 3 for batches: a batch JSON body at the size limits is streamed in chunks,
so the server never holds it whole (at LRS_BATCH_MAX_POINTS it is ~220 MB)."""

import threading
import time

import httpx
import orjson

from service.schedules import batch
from service.settings import Settings

from .conftest import HealthProbe, wait_ready

SPECS = 500
STEPS = 10_000
"""500 × 10k values: half the default LRS_BATCH_MAX_POINTS, ~110 MB of JSON."""


def _items(t_max: int, count: int = SPECS) -> list[dict]:
    """``count`` copies of one spec: stacked as one computation (0.7 s), ~110 MB of JSON."""
    return [{"scheduler": {"type": "CosineAnnealingLR", "T_max": t_max}, "steps": STEPS}] * count


def test_a_large_batch_json_is_streamed_in_bounded_memory(_servers):
    server = wait_ready(_servers["sqlite"])
    peak = {"rss": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["rss"] = max(peak["rss"], server.rss_bytes())
            time.sleep(0.01)

    with httpx.Client(base_url=server.url, timeout=120) as client:
        warm = client.post("/v1/schedules/batch", json={"requests": _items(99, 50)})
        assert warm.status_code == 200  # first-call costs
        before = server.rss_bytes()
        sampler = threading.Thread(target=sample)
        sampler.start()
        size = 0
        tail = b""
        try:
            body = {"requests": _items(100)}
            with (
                HealthProbe(server.url) as probe,
                client.stream("POST", "/v1/schedules/batch", json=body) as r,
            ):
                assert r.status_code == 200, r.read()[:500]
                assert r.headers.get("content-length") is None  # streamed
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    tail = (tail + chunk)[-4096:]
        finally:
            done.set()
            sampler.join()
    grown = (peak["rss"] - before) / 2**20
    print(f"\nbatch JSON {size / 2**20:.0f} MB streamed; server RSS peak +{grown:.0f} MB")
    assert size > 100 << 20 and tail.endswith(b"]}")
    # The lrs themselves are 40 MB (float64). Measured in one process: built whole, this
    # body grew the peak RSS by 195 MB; streamed, by 53 MB (76 MB in the server, with HTTP).
    assert grown < 0.8 * size / 2**20, grown
    assert probe.failures == []


def test_a_streamed_batch_body_is_the_bytes_of_the_whole_one():
    items = [
        {"scheduler": {"type": "StepLR", "step_size": 3}, "steps": 50_000},
        {"scheduler": {"type": "StepLR", "step_size": 0}, "steps": 10},  # a 422 slot
        {"scheduler": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 60_000},
         "steps": 60_000, "include": ["momentum"], "param_groups": [{}, {}]},
        {"scheduler": {"type": "ExponentialLR", "gamma": 0.9}, "steps": 7},
    ]  # fmt: skip
    whole = batch.to_json(items, Settings(stream_min_bytes=1 << 30))
    streamed = batch.to_json(items, Settings(stream_min_bytes=0))
    assert isinstance(whole, bytes) and not isinstance(streamed, bytes)
    chunks = list(streamed)
    assert len(chunks) > 1 and max(map(len, chunks)) < 2 * batch.STREAM_CHUNK_BYTES + (8 << 20)
    assert b"".join(chunks) == whole
    assert [s["status"] for s in orjson.loads(whole)["results"]] == [200, 422, 200, 200]
