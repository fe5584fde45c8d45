"""HTTP for schedules: each module translates requests to domain calls and results back.

``compute`` (POST and the GET form), ``batch``, ``catalog``, ``compare``, ``resume`` and
``export``, ``lint``;
:data:`router` holds them all and :func:`lifespan` starts what they share (the compute
threads' limiter and the cache) and warms the compute path up before the service answers
(:mod:`service.schedules.warmup`).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import APIRouter, FastAPI

from service.schedules import compute_pool, shared_cache, warmup
from service.schedules.routes import batch, catalog, compare, compute, export, lint, resume

router = APIRouter()
router.include_router(compute.router)
router.include_router(batch.router)
router.include_router(catalog.router)
router.include_router(compare.router)
router.include_router(resume.router)
router.include_router(export.router)
router.include_router(lint.router)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Bound how many schedule computations run at once in worker threads; start the cache
    (and close its Redis connections at the end); compute one tiny schedule per engine, so
    the first request pays no first-use imports."""
    app.state.compute_limiter = anyio.CapacityLimiter(app.state.settings.compute_concurrency)
    # Expensive requests take turns on one thread, so they never hold every compute thread.
    app.state.heavy_limiter = anyio.CapacityLimiter(1)
    app.state.schedule_cache = shared_cache.make_cache(app.state.settings)
    await anyio.to_thread.run_sync(warmup.warm_up, app.state.settings)
    pool = app.state.compute_pool = None
    if app.state.settings.compute_processes:
        pool = app.state.compute_pool = compute_pool.ComputePool(
            app.state.settings, app.state.settings.compute_processes
        )
        pool.start()
    try:
        yield
    finally:
        if pool is not None:
            await pool.aclose()
        if isinstance(app.state.schedule_cache, shared_cache.SharedResultCache):
            await app.state.schedule_cache.aclose()
