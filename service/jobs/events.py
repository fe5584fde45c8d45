"""A job's event log as Server-Sent Events: replayed from the store, then followed live.

Each event's ``id`` is its id in the store's log, so a client that reconnects with
``Last-Event-ID`` resumes after the last event it saw. The stream ends after the terminal
``done`` event, at once for a job that had already finished.
"""

import json
from collections.abc import AsyncIterator

import anyio
from sse_starlette import ServerSentEvent

from service.jobs.specs import FINISHED
from service.jobs.store import TERMINAL_EVENT, Store


async def job_events(
    store: Store, job_id: str, after: int = 0, poll_s: float = 0.2
) -> AsyncIterator[ServerSentEvent]:
    """Yield the job's events with an id above ``after``, until its terminal event."""
    finished = False
    while True:
        events = await anyio.to_thread.run_sync(store.events_after, job_id, after)
        for event in events:
            after = event.id
            yield ServerSentEvent(
                data=json.dumps(event.data, separators=(",", ":")), event=event.event, id=str(after)
            )
            if event.event == TERMINAL_EVENT:
                return
        if finished:
            return  # the client had already seen the terminal event
        if not events:
            record = await anyio.to_thread.run_sync(store.get, job_id)
            if record is None:
                return  # deleted
            # Finished since the read above: read once more, the terminal event is there.
            finished = record.status in FINISHED
            if not finished:
                await anyio.sleep(poll_s)
