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
        503: {"description": "A dependency is not ready (same body, status 'not ready')"},
    },
)
async def readyz(request: Request) -> JSONResponse:
    """Return 200 with each check's state when all are ready, 503 otherwise."""
    checks: dict[str, dict[str, Any]] = {}
    ready = True
    for name, check in request.app.state.readiness_checks.items():
        try:
            ok, detail = await check()
        except Exception as exc:  # a failing check means "not ready", never a 500
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        checks[name] = {"ready": ok, "detail": detail}
        ready = ready and ok
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/v1/info", response_model=Info, summary="Versions, devices and limits in force")
async def info(settings: SettingsDep) -> Info:
    """Return service and torch versions, the devices available and every limit in force."""
    limits = settings.model_dump(
        exclude={"data_dir", "database_url", "api_keys", "api_keys_file"}, mode="json"
    )
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
