"""What an operator sees of a stalled process: a stuck stderr holds up no request, and
/metrics times the garbage collector's pauses and the event loop's lags."""

import gc
import io
import json
import logging
import re
import sys
import threading
import time

from service.observability import BackgroundStderr


class _Stuck(io.TextIOBase):
    """A stderr that does not drain (a pipe nobody reads) until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.text: list[str] = []

    def write(self, text: str) -> int:
        self.release.wait(30)
        self.text.append(text)
        return len(text)


def test_a_stderr_that_does_not_drain_holds_up_no_request(client, monkeypatch):
    handler = logging.getLogger("service.access").handlers[0]
    assert isinstance(handler, BackgroundStderr)
    stuck = _Stuck()
    monkeypatch.setattr(sys, "stderr", stuck)
    ids = [f"stuck-{i}" for i in range(40)]
    statuses: list[int] = []

    def ask() -> None:
        for request_id in ids:
            r = client.get("/healthz", headers={"X-Request-ID": request_id})
            statuses.append(r.status_code)

    asker = threading.Thread(target=ask)
    asker.start()
    asker.join(timeout=60)
    alive = asker.is_alive()
    stuck.release.set()
    asker.join()
    assert not alive, "requests waited for stderr"
    assert statuses == [200] * len(ids)
    handler.flush()
    logged = [json.loads(line) for line in "".join(stuck.text).splitlines() if line]
    assert {line.get("request_id") for line in logged} >= set(ids)


def _count(text: str, name: str) -> float:
    return sum(
        float(m.group(1)) for m in re.finditer(rf"^{name}_count(?:{{[^}}]*}})? (\S+)$", text, re.M)
    )


def test_metrics_time_gc_pauses_and_event_loop_lags(client):
    before = client.get("/metrics").text
    for name in ("lrs_gc_pause_seconds", "lrs_event_loop_lag_seconds"):
        assert f"# TYPE {name} histogram" in before, name
    gc.collect()
    deadline = time.monotonic() + 10
    while True:
        after = client.get("/metrics").text
        grew = all(
            _count(after, name) > _count(before, name)
            for name in ("lrs_gc_pause_seconds", "lrs_event_loop_lag_seconds")
        )
        if grew or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert grew, after
    assert 'lrs_gc_pause_seconds_count{generation="2"}' in after
