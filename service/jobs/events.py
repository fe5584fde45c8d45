"""A job's event log as Server-Sent Events: replayed from the store, then followed live.

Each event's ``id`` is its id in the store's log, so a client that reconnects with
``Last-Event-ID`` resumes after the last event it saw. The stream ends after the terminal
``done`` event, at once for a job that had already finished.

Streams are cheap to hold open: a stream reads the store once when it starts (its replay);
after that, one :class:`EventHub` task polls the store for every followed job in one query
per ``LRS_JOB_EVENTS_POLL_S`` and wakes the streams of the jobs that have news. 300 streams
cost one query per poll, not 300 (each used to poll on its own, in threads, and stalled the
event loop). The hub also counts open streams: per job, per client and in all, each capped.
"""

import asyncio
import contextlib
import json
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
from sse_starlette import ServerSentEvent

from service.errors import TooManyRequests, Unavailable
from service.jobs.specs import FINISHED
from service.jobs.store import TERMINAL_EVENT, Event, Store
from service.settings import Settings

log = logging.getLogger("service.jobs")

BUFFER_EVENTS = 512
"""Events a followed job keeps in memory; a stream further behind reads the store itself."""
EXISTENCE_EVERY = 5
"""Polls between checks that the followed jobs still exist (a deleted job's streams end)."""


@dataclass
class _Feed:
    """What the hub knows of one followed job: every event with an id above ``floor``."""

    floor: int
    last: int
    events: deque[Event] = field(default_factory=deque)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    """The terminal event was seen, or the job is gone: no event will come."""
    streams: int = 0

    def notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


@dataclass
class Ticket:
    """One admitted stream; :meth:`EventHub.release` frees its place (once)."""

    job_id: str
    client: str
    released: bool = False


class EventHub:
    """The event streams of one app: admission (the caps), replay and the shared poll."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.poll_s = settings.job_events_poll_s
        self.max_streams = settings.job_events_max_streams
        self.max_per_job = settings.job_events_max_streams_per_job
        self.max_per_client = settings.job_events_max_streams_per_client
        self.retry_after = str(settings.job_retry_after_s)
        self.feeds: dict[str, _Feed] = {}
        self.per_job: Counter[str] = Counter()
        self.per_client: Counter[str] = Counter()
        self.total = 0
        self._poller: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- admission

    def admit(self, job_id: str, client: str) -> Ticket:
        """Count a new stream of ``client`` on ``job_id``; raise TooManyRequests (429, the
        client's cap) or Unavailable (503, the job's or the service's cap) instead."""
        retry = {"Retry-After": self.retry_after}
        if self.max_per_client and self.per_client[client] >= self.max_per_client:
            raise TooManyRequests(
                f"you have {self.max_per_client} event streams open, the most one client may "
                "(LRS_JOB_EVENTS_MAX_STREAMS_PER_CLIENT); close one, or poll GET /v1/jobs/{id}",
                headers=retry,
            )
        if self.max_per_job and self.per_job[job_id] >= self.max_per_job:
            raise Unavailable(
                f"job {job_id} has {self.max_per_job} event streams open, the most one job "
                "may (LRS_JOB_EVENTS_MAX_STREAMS_PER_JOB); retry later",
                headers=retry,
            )
        if self.max_streams and self.total >= self.max_streams:
            raise Unavailable(
                f"{self.max_streams} event streams are open, the most the service holds "
                "(LRS_JOB_EVENTS_MAX_STREAMS); retry later",
                headers=retry,
            )
        self.per_client[client] += 1
        self.per_job[job_id] += 1
        self.total += 1
        return Ticket(job_id, client)

    def release(self, ticket: Ticket) -> None:
        """Free the stream's place; calling it again does nothing."""
        if ticket.released:
            return
        ticket.released = True
        self.total -= 1
        for counter, key in ((self.per_client, ticket.client), (self.per_job, ticket.job_id)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

    # ----------------------------------------------------------------- streaming

    async def stream(self, ticket: Ticket, after: int = 0) -> AsyncIterator[ServerSentEvent]:
        """Yield the job's events with an id above ``after``, until its terminal event."""
        job_id = ticket.job_id
        feed: _Feed | None = None
        try:
            events, final = await anyio.to_thread.run_sync(self._replay, job_id, after)
            if final:  # finished (or gone): nothing more will come
                for event in events:
                    yield _sse(event)
                return
            while True:
                for event in events:
                    after = event.id
                    yield _sse(event)
                    if event.event == TERMINAL_EVENT:
                        return
                if feed is None:
                    feed = self._follow(job_id, after)
                if after < feed.floor:  # behind what the hub keeps: read the store
                    events = await anyio.to_thread.run_sync(self.store.events_after, job_id, after)
                    if not events:
                        return  # deleted
                    continue
                events = [e for e in feed.events if e.id > after]
                if events:
                    continue
                if feed.closed:
                    return
                await feed.changed.wait()
                events = []
        finally:
            if feed is not None:
                self._unfollow(job_id)
            self.release(ticket)

    def _replay(self, job_id: str, after: int) -> tuple[list[Event], bool]:
        """Return the job's events above ``after`` and whether they are all it will have."""
        events = self.store.events_after(job_id, after)
        if any(e.event == TERMINAL_EVENT for e in events):
            return events, True
        record = self.store.get(job_id)
        if record is None:
            return events, True
        if record.status in FINISHED:  # finished since the read above: its `done` is there
            return events + self.store.events_after(
                job_id, events[-1].id if events else after
            ), True
        return events, False

    def _follow(self, job_id: str, position: int) -> _Feed:
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = self.feeds[job_id] = _Feed(floor=position, last=position)
        feed.streams += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="job-events-poll")
        return feed

    def _unfollow(self, job_id: str) -> None:
        feed = self.feeds.get(job_id)
        if feed is not None:
            feed.streams -= 1
            if feed.streams <= 0:
                del self.feeds[job_id]

    async def _poll(self) -> None:
        """Poll the store for every followed job until none is followed."""
        polls = 0
        while self.feeds:
            await asyncio.sleep(self.poll_s)
            try:
                polls += 1
                await self._poll_once(polls)
            except Exception:  # the store is down: streams wait, the next poll retries
                log.exception("polling job events failed")

    async def _poll_once(self, polls: int) -> None:
        feeds = {job_id: f for job_id, f in self.feeds.items() if not f.closed}
        if not feeds:
            return
        afters = {job_id: f.last for job_id, f in feeds.items()}
        found = await anyio.to_thread.run_sync(self.store.events_for, afters)
        quiet = []
        for job_id, feed in feeds.items():
            events = [e for e in found.get(job_id, []) if e.id > feed.last]
            if not events:
                quiet.append(job_id)
                continue
            feed.events.extend(events)
            feed.last = events[-1].id
            while len(feed.events) > BUFFER_EVENTS:
                feed.floor = feed.events.popleft().id
            if any(e.event == TERMINAL_EVENT for e in events):
                feed.closed = True
            feed.notify()
        if quiet and polls % EXISTENCE_EVERY == 0:
            existing = await anyio.to_thread.run_sync(self.store.existing, quiet)
            for job_id in quiet:
                if job_id not in existing:
                    feeds[job_id].closed = True
                    feeds[job_id].notify()

    async def aclose(self) -> None:
        """Stop the shared poll (at shutdown)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller


def _sse(event: Event) -> ServerSentEvent:
    return ServerSentEvent(
        data=json.dumps(event.data, separators=(",", ":")), event=event.event, id=str(event.id)
    )
