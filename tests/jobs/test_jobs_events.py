"""The event stream against a store that changes between its reads."""

import anyio

from service.jobs.events import job_events
from service.jobs.store import TERMINAL_EVENT, Event


class FinishesBetweenReads:
    """A store whose job finishes right after the stream's first read of the event log."""

    def __init__(self) -> None:
        self.finished = False

    def events_after(self, job_id: str, after: int = 0) -> list[Event]:
        if not self.finished:
            self.finished = True  # the worker commits `done` just after this read
            return []
        done = Event(7, job_id, TERMINAL_EVENT, {"status": "succeeded", "error": None})
        return [done] if after < done.id else []

    def get(self, job_id: str) -> object:
        return type("Record", (), {"status": "succeeded" if self.finished else "running"})()


def _stream(store: object, after: int = 0) -> list[tuple[str, str]]:
    async def collect() -> list[tuple[str, str]]:
        stream = job_events(store, "job", after, poll_s=0.01)  # type: ignore[arg-type]
        return [(event.event, event.id) async for event in stream]

    return anyio.run(collect)


def test_a_job_finishing_between_reads_still_sends_its_done_event():
    assert _stream(FinishesBetweenReads()) == [(TERMINAL_EVENT, "7")]


def test_a_stream_after_the_done_event_is_empty_and_ends():
    store = FinishesBetweenReads()
    store.finished = True
    assert _stream(store, after=7) == []
