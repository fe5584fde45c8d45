"""The event stream against a store that changes between its reads."""

import anyio

from service.jobs.events import EventHub
from service.jobs.store import TERMINAL_EVENT, Event
from service.settings import Settings


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

    def events_for(self, afters: dict[str, int]) -> dict[str, list[Event]]:
        return {job_id: self.events_after(job_id, after) for job_id, after in afters.items()}

    def existing(self, job_ids: list[str]) -> set[str]:
        return set(job_ids)

    def get(self, job_id: str) -> object:
        return type("Record", (), {"status": "succeeded" if self.finished else "running"})()


def _stream(store: object, after: int = 0) -> list[tuple[str, str]]:
    async def collect() -> list[tuple[str, str]]:
        hub = EventHub(store, Settings(job_events_poll_s=0.01))  # type: ignore[arg-type]
        ticket = hub.admit("job", "client")
        events = [(event.event, event.id) async for event in hub.stream(ticket, after)]
        assert hub.total == 0 and not hub.feeds  # the stream gave its place back
        return events

    return anyio.run(collect)


def test_a_job_finishing_between_reads_still_sends_its_done_event():
    assert _stream(FinishesBetweenReads()) == [(TERMINAL_EVENT, "7")]


def test_a_stream_after_the_done_event_is_empty_and_ends():
    store = FinishesBetweenReads()
    store.finished = True
    assert _stream(store, after=7) == []
