"""Liveness, readiness and service information."""

import platform
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from service import __version__
from service.deps import SettingsDep
from service.devices import TORCH_VERSION, cuda_available, device_names
from service.errors import PROBLEM_JSON, problem_body

router = APIRouter(tags=["service"])

ReadinessCheck = Callable[[], Awaitable[tuple[bool, str]]]


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: str


class Info(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "service": "lr-schedule-service",
                    "version": "0.1.0",
                    "torch_version": "2.13.0",
                    "python_version": "3.11.7",
                    "cuda_available": False,
                    "devices": ["cpu"],
                    "engines": ["torch", "vectorized"],
                    "limits": {"torch_max_steps": 100000, "max_body_bytes": 1048576},
                }
            ]
        }
    )

    service: str
    version: str
    torch_version: str
    python_version: str
    cuda_available: bool
    devices: list[str]
    engines: list[str]
    limits: dict[str, Any]


def register_readiness_check(app: Any, name: str, check: ReadinessCheck) -> None:
    """Add ``check`` to what ``/readyz`` asks; it returns ``(ready, detail)``."""
    app.state.readiness_checks[name] = check


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    """Return `{"status": "ok"}` whenever the process can answer HTTP."""
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: the store and workers are ready",
    responses={
        200: {
            "description": "Every check is ready",
            "content": {
                "application/json": {
                    "example": {
                        "status": "ready",
                        "checks": {"store": {"ready": True, "detail": "sqlite"}},
                    }
                }
            },
        },
        503: {
            "description": "A dependency is not ready: a problem body whose detail names it, "
            "with the same checks",
            "content": {
                "application/problem+json": {
                    "example": {
                        "type": "/problems/not-ready",
                        "title": "Not ready",
                        "status": 503,
                        "detail": "not ready: jobs: the Celery broker redis://redis:6379/0 "
                        "does not answer (ConnectionError: …): jobs cannot be queued",
                        "checks": {"jobs": {"ready": False, "detail": "…"}},
                    }
                }
            },
        },
    },
)
async def readyz(request: Request) -> JSONResponse:
    """Return 200 with each check's state when all are ready, otherwise 503 with a problem
    body whose `detail` names what is not ready."""
    checks: dict[str, dict[str, Any]] = {}
    ready = True
    for name, check in request.app.state.readiness_checks.items():
        try:
            ok, detail = await check()
        except Exception as exc:  # a failing check means "not ready", never a 500
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        checks[name] = {"ready": ok, "detail": detail}
        ready = ready and ok
    if ready:
        return JSONResponse({"status": "ready", "checks": checks})
    down = "; ".join(f"{name}: {c['detail']}" for name, c in checks.items() if not c["ready"])
    body = problem_body(
        503, f"not ready: {down}", title="Not ready", slug="not-ready", extra={"checks": checks}
    )
    return JSONResponse(body, status_code=503, media_type=PROBLEM_JSON)


@router.get("/v1/info", response_model=Info, summary="Versions, devices and limits in force")
async def info(settings: SettingsDep) -> Info:
    """Return service and torch versions, the devices available and every limit in force."""
    # URLs may carry passwords, keys are secrets
    secret = {
        "data_dir",
        "database_url",
        "celery_broker_url",
        "cache_url",
        "rate_limit_url",
        "api_keys",
    }
    limits = settings.model_dump(exclude=secret | {"api_keys_file"}, mode="json")
    return Info(
        service="lr-schedule-service",
        version=__version__,
        torch_version=TORCH_VERSION,
        python_version=platform.python_version(),
        cuda_available=cuda_available(),
        devices=device_names(),
        engines=["torch", "vectorized"],
        limits=limits,
    )
