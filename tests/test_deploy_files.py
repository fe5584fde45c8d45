"""No Docker engine runs here: the Dockerfile and compose file are checked by reading them."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_builds_a_slim_cpu_image_that_runs_as_a_user():
    instructions = dockerfile_instructions()
    args = dict(
        value.split("=", 1) for kind, value in instructions if kind == "ARG" and "=" in value
    )
    assert args["BASE_IMAGE"].startswith("python:3.11-slim")
    assert args["TORCH_INDEX_URL"].endswith("/cpu")
    froms = [value for kind, value in instructions if kind == "FROM"]
    assert froms == ["${BASE_IMAGE}"]
    runs = " ".join(value for kind, value in instructions if kind == "RUN")
    assert "torch==2.13.0" in runs and "${TORCH_INDEX_URL}" in runs
    users = [value for kind, value in instructions if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(kind == "HEALTHCHECK" and "/healthz" in value for kind, value in instructions)
    assert ("EXPOSE", "8000") in instructions
    cmd = next(value for kind, value in instructions if kind == "CMD")
    assert "service.main:app" in cmd and "0.0.0.0" in cmd
    assert any(kind == "VOLUME" and "/data" in value for kind, value in instructions)


def test_compose_runs_the_service_with_its_port_healthcheck_and_volume():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    api = compose["services"]["api"]
    assert api["build"]["context"] == "."
    assert "8000:8000" in api["ports"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    volume, target = api["volumes"][0].split(":")
    assert target == api["environment"]["LRS_DATA_DIR"] == "/data"
    assert volume in compose["volumes"]


def test_the_image_installs_the_same_torch_the_project_pins():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"torch==2\.13\.0"', pyproject)


def test_the_readme_documents_every_setting():
    from service.settings import Settings

    readme = (ROOT / "README.md").read_text()
    names = [
        "DATABASE_URL" if name == "database_url" else f"LRS_{name.upper()}"
        for name in Settings.model_fields
    ]
    assert [n for n in names if f"`{n}`" not in readme] == []


def test_the_scale_profile_has_replicas_workers_redis_postgres_and_a_shared_volume():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    scaled = {n: s for n, s in services.items() if "scale" in s.get("profiles", [])}
    assert set(scaled) == {"api-scaled", "worker", "redis", "db"}
    api, worker = scaled["api-scaled"], scaled["worker"]
    assert api["deploy"]["replicas"] >= 2
    assert worker["command"][:4] == ["celery", "-A", "service.jobs.celery_app", "worker"]
    env = api["environment"]
    assert env["LRS_JOB_EXECUTOR"] == "celery" and env["LRS_CELERY_BROKER_URL"].startswith(
        "redis://redis:"
    )
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://") and "@db:" in env["DATABASE_URL"]
    assert worker["environment"] == env  # the same store, broker and data directory
    for service in scaled.values():  # every one of them has a healthcheck
        assert service["healthcheck"]["test"]
    shared = {v.split(":")[0] for v in api["volumes"]} & {
        v.split(":")[0] for v in worker["volumes"]
    }
    assert shared and shared <= set(compose["volumes"])
    for name in ("api-scaled", "worker"):
        assert set(scaled[name]["depends_on"]) == {"db", "redis"}
        assert all(d["condition"] == "service_healthy" for d in scaled[name]["depends_on"].values())
