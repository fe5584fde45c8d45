"""Start-up warm-up: the first schedule a user asks for is as fast as the second.

The first real ``torch.optim`` optimizer or scheduler a process builds imports
``torch._dynamo`` and what it pulls in (about 800 modules: 2 s on a quiet 2-core machine,
10-13 s on a loaded one), and the first call of each engine's code builds pydantic and numpy
internals. :func:`warm_up` pays that once, during the lifespan, so that ``/readyz`` (and
every other route: uvicorn accepts connections only after the lifespan started) answers
when the compute path is ready, not before.
"""

import logging
import time

from service.schedules import formats, service, specs
from service.settings import Settings

log = logging.getLogger("service.schedules")

_SPEC = {
    "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
    "scheduler": {"type": "CosineAnnealingLR", "T_max": 6},
    "warmup": {"type": "linear", "steps": 2, "start_factor": 0.0},
    "steps": 8,
}


def warm_up(settings: Settings) -> float:
    """Compute one tiny warmup+cosine schedule on each engine (and a stacked batch of two) and
    render it as JSON; return the seconds it took. A failure is logged, never raised: the
    service then starts as it would have without the warm-up."""
    start = time.perf_counter()
    try:
        for engine in ("torch", "vectorized"):
            request = specs.ScheduleRequest.model_validate({**_SPEC, "engine": engine})
            formats.render(service.compute(request, settings), "json", "warm-up")
        pair = [specs.ScheduleRequest.model_validate(_SPEC) for _ in range(2)]
        service.compute_many(list(pair), settings)
    except Exception:  # a bug here must not keep the service down
        log.exception("the start-up warm-up failed; the first request will be slower")
    seconds = time.perf_counter() - start
    log.info("warm-up: the compute path was ready after %.2f s", seconds)
    return seconds
