"""The Redis-backed schedule cache (LRS_CACHE_URL, Redis database 2): replicas share hits and
ETags; with Redis down the service still answers."""

import random

import pytest
import redis
from fastapi.testclient import TestClient

from service.main import create_app
from service.schedules.shared_cache import NAMESPACE
from service.settings import Settings
from tests.servers import free_port

URL = "redis://127.0.0.1:6379/2"


def _replica(tmp_path, name: str, url: str) -> TestClient:
    return TestClient(create_app(Settings(data_dir=tmp_path / name, job_workers=0, cache_url=url)))


@pytest.fixture
def shared():
    client = redis.Redis.from_url(URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    created: list[str] = []
    yield created
    if created:
        client.delete(*(NAMESPACE + key for key in created))
    client.close()


def test_a_schedule_computed_on_one_replica_is_a_hit_on_another(tmp_path, shared):
    spec = {"scheduler": {"type": "StepLR", "step_size": 3}, "steps": 50,
            "optimizer": {"type": "SGD", "lr": random.uniform(0.01, 0.5)}}  # fmt: skip
    with _replica(tmp_path, "a", URL) as a, _replica(tmp_path, "b", URL) as b:
        first = a.post("/v1/schedules/compute", json=spec)
        assert first.status_code == 200 and first.headers["x-cache"] == "miss"
        etag = first.headers["etag"]
        shared.append(etag.strip('"'))
        second = b.post("/v1/schedules/compute", json=spec)
        assert second.headers["x-cache"] == "hit" and second.headers["etag"] == etag
        assert second.content == first.content
        assert second.headers["x-engine"] == first.headers["x-engine"]
        again = b.post("/v1/schedules/compute", json=spec, headers={"If-None-Match": etag})
        assert again.status_code == 304


def test_with_redis_down_schedules_are_still_served(tmp_path):
    port = free_port()  # nothing listens there
    spec = {"scheduler": {"type": "StepLR", "step_size": 3}, "steps": 20}
    with _replica(tmp_path, "down", f"redis://127.0.0.1:{port}/2") as app:
        for _ in range(2):
            response = app.post("/v1/schedules/compute", json=spec)
            assert response.status_code == 200 and len(response.json()["lr"][0]) == 20
        assert response.headers["x-cache"] == "hit"  # from the in-process cache
