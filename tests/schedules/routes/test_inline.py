"""LRS_COMPUTE_INLINE_MAX_COST: cheap schedules computed on the event loop answer exactly what
a compute thread answers, errors included."""

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
