"""POST /v1/schedules/batch (a slot per spec) and the schedule cache (ETag, 304, LRU)."""

import sys

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.schedules.cache import ENTRY_OVERHEAD, Entry, ResultCache
from service.settings import Settings
from tests.schedules.test_caveats import assert_schedule_result

COSINE = {"scheduler": {"type": "CosineAnnealingLR", "T_max": 50}, "steps": 100}


def batch(client, requests):
    return client.post("/v1/schedules/batch", json={"requests": requests})


def test_each_spec_gets_the_body_compute_would_return(client):
    step = {"scheduler": {"type": "StepLR", "step_size": 3}, "steps": 10, "engine": "torch"}
    r = batch(client, [COSINE, step])
    assert r.status_code == 200, r.text
    slots = r.json()["results"]
    assert [s["status"] for s in slots] == [200, 200]
    for slot, spec in zip(slots, [COSINE, step], strict=True):
        alone = client.post("/v1/schedules/compute", json=spec).json()
        assert slot["result"] == alone
        assert_schedule_result(alone)


def test_a_bad_spec_fails_only_its_slot(client):
    onecycle = {"scheduler": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 3}, "steps": 9}
    r = batch(client, [COSINE, {"scheduler": {"type": "StepLR"}, "steps": 3}, onecycle])
    assert r.status_code == 200
    ok, invalid, refused = r.json()["results"]
    assert ok["status"] == 200
    assert invalid["status"] == 422
    assert invalid["problem"]["errors"][0]["loc"] == [
        "body",
        "requests",
        1,
        "scheduler",
        "step_size",
    ]
    assert refused["status"] == 422
    assert "Tried to step 4 times" in refused["problem"]["detail"]
    assert refused["problem"]["errors"][0]["loc"] == ["body", "requests", 2, "scheduler"]
    assert refused["problem"]["type"].endswith("/invalid-spec")


def test_plateau_in_a_batch_is_scanned_like_alone(client):
    plateau = {
        "scheduler": {"type": "ReduceLROnPlateau", "patience": 0},
        "steps": 3,
        "metrics": [1.0, 1.0],
    }
    other = {**plateau, "metrics": [1.0, 0.5]}
    slots = batch(client, [plateau, other, plateau]).json()["results"]
    assert [s["result"]["engine"] for s in slots] == ["vectorized"] * 3
    for body, slot in zip([plateau, other, plateau], slots, strict=True):
        alone = client.post("/v1/schedules/compute", json={**body, "engine": "torch"}).json()
        assert slot["result"]["lr"] == alone["lr"]
    assert slots[0]["result"]["lr"] != slots[1]["result"]["lr"]


def test_batch_size_is_limited(client, settings):
    r = batch(client, [COSINE] * (settings.batch_max_specs + 1))
    assert r.status_code == 422
    assert "LRS_BATCH_MAX_SPECS" in r.json()["detail"]
    assert batch(client, []).status_code == 422


def test_batch_total_points_are_limited(tmp_path):
    settings = Settings(data_dir=tmp_path, batch_max_points=150)
    with TestClient(create_app(settings)) as small:
        slots = batch(small, [COSINE, COSINE]).json()["results"]
    assert [s["status"] for s in slots] == [200, 422]
    assert "LRS_BATCH_MAX_POINTS" in slots[1]["problem"]["detail"]


# --------------------------------------------------------------------------- cache


def test_etag_is_strong_and_stable_across_equivalent_specs(client):
    a = client.post("/v1/schedules/compute", json=COSINE)
    explicit = {**COSINE, "optimizer": {"type": "SGD", "lr": 0.1}, "engine": "auto"}
    b = client.post("/v1/schedules/compute", json=explicit)
    assert a.headers["etag"] == b.headers["etag"]
    assert a.headers["etag"].startswith('"') and not a.headers["etag"].startswith("W/")
    assert a.headers["cache-control"].startswith("public, max-age=")
    other = client.post("/v1/schedules/compute", json={**COSINE, "steps": 101})
    assert other.headers["etag"] != a.headers["etag"]
    csv = client.post("/v1/schedules/compute?format=csv", json=COSINE)
    assert csv.headers["etag"] != a.headers["etag"]


