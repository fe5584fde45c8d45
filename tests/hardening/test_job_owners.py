"""With API keys, a key lists and reaches only its own jobs, on the real server (uvicorn on a
free port) on SQLite and on PostgreSQL: the listing, its pages and status filter, a job by
id, its events and artifacts; without a key, 401; jobs submitted while the service had no
keys belong to no key (reachable by id, in no listing)."""

import hashlib
import os
import time
from collections.abc import Iterator

import pytest

from service.jobs.store import Store, sqlite_url
from tests.jobs.support import postgres_available

from .conftest import FINISHED, QUICK, Server, serving

KEY_A, KEY_B = "owner-tests-key-a-5d1e", "owner-tests-key-b-83f0"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def keyed(request, tmp_path_factory) -> Iterator[Server]:
    """A server with keys A and B (its own tables, dropped afterwards)."""
    if request.param == "postgresql" and not postgres_available():
        message = "PostgreSQL is not reachable on 127.0.0.1:5432"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must test the PostgreSQL store")
        pytest.skip(message)
    extra = {"LRS_API_KEYS": f"{digest(KEY_A)},{digest(KEY_B)}"}
    with serving(tmp_path_factory.mktemp(f"keyed-{request.param}"), request.param, extra) as server:
        yield server


def _store(server: Server) -> Store:
    return Store(server.database_url or sqlite_url(server.data_dir), server.prefix)


def _wait(client, job_id: str, key: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=bearer(key)).json()
        if job["status"] in FINISHED:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def _listing(client, key: str | None, **params) -> list[str]:
    """Every page of GET /v1/jobs for ``key``: the ids in order."""
    headers = bearer(key) if key else {}
    ids: list[str] = []
    token = None
    while True:
        query = {**params, **({"page_token": token} if token else {})}
        r = client.get("/v1/jobs", params=query, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        ids += [j["id"] for j in body["jobs"]]
        token = body["next_page_token"]
        if token is None:
            return ids


def test_a_key_lists_and_reaches_only_its_own_jobs(keyed):
    with keyed.client() as client:
        # jobs submitted over HTTP: two of A's (one cancelled), one of B's
        a_done = client.post("/v1/jobs", json=QUICK, headers=bearer(KEY_A)).json()["id"]
        b_done = client.post("/v1/jobs", json=QUICK, headers=bearer(KEY_B)).json()["id"]
        assert _wait(client, a_done, KEY_A)["status"] == "succeeded"
        assert _wait(client, b_done, KEY_B)["status"] == "succeeded"
        # many more straight into the store, interleaved, for the pages; one without a key
        store = _store(keyed)
        try:
            extra_a, extra_b = [], []
            for k in range(12):
                owner = digest(KEY_A) if k % 3 else digest(KEY_B)
                record, _ = store.create({"epochs": 1}, "h", client="ip:test", owner=owner)
                status = "cancelled" if k % 2 else "failed"
                assert store.finish(record.id, status, from_status=("queued",))
                (extra_a if k % 3 else extra_b).append((record.id, status))
            legacy, _ = store.create({"epochs": 1}, "h", client="ip:test")
            assert store.finish(legacy.id, "failed", from_status=("queued",))
        finally:
            store.dispose()
        mine_a = [i for i, _ in reversed(extra_a)] + [a_done]
        mine_b = [i for i, _ in reversed(extra_b)] + [b_done]

        # no key: 401 on the listing and on every route naming a job
        r = client.get("/v1/jobs")
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
        assert "Authorization: Bearer" in r.json()["detail"]
        for path in (f"/v1/jobs/{a_done}", f"/v1/jobs/{a_done}/events"):
            assert client.get(path).status_code == 401, path
        assert client.get("/v1/jobs", headers=bearer("made-up")).status_code == 401

        # each key lists exactly its own, newest first, over pages of 2 (and of 100)
        assert _listing(client, KEY_A, page_size=2) == mine_a
        assert _listing(client, KEY_B, page_size=2) == mine_b
        assert _listing(client, KEY_A, page_size=100) == mine_a
        # the status filter keeps to the key's jobs
        for status in ("cancelled", "failed", "succeeded"):
            expected = [i for i, s in reversed(extra_a) if s == status]
            expected += [a_done] if status == "succeeded" else []
            assert _listing(client, KEY_A, status=status, page_size=1) == expected, status
        # a page token taken from A's listing shows B only B's jobs
        first = client.get("/v1/jobs", params={"page_size": 1}, headers=bearer(KEY_A)).json()
        token = first["next_page_token"]
        r = client.get("/v1/jobs", params={"page_size": 100, "page_token": token},
                       headers=bearer(KEY_B))  # fmt: skip
        assert r.status_code == 200
        assert {j["id"] for j in r.json()["jobs"]} <= set(mine_b)

        # another key's job by id is a 404 exactly like a job that does not exist
        absent = "0" * 32
        for path in ("", "/events", "/artifacts/model.pt", "/artifacts/metrics.json"):
            theirs = client.get(f"/v1/jobs/{a_done}{path}", headers=bearer(KEY_B))
            assert theirs.status_code == 404, path
            assert theirs.headers["content-type"] == "application/problem+json"
            assert theirs.json()["detail"] == f"no job {a_done!r}"
            nobody = client.get(f"/v1/jobs/{absent}", headers=bearer(KEY_B)).json()["detail"]
            assert nobody == f"no job {absent!r}"
        assert client.head(f"/v1/jobs/{a_done}", headers=bearer(KEY_B)).status_code == 404
        assert client.post(f"/v1/jobs/{a_done}/cancel", headers=bearer(KEY_B)).status_code == 404
        assert client.delete(f"/v1/jobs/{a_done}", headers=bearer(KEY_B)).status_code == 404
        # the owner reaches all of it
        mine = client.get(f"/v1/jobs/{a_done}", headers=bearer(KEY_A))
        assert mine.status_code == 200 and mine.json()["status"] == "succeeded"
        events = client.get(f"/v1/jobs/{a_done}/events", headers=bearer(KEY_A))
        assert events.status_code == 200 and "event: done" in events.text
        model = client.get(f"/v1/jobs/{a_done}/artifacts/model.pt", headers=bearer(KEY_A))
        assert model.status_code == 200 and model.content[:2] == b"PK"
        # a NUL in an id is a 404 with a key too (PostgreSQL refuses NUL in text)
        assert client.get("/v1/jobs/%00", headers=bearer(KEY_A)).status_code == 404

        # a job of no key (made while the service had none): any key by id, no listing
        for key in (KEY_A, KEY_B):
            assert client.get(f"/v1/jobs/{legacy.id}", headers=bearer(key)).status_code == 200
            assert legacy.id not in _listing(client, key, page_size=100)

        # an Idempotency-Key used by A is refused to B, before the spec is compared
        headers = {"Idempotency-Key": f"owners-{a_done}"}
        first = client.post("/v1/jobs", json=QUICK, headers={**headers, **bearer(KEY_A)})
        assert first.status_code == 202
        other_spec = {**QUICK, "epochs": 2}
        again = client.post("/v1/jobs", json=other_spec, headers={**headers, **bearer(KEY_B)})
        assert again.status_code == 403 and "another API key" in again.json()["detail"]
        replay = client.post("/v1/jobs", json=QUICK, headers={**headers, **bearer(KEY_A)})
        assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]
        _wait(client, first.json()["id"], KEY_A)

        # deleting is the owner's: then gone for everyone
        assert client.delete(f"/v1/jobs/{a_done}", headers=bearer(KEY_A)).status_code == 204
        assert client.get(f"/v1/jobs/{a_done}", headers=bearer(KEY_A)).status_code == 404
        assert a_done not in _listing(client, KEY_A, page_size=100)


