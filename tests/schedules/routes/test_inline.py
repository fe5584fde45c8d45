"""LRS_COMPUTE_INLINE_MAX_COST: cheap schedules computed on the event loop answer exactly what
a compute thread answers, errors included."""

import itertools

from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings

SPEC = {
    "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
    "scheduler": {"type": "CosineAnnealingLR", "T_max": 9900},
    "warmup": {"type": "linear", "steps": 100, "start_factor": 0.0},
    "steps": 10_000,
}


def test_schedules_computed_on_the_event_loop_match_the_compute_threads(client, tmp_path):
    settings = Settings(data_dir=tmp_path, compute_inline_max_cost=2_000_000)
    with TestClient(create_app(settings)) as inline:
        for query in ("", "?format=csv", "?format=npy"):
            here = inline.post(f"/v1/schedules/compute{query}", json=SPEC)
            there = client.post(f"/v1/schedules/compute{query}", json=SPEC)
            assert here.status_code == there.status_code == 200, here.text[:300]
            assert here.content == there.content, query
            assert here.headers["etag"] == there.headers["etag"]
            assert here.headers["x-engine"] == "vectorized"
        again = inline.post("/v1/schedules/compute?format=npy", json=SPEC)
        assert again.headers["x-cache"] == "hit" and again.content == here.content
        bad = {**SPEC, "sample": {"at": [0, 10_000]}}  # refused inside the computation
        here, there = (c.post("/v1/schedules/compute", json=bad) for c in (inline, client))
        assert here.status_code == there.status_code == 422
        assert here.headers["content-type"].startswith("application/problem+json")
        assert here.json()["detail"] == there.json()["detail"]


def test_requests_computed_on_the_event_loop_let_it_run_its_other_callbacks(monkeypatch):
    """Requests that arrive together are not all computed back to back: once a slice of
    inline computing has run, the next waits for the loop's next turn (its timers and
    sockets), and every request is still answered."""
    import asyncio
    from types import SimpleNamespace

    from service.schedules.routes import running

    monkeypatch.setattr(running, "INLINE_SLICE_S", 1e-9)  # one computation per turn
    request = SimpleNamespace(
        app=SimpleNamespace(state=SimpleNamespace(settings=Settings(compute_max_seconds=5)))
    )
    order: list[str] = []

    async def main() -> list[int]:
        async def ticks() -> None:
            for _ in range(6):
                order.append("tick")
                await asyncio.sleep(0)

        def work(i: int) -> int:
            order.append(f"compute {i}")
            return i

        ticker = asyncio.ensure_future(ticks())
        results = await asyncio.gather(
            *(running.run_inline(request, lambda i=i: work(i)) for i in range(5))
        )
        await ticker
        return list(results)

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    computed = [i for i, step in enumerate(order) if step.startswith("compute")]
    assert len(computed) == 5
    # between any two computations the loop ran something else (here: the ticker)
    assert all(b - a > 1 for a, b in itertools.pairwise(computed)), order
