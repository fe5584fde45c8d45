"""HTTP for schedules: each module translates requests to domain calls and results back.

``compute`` (POST and the GET form), ``batch``, ``catalog``, ``compare`` and ``resume``;
:data:`router` holds them all and :func:`lifespan` starts what they share (the compute
threads' limiter and the cache).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import APIRouter, FastAPI

from service.schedules import shared_cache
from service.schedules.routes import batch, catalog, compare, compute, resume

router = APIRouter()
router.include_router(compute.router)
router.include_router(batch.router)
router.include_router(catalog.router)
router.include_router(compare.router)
router.include_router(resume.router)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Bound how many schedule computations run at once in worker threads; start the cache."""
    app.state.compute_limiter = anyio.CapacityLimiter(app.state.settings.compute_concurrency)
    app.state.schedule_cache = shared_cache.make_cache(app.state.settings)
    yield