def test_a_replayed_idempotency_key_of_a_job_owned_in_the_old_owners_table_is_refused(tmp_path):
    """An earlier version's replica (a rolling upgrade) kept a job's owner only in the old
    owners table: another key replaying its Idempotency-Key is refused (403) as it is for a
    job with the owner in its own column, and learns nothing of the job."""
    import json

    import sqlalchemy as sa
    from fastapi.testclient import TestClient

    from service.jobs import specs as job_specs
    from service.main import create_app
    from service.settings import Settings

    keys = f"{digest(KEY_A)},{digest(KEY_B)}"
    settings = Settings(data_dir=tmp_path, api_keys=keys, job_workers=1)
    with TestClient(create_app(settings)) as client:
        store = client.app.state.jobs.store
        body = job_specs.JobSpec.model_validate({"epochs": 1}).model_dump(mode="json")
        spec_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        record, _ = store.create(body, spec_hash, "idem-old-owner", "testclient", None, None)
        with store.engine.begin() as conn:
            conn.execute(sa.insert(store.owners).values(job_id=record.id, key_hash=digest(KEY_A)))
        assert client.get(f"/v1/jobs/{record.id}", headers=bearer(KEY_B)).status_code == 404
        for spec in ({"epochs": 1}, {"epochs": 2}):
            replay = client.post(
                "/v1/jobs",
                json=spec,
                headers={**bearer(KEY_B), "Idempotency-Key": "idem-old-owner"},
            )
            assert replay.status_code == 403, replay.text
            assert record.id not in replay.text
        mine = client.post(
            "/v1/jobs",
            json={"epochs": 1},
            headers={**bearer(KEY_A), "Idempotency-Key": "idem-old-owner"},
        )
        assert mine.status_code == 202 and mine.json()["id"] == record.id
