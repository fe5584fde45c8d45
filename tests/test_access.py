"""API keys, rate limits, CORS, HEAD, request ids and access logs, as a client sees them."""

import hashlib
import json
import logging

import pytest
from fastapi.testclient import TestClient

from service import auth
from service.main import create_app
from service.settings import Settings

KEY_A, KEY_B = "key-a-0123456789", "key-b-9876543210"
SMALL = {"type": "noisy_sine", "n": 100, "n_train": 60}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text(f"# team b\n{digest(KEY_B)}\n")
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("keyed"),
        api_keys=digest(KEY_A),
        api_keys_file=keys_file,
        rate_limit_jobs_per_s=0.01,
        rate_limit_jobs_burst=3,
        rate_limit_compute_per_s=0.01,
        rate_limit_compute_burst=2,
        cors_origins="https://dash.example.com",
    )
    with TestClient(create_app(settings)) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_401_without_404_for_another_keys_job_200_with_the_owners(keyed):
    r = keyed.post("/v1/jobs", json={"epochs": 1})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in r.json()["detail"]
    assert keyed.post("/v1/jobs", json={}, headers=bearer("wrong")).status_code == 401

    r = keyed.post("/v1/jobs", json={"epochs": 1, "data": SMALL}, headers=bearer(KEY_A))
    assert r.status_code == 202
    job_id = r.json()["id"]
    # another key (from the keys file) cannot read, follow, cancel, delete or download it:
    # 404, as if absent
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("DELETE", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/artifacts/model.pt"),
    ):
        r = keyed.request(method, path, headers=bearer(KEY_B))
        assert r.status_code == 404, (method, path)
        assert r.json()["detail"] == f"no job {job_id!r}"
        assert keyed.request(method, path).status_code == 401
    r = keyed.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(KEY_A))
    assert r.status_code in (200, 202)
    # the owner reads it; the listing needs a key and shows each key its own jobs only
    assert keyed.get(f"/v1/jobs/{job_id}", headers=bearer(KEY_A)).status_code == 200
    assert keyed.get("/v1/jobs").status_code == 401
    listed = keyed.get("/v1/jobs", headers=bearer(KEY_A)).json()["jobs"]
    assert job_id in [j["id"] for j in listed]
    others = keyed.get("/v1/jobs", headers=bearer(KEY_B)).json()["jobs"]
    assert job_id not in [j["id"] for j in others]
    # the schedules stay open
    assert keyed.get("/v1/schedulers").status_code == 200
    # /v1/info never shows the key digests
    assert "api_keys" not in keyed.get("/v1/info").json()["limits"]


def test_an_idempotency_key_of_another_api_key_is_refused(keyed):
    headers = {"Idempotency-Key": "shared-key-1"}
    first = keyed.post("/v1/jobs", json={"epochs": 1}, headers={**headers, **bearer(KEY_A)})
    assert first.status_code == 202
    again = keyed.post("/v1/jobs", json={"epochs": 1}, headers={**headers, **bearer(KEY_B)})
    assert again.status_code == 403
    assert "another API key" in again.json()["detail"]