def test_if_none_match_gets_304_without_a_body(client):
    first = client.post("/v1/schedules/compute", json=COSINE)
    etag = first.headers["etag"]
    for header in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        r = client.post("/v1/schedules/compute", json=COSINE, headers={"If-None-Match": header})
        assert r.status_code == 304
        assert r.content == b""
        assert r.headers["etag"] == etag
    r = client.post("/v1/schedules/compute", json=COSINE, headers={"If-None-Match": '"x"'})
    assert r.status_code == 200


def test_repeats_are_served_from_the_cache(client):
    spec = {**COSINE, "steps": 77}
    first = client.post("/v1/schedules/compute", json=spec)
    again = client.post("/v1/schedules/compute", json=spec)
    assert first.headers["x-cache"] == "miss"
    assert again.headers["x-cache"] == "hit"
    assert again.content == first.content
    assert again.headers["x-engine"] == first.headers["x-engine"]
    get = client.get("/v1/schedules/CosineAnnealingLR?T_max=50&steps=77")
    assert get.headers["etag"] == first.headers["etag"]
    assert get.headers["x-cache"] == "hit"


def test_errors_are_not_cached(client):
    bad = {"scheduler": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 3}, "steps": 9}
    r = client.post("/v1/schedules/compute", json=bad)
    assert r.status_code == 422
    assert "etag" not in r.headers


def entry(size: int) -> Entry:
    return Entry(body=b"x" * size, media_type="application/json", headers={})


def test_lru_keeps_within_its_byte_budget():
    # every entry costs its body, its key and the overhead an entry really holds
    each = ENTRY_OVERHEAD + 1 + 40
    cache = ResultCache(max_bytes=2 * each + 10)
    cache.put("a", entry(40))
    cache.put("b", entry(40))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", entry(40))
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert cache.size == 2 * each
    cache.put("huge", entry(2 * each))
    assert cache.get("huge") is None and len(cache) == 2
    cache.put("a", entry(10))
    assert cache.size == 2 * each - 30


def test_tiny_entries_count_their_real_memory():
    import tracemalloc

    cache = ResultCache(max_bytes=1 << 30)
    keys = [f"{i:064x}" for i in range(2000)]
    bodies = [bytes([i % 256]) * 300 for i in range(2000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key, body in zip(keys, bodies, strict=True):
            cache.put(key, Entry(body, "application/json", {"X-Engine": "torch"}))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # what the budget counts covers what the entries hold (the keys included)
    assert held + sum(map(sys.getsizeof, keys)) <= cache.size


@pytest.mark.parametrize("fmt", ["json", "csv", "npy"])
def test_every_format_is_cached_and_validated(client, fmt):
    spec = {**COSINE, "steps": 33}
    first = client.post(f"/v1/schedules/compute?format={fmt}", json=spec)
    again = client.post(
        f"/v1/schedules/compute?format={fmt}",
        json=spec,
        headers={"If-None-Match": first.headers["etag"]},
    )
    assert first.status_code == 200 and again.status_code == 304
    assert client.post(f"/v1/schedules/compute?format={fmt}", json=spec).content == first.content


def test_a_stack_larger_than_a_block_answers_each_spec_as_alone(client):
    """250 specs of 5k steps that stack (one structure, their lrs apart): 1.25M values,
    evaluated in blocks of STACK_VALUES (209 programs, then 41); each slot, on either side of
    the block border, is the body compute returns for its spec alone, value for value."""
    from service.schedules.vectorized import batch as stacking

    steps = 5000
    rows = stacking.STACK_VALUES // steps
    assert rows < 250
    specs = [
        {
            "optimizer": {"type": "SGD", "lr": 0.1 + i * 1e-4},
            "scheduler": {"type": "CosineAnnealingLR", "T_max": 4000, "eta_min": 1e-5},
            "steps": steps,
        }
        for i in range(250)
    ]
    blocks: list[int] = []
    evaluate = stacking._evaluate_block

    def spy(programs, k):
        blocks.append(len(programs))
        return evaluate(programs, k)

    stacking._evaluate_block = spy
    try:
        r = batch(client, specs)
    finally:
        stacking._evaluate_block = evaluate
    assert r.status_code == 200
    assert blocks == [rows, 250 - rows]  # stacked, in two blocks
    slots = r.json()["results"]
    for i in (0, 1, rows - 1, rows, rows + 1, 249):
        alone = client.post("/v1/schedules/compute", json=specs[i]).json()
        assert slots[i]["status"] == 200 and slots[i]["result"] == alone, i
