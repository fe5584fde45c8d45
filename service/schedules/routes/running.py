"""Running a schedule computation for a request: in a compute thread, under its budget.

The computation gets a :class:`~service.schedules.budget.Budget` (``LRS_COMPUTE_MAX_SECONDS``,
counted from when a thread takes it) and is cancelled when the client disconnects, so its
thread and compute slot are free again within a chunk of work. Expensive requests (above
``LRS_COMPUTE_HEAVY_SHARE`` of their engine's cost limit) first take the one expensive slot,
so they never hold every compute thread: cheaper requests keep being served. The cheapest
(about a millisecond of work) run on the event loop instead (:func:`run_inline`).
"""

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import TypeVar

import anyio
from fastapi import Request

from service.schedules import budget

T = TypeVar("T")


async def _watch_disconnect(
    request: Request, work: budget.Budget, scope: anyio.CancelScope
) -> None:
    """Cancel ``work`` (and ``scope``) when the client disconnects. The body has been read
    by now, so the next message the server has for this request is its disconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            work.cancel()
            scope.cancel()
            return


async def _acquire_heavy(request: Request, seconds: float) -> anyio.CapacityLimiter:
    limiter: anyio.CapacityLimiter = request.app.state.heavy_limiter
    with anyio.move_on_after(seconds):
        await limiter.acquire()
        return limiter
    raise budget.Busy(
        f"expensive schedule computations are queued beyond {seconds:g} s; retry later or "
        "make the request cheaper (fewer steps, groups or schedulers, a shorter lr_lambda, "
        "or sample fewer points).",
        headers={"Retry-After": str(max(1, round(seconds)))},
    )


INLINE_SLICE_S = 0.005
"""Most computing time the event loop spends on inline requests before it runs its other
callbacks (timers, reading and writing sockets, other requests) again.

Without it the loop computed every request that arrived together back to back: wrk's 16
connections send 16 requests that one loop iteration reads, and the iteration computed all
16 before anything else ran (instrumented: each event-loop lag over 50 ms spanned 16, 31-32
or 47 inline computations, one to three such batches; 100-250 ms on the quiet machine)."""


class _Slice:
    """The inline computing time spent since the loop last ran its other callbacks."""

    __slots__ = ("reset_pending", "spent")

    def __init__(self) -> None:
        self.spent = 0.0
        self.reset_pending = False

    def reset(self) -> None:
        self.spent = 0.0
        self.reset_pending = False


_slices: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Slice]" = (
    weakref.WeakKeyDictionary()
)


async def run_inline(request: Request, fn: Callable[[], T]) -> T:
    """Return ``fn()`` computed here, on the event loop, under a new budget: for work that
    takes about a millisecond (the routes decide), where a compute thread costs more than it
    saves. Raises what ``fn`` raises.

    Once :data:`INLINE_SLICE_S` of inline computing has run since the loop last ran its other
    callbacks, the request waits for the loop's next turn (its place in the queue kept), so
    the loop's timers, sockets and other requests wait at most a slice and one request."""
    loop = asyncio.get_running_loop()
    state = _slices.get(loop)
    if state is None:
        state = _slices[loop] = _Slice()
    while state.spent >= INLINE_SLICE_S:
        await asyncio.sleep(0)
    if not state.reset_pending:
        # runs after the callbacks queued now: when the loop has had its turn
        state.reset_pending = True
        loop.call_soon(state.reset)
    start = time.perf_counter()
    try:
        with budget.active(budget.Budget(request.app.state.settings.compute_max_seconds)):
            return fn()
    finally:
        state.spent += time.perf_counter() - start


async def run_budgeted(request: Request, fn: Callable[[], T], *, heavy: bool) -> T | None:
    """Return ``fn()`` computed in a compute thread under a new budget; None when the client
    disconnected first (nobody is left to answer). Raises what ``fn`` raises."""
    settings = request.app.state.settings
    work = budget.Budget(settings.compute_max_seconds)

    def in_thread() -> T:
        work.start()
        with budget.active(work):
            return fn()

    outcome: dict[str, object] = {}
    async with anyio.create_task_group() as group:
        group.start_soon(_watch_disconnect, request, work, group.cancel_scope)
        held: anyio.CapacityLimiter | None = None
        try:
            if heavy:
                held = await _acquire_heavy(request, settings.compute_max_seconds)
            outcome["value"] = await anyio.to_thread.run_sync(
                in_thread, limiter=request.app.state.compute_limiter
            )
        except budget.Cancelled:
            pass
        except Exception as exc:  # re-raised below, outside the task group
            outcome["error"] = exc
        finally:
            if held is not None:
                held.release()
            group.cancel_scope.cancel()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")  # type: ignore[return-value]


async def run_in_thread(request: Request, fn: Callable[[], T]) -> T:
    """Return ``fn()`` computed in a compute thread under a new budget, not watching for a
    disconnect: for a response already under way (its own sends notice a client that left).
    Raises what ``fn`` raises."""
    work = budget.Budget(request.app.state.settings.compute_max_seconds)

    def in_thread() -> T:
        work.start()
        with budget.active(work):
            return fn()

    return await anyio.to_thread.run_sync(in_thread, limiter=request.app.state.compute_limiter)