def test_rate_limit_429_with_retry_after_after_the_burst(keyed):
    url = "/v1/schedules/StepLR?step_size=3&steps=10"
    statuses = [keyed.get(url, headers=bearer(KEY_B)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    r = keyed.get(url, headers=bearer(KEY_B))
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/problem+json"
    assert int(r.headers["retry-after"]) >= 1
    assert "LRS_RATE_LIMIT_COMPUTE_PER_S" in r.json()["detail"]
    # another key has its own bucket; an invented key does not get a fresh one
    assert keyed.get(url, headers=bearer(KEY_A)).status_code == 200
    assert keyed.get(url).status_code == 200  # the address's bucket (testclient)
    assert keyed.get(url).status_code == 200
    assert keyed.get(url, headers=bearer("made-up-key")).status_code == 429


def test_cors_preflight_from_an_allowed_origin_passes_from_another_fails(keyed):
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization,idempotency-key",
    }
    ok = keyed.options(
        "/v1/schedules/compute", headers={"Origin": "https://dash.example.com", **preflight}
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://dash.example.com"
    assert "POST" in ok.headers["access-control-allow-methods"]
    bad = keyed.options(
        "/v1/schedules/compute", headers={"Origin": "https://evil.example.org", **preflight}
    )
    assert bad.status_code == 400
    assert "access-control-allow-origin" not in bad.headers
    simple = keyed.get("/healthz", headers={"Origin": "https://dash.example.com"})
    assert simple.headers["access-control-allow-origin"] == "https://dash.example.com"
    assert "X-Request-ID" in simple.headers["access-control-expose-headers"]


def test_require_key_for_all_closes_the_schedules_but_not_health(tmp_path):
    settings = Settings(data_dir=tmp_path, api_keys=digest(KEY_A), require_key_for_all=True)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/schedules/StepLR?step_size=3&steps=5").status_code == 401
        r = client.get("/v1/schedules/StepLR?step_size=3&steps=5", headers=bearer(KEY_A))
        assert r.status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_head_answers_every_get_route_with_the_get_headers_and_no_body(client):
    paths = ["/healthz", "/readyz", "/v1/info", "/v1/schedulers", "/v1/jobs", "/metrics",
             "/openapi.json", "/docs", "/v1/schedules/StepLR?step_size=2&steps=4"]  # fmt: skip
    get_routes = {
        route.path
        for route in client.app.routes
        if "GET" in getattr(route, "methods", ()) and "{" not in route.path
    }
    missing = {p for p in get_routes if p not in {q.split("?")[0] for q in paths}}
    assert missing <= {"/docs/oauth2-redirect", "/", "/playground"}, missing
    for path in paths:
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code, path
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
    job = client.post("/v1/jobs", json={"epochs": 1, "data": SMALL}).json()
    assert client.head(f"/v1/jobs/{job['id']}").status_code == 200
    assert client.head("/v1/jobs/nope").status_code == 404


def test_request_id_is_echoed_or_generated_and_logged_as_json(client):
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(logging.getLogger("service.access").handlers[0].formatter)
    logging.getLogger("service.access").addHandler(handler)
    try:
        r = client.get("/v1/schedules/StepLR?step_size=2&steps=4", headers={"X-Request-ID": "r-1"})
        generated = client.get("/healthz").headers["x-request-id"]
        bad = client.get("/healthz", headers={"X-Request-ID": "no spaces allowed"})
    finally:
        logging.getLogger("service.access").removeHandler(handler)
    assert r.headers["x-request-id"] == "r-1"
    assert len(generated) == 32 and bad.headers["x-request-id"] != "no spaces allowed"
    records = [json.loads(line) for line in lines]
    first = records[0]
    assert first["request_id"] == "r-1" and first["route"] == "/v1/schedules/{type}"
    assert first["status"] == 200 and first["engine"] in ("torch", "vectorized")
    assert first["duration_ms"] >= 0 and first["method"] == "GET"
    assert records[1]["request_id"] == generated


def test_the_start_warns_when_listening_beyond_loopback_without_keys():
    assert auth.listening_host(["uvicorn", "service.main:app", "--host", "0.0.0.0"]) == "0.0.0.0"
    assert auth.listening_host(["uvicorn", "--host=::"]) == "::"
    assert auth.listening_host(["uvicorn"], environ={}) == "127.0.0.1"
    warning = auth.exposure_warning("0.0.0.0", frozenset())
    assert warning and "LRS_API_KEYS" in warning and "0.0.0.0" in warning
    assert auth.exposure_warning("0.0.0.0", frozenset({digest(KEY_A)})) is None
    assert auth.exposure_warning("127.0.0.1", frozenset()) is None


def test_a_key_setting_that_is_not_a_digest_is_refused_at_start(tmp_path):
    with pytest.raises(ValueError, match="SHA-256 hex digests"):
        create_app(Settings(data_dir=tmp_path, api_keys="my-plain-key"))
