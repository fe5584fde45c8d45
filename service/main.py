"""The ASGI application: ``service.main:app``.

HTTP ends in the routers; each domain package (schedules, dropout, jobs) owns its specs,
engine and router. The lifespan starts and stops what the domains need.
"""

import gc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import torch
from fastapi import Depends, FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from service import __version__, auth, health, memory, metrics, streaming
from service.deps import bind_app_settings
from service.docs import install_docs
from service.dropout import router as dropout_router
from service.errors import install_error_handlers
from service.jobs import router as jobs_router
from service.middleware import BodyLimitMiddleware, DuplicateKeyMiddleware
from service.observability import (
    ObservabilityMiddleware,
    RouteCapture,
    configure_access_log,
    watch_runtime,
)
from service.playground import router as playground_router
from service.ratelimit import RateLimitMiddleware
from service.schedules import routes as schedules_router
from service.settings import Settings, get_settings

DESCRIPTION = """\
Learning-rate schedules computed with PyTorch's real schedulers, server-side.

Send a schedule spec in torch's own names (`{"scheduler": {"type": "StepLR", "step_size": 30,
"gamma": 0.1}, "steps": 100}`) and get back the learning rate every optimizer step of a real
training loop would use. Errors are RFC 9457 `application/problem+json`.

With API keys configured (`LRS_API_KEYS`), every `/v1/jobs` endpoint needs
`Authorization: Bearer KEY` and a key lists and reaches only the jobs it submitted: another
key's job answers 404, as if it did not exist.
"""

CORS_REQUEST_HEADERS = [
    "Accept",
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "If-None-Match",
    "Last-Event-ID",
    "X-Request-ID",
]
CORS_EXPOSED_HEADERS = [
    "Location",
    "ETag",
    "Retry-After",
    "Idempotent-Replayed",
    "X-Request-ID",
    "X-Engine",
    "X-Device",
    "X-Cache",
    "X-Schedule-Family",
    "X-Torch-Version",
]


class App(FastAPI):
    """FastAPI with :class:`streaming.ConnectionAccess` outermost (outside Starlette's error
    middleware): a streamed response past its deadline can abort its connection."""

    def build_middleware_stack(self) -> ASGIApp:
        return streaming.ConnectionAccess(super().build_middleware_stack())


def create_app(settings: Settings | None = None) -> FastAPI:
    """Return a configured application; ``settings`` defaults to the environment's."""
    settings = settings or get_settings()
    key_hashes = auth.load_key_hashes(settings)
    configure_access_log(settings.access_log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.torch_threads)
        memory.tune_malloc(settings.malloc_retain_mb)
        streaming.install_log_filter()
        auth.warn_if_exposed(key_hashes)
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(watch_runtime())
            for domain_lifespan in app.state.domain_lifespans:
                await stack.enter_async_context(domain_lifespan(app))
            # What is built by now (torch, pydantic and FastAPI internals: ~230k objects)
            # lives as long as the process; a full collection scanning it paused every
            # request for ~140 ms. Frozen, collections scan only what requests create.
            gc.collect()
            gc.freeze()
            try:
                yield
            finally:
                gc.unfreeze()

    app = App(
        title="LR schedule service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(bind_app_settings), Depends(auth.require_key_for_all)],
    )
    app.state.settings = settings
    app.state.api_key_hashes = key_hashes
    app.state.stream_cap = streaming.StreamCap(settings.stream_max_per_client, key_hashes)
    app.state.readiness_checks = {}
    app.state.domain_lifespans = [schedules_router.lifespan, jobs_router.lifespan]

    install_error_handlers(app)
    app.add_middleware(RouteCapture)
    app.add_middleware(DuplicateKeyMiddleware)  # inside the body limit: bodies come bounded
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RateLimitMiddleware, settings=settings, keys=key_hashes)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "HEAD", "POST", "DELETE", "OPTIONS"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=600,
        )
    app.add_middleware(ObservabilityMiddleware)

    install_docs(app)
    app.include_router(health.router)
    app.include_router(schedules_router.router)
    app.include_router(dropout_router.router)
    app.include_router(jobs_router.router)
    app.include_router(metrics.router)
    app.include_router(playground_router.router)
    auth.document_access(app)
    return app


app = create_app()
