"""Issue 15, items 3 and 5: a client that reads a streamed body slowly, or stops reading, is
cut at the stream limits, and the cut frees what it held.

One server (uvicorn on a free port, `make serve`'s flags) with short limits: a send may wait
SEND_TIMEOUT for the client, a body may take STREAM_SECONDS, bodies over 1 MB are streamed,
and ``--limit-concurrency`` is small so that connections a cut did not free would show as
503s. Its stderr is kept, to read the access log and to find any traceback.

What the user notices: the client's read ends early (an incomplete chunked body, or a
reset); the server holds no socket for a stalled client after the send timeout, even though
the client keeps its socket open; its RSS comes back; new requests find a free connection
slot; /healthz keeps answering; the access log says 200 with ``cut`` and the reason, and
``/metrics`` counts the cut, with no 500 and no traceback anywhere.
"""

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.background import BackgroundTask

from service.streaming import ConnectionAccess, LimitedEventSourceResponse
from tests.servers import free_port

from .conftest import (
    FINISHED,
    LONG,
    HealthProbe,
    Server,
    new_address,
    serving,
    wait_status,
)

SEND_TIMEOUT = 1.0
STREAM_SECONDS = 4.0
LIMIT_CONCURRENCY = 16
"""Connections (and tasks) uvicorn takes before it answers 503: two rounds of STALLED
stalled clients, the health probe and the test's own client need more than this."""
STALLED = 6
CAPS_PER_CLIENT = 4

CSV = {
    "scheduler": {"type": "CosineAnnealingLR", "T_max": 1000},
    "param_groups": [{"lr": 0.1 / (g + 1)} for g in range(16)],
    "steps": 100_000,
}
"""16 groups × 100k steps: ~33 MB of CSV, far more than the kernel's socket buffers hold,
streamed (over LRS_STREAM_MIN_BYTES below); its lrs alone are 13 MB (float64)."""

BATCH = {
    "requests": [
        {"scheduler": {"type": "CosineAnnealingLR", "T_max": 100 + i}, "steps": 20_000}
        for i in range(40)
    ]
}
"""40 × 20k values: ~18 MB of batch JSON, streamed in ~1 MB chunks."""


@pytest.fixture(scope="module")
def cut_server(tmp_path_factory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("stream-cuts")
    extra = {
        "LRS_STREAM_SEND_TIMEOUT_S": str(SEND_TIMEOUT),
        "LRS_STREAM_MAX_SECONDS": str(STREAM_SECONDS),
        "LRS_STREAM_MIN_BYTES": str(1 << 20),
        "LRS_ACCESS_LOG": "true",
        "LRS_JOB_PROGRESS_EVERY": "1",
        "LRS_JOB_EVENTS_MAX_STREAMS_PER_CLIENT": str(CAPS_PER_CLIENT),
        # glibc's allocator otherwise keeps large freed blocks in its heaps (its mmap
        # threshold rises with the first large free): RSS then says what the allocator
        # keeps, not what the server holds (measured: +134 MB after 12 cuts that freed all)
        "MALLOC_MMAP_THRESHOLD_": str(256 * 1024),
    }
    flags = ["--limit-concurrency", str(LIMIT_CONCURRENCY)]
    with serving(folder, "sqlite", extra, flags=flags, log=folder / "server.log") as server:
        yield server


def _log(server: Server) -> str:
    time.sleep(0.3)  # the access log is written by a thread, every 50 ms
    return server.log_text()


def _access(server: Server, request_id: str) -> dict:
    for line in _log(server).splitlines():
        if line.startswith("{") and f'"request_id":"{request_id}"' in line:
            return json.loads(line)
    raise AssertionError(f"no access log line for {request_id}")


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _request(method: str, path: str, body: dict | None, request_id: str) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nX-Request-ID: {request_id}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return head.encode() + b"\r\n" + payload


def _open(
    server: Server,
    method: str,
    path: str,
    body: dict | None,
    request_id: str,
    address: str = "127.0.0.1",
    rcvbuf: int | None = 4096,
):
    """Send the request from ``address`` on a socket with a ``rcvbuf`` receive buffer (4 KB:
    little reaches a client that stops reading); read the response head only. Return the
    socket, the status and the body bytes after the head."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(60)
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", _port(server)))
    sock.sendall(_request(method, path, body, request_id))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection before answering"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return sock, int(head.split(b" ", 2)[1]), rest


def _drain(sock: socket.socket, every: float = 0.0, read_bytes: int = 65536) -> tuple[int, str]:
    """Read until the server closes (``every`` s between reads); return the bytes read and
    how the body ended: "complete" (the chunked body's end), "reset" (the server aborted:
    what was in flight is dropped) or "eof" (closed without the body's end)."""
    size, tail, end = 0, b"", "eof"
    try:
        while chunk := sock.recv(read_bytes):
            size += len(chunk)
            tail = (tail + chunk)[-5:]
            if every:
                time.sleep(every)
    except ConnectionResetError:
        end = "reset"
    sock.close()
    return size, "complete" if tail == b"0\r\n\r\n" else end


def _held(server: Server, socks: list[socket.socket] | None = None) -> int:
    """Return how many connections to its port the server process holds open (its sockets
    on that port, the listening one aside), of those from ``socks`` only when given."""
    pid = server.process.pid
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    port = f"{_port(server):04X}"
    peers = {f"{s.getsockname()[1]:04X}" for s in socks if s.fileno() >= 0} if socks else None
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if not local.endswith(f":{port}") or state == "0A" or inode not in inodes:
                continue
            if peers is None or remote.rsplit(":", 1)[1] in peers:
                held += 1
    return held


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _assert_no_errors_logged(server: Server) -> None:
    log = _log(server)
    for sign in ("Traceback", "unhandled error", "Exception in ASGI", "without completing"):
        assert sign not in log, log[-4000:]
    assert _metric(server, "lrs_http_requests_total", status="500") == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/schedules/compute?format=csv", CSV), ("/v1/schedules/batch", BATCH)],
    ids=["csv", "batch-json"],
)
def test_a_client_that_stops_reading_is_cut_and_recorded_as_a_cut_200(cut_server, path, body):
    route = path.split("?")[0]
    cuts = _metric(cut_server, "lrs_http_streams_cut_total", route=route, reason="send_timeout")
    request_id = f"stall-{route.rsplit('/', 1)[1]}"
    sock, status, _ = _open(cut_server, "POST", path, body, request_id)
    assert status == 200
    # the client reads nothing; the server gives up SEND_TIMEOUT after its last send was taken
    assert _wait_for(lambda: _held(cut_server, [sock]) == 0, SEND_TIMEOUT + 30), "it was kept"
    size, end = _drain(sock)
    assert end == "reset" and size < 8 << 20, (end, size)  # never a short body that looks whole
    line = _access(cut_server, request_id)
    assert line["status"] == 200 and line["cut"] == "send_timeout", line
    assert 0 < line["sent_bytes"] < 8 << 20, line
    assert (
        _metric(cut_server, "lrs_http_streams_cut_total", route=route, reason="send_timeout")
        == cuts + 1
    )
    assert "closed a streamed response" in _log(cut_server)  # the one warning
    _assert_no_errors_logged(cut_server)


def test_a_client_that_trickles_is_cut_at_the_stream_limit(cut_server):
    path = "/v1/schedules/compute?format=csv"
    sock, status, _ = _open(cut_server, "POST", path, CSV, "trickle", rcvbuf=None)
    assert status == 200
    # up to 64 KB every 20 ms (the default receive buffer): each 1 MB piece is taken within
    # ~0.33 s, well within the send timeout, but the 33 MB body would take over 10 s
    size, end = _drain(sock, every=0.02)
    assert end == "reset" and size < 30 << 20, (end, size)
    line = _access(cut_server, "trickle")
    assert line["status"] == 200 and line["cut"] == "max_seconds", line
    _assert_no_errors_logged(cut_server)
    # a client that reads as fast as it can gets the whole body, not cut
    r = httpx.post(f"{cut_server.url}/v1/schedules/compute?format=csv", json=CSV, timeout=60)
    assert r.status_code == 200 and r.text.count("\n") == CSV["steps"] + 1


def test_stalled_clients_free_their_connections_memory_and_slots(cut_server):
    """Clients that stop reading and keep their sockets open: after the send timeout the
    server holds none of their connections and their memory is back, so two rounds of them
    fit under --limit-concurrency (the first round's would otherwise take every slot)."""
    path = "/v1/schedules/compute?format=csv"
    with httpx.Client(base_url=cut_server.url, timeout=60) as client:
        warm = client.post(path, json=CSV)  # first-call costs of the CSV path
        assert warm.status_code == 200
    time.sleep(1)
    base_rss = cut_server.rss_bytes()
    kept: list[socket.socket] = []
    with HealthProbe(cut_server.url, every=0.05) as probe:
        for round_ in range(2):
            peak, stalled = 0, []
            for i in range(STALLED):
                sock, status, _ = _open(cut_server, "POST", path, CSV, f"slot-{round_}-{i}")
                stalled.append(sock)  # kept open, never read
                assert status == 200, f"round {round_}: {status} (no free connection slot)"
                peak = max(peak, cut_server.rss_bytes())
            kept += stalled
            freed = _wait_for(lambda k=kept: _held(cut_server, k) == 0, SEND_TIMEOUT + 30)
            held = _held(cut_server, kept)
            assert freed, f"round {round_}: the server still holds {held} of their sockets"
        time.sleep(1)
        rss = cut_server.rss_bytes()
    for sock in kept:
        sock.close()
    grown, peak_grown = (rss - base_rss) / 2**20, (peak - base_rss) / 2**20
    print(f"\nRSS after the cuts +{grown:.0f} MB (peak while stalled +{peak_grown:.0f} MB)")
    # each stalled response held its 13 MB of lrs and its CSV chunks (~26 MB) while its
    # connection stayed: before the abort, 6 stalled clients kept +156 MB after their cuts
    assert grown < 40, (grown, peak_grown)
    assert probe.failures == []
    _assert_no_errors_logged(cut_server)


def test_event_streams_nobody_reads_end_with_their_job_and_free_their_places(cut_server):
    """SSE clients that stop reading a chatty job's stream (an event every optimizer step):
    the stream is not cut while its events fit the socket buffers (a running job's stream
    lasts as long as the job), and when the job ends the server holds none of their
    sockets and their places under the per-client cap are free again."""
    address = new_address()
    with cut_server.client(address) as client:
        r = client.post("/v1/jobs", json=LONG)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        path = f"/v1/jobs/{job_id}/events"
        socks = []
        for i in range(CAPS_PER_CLIENT):
            sock, status, _ = _open(cut_server, "GET", path, None, f"sse-{i}", address)
            assert status == 200
            socks.append(sock)
        assert client.get(path, timeout=5).status_code == 429  # the cap is taken
        wait_status(client, job_id, {"running"}, timeout=120)
        time.sleep(3)  # progress events pile up unread
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        wait_status(client, job_id, FINISHED, timeout=60)
        freed = _wait_for(lambda: _held(cut_server, socks) == 0, 30)
        assert freed, f"the server still holds {_held(cut_server, socks)} of their sockets"
        with client.stream("GET", path, timeout=30) as again:  # a place is free again
            assert again.status_code == 200
            assert b"event: done" in again.read()
    for sock in socks:
        size, _ = _drain(sock)
        assert size > 0
    _assert_no_errors_logged(cut_server)


@pytest.mark.parametrize(("http", "loop"), [("httptools", "uvloop"), ("h11", "asyncio")])
def test_an_event_stream_whose_sends_wait_past_the_timeout_is_cut(http, loop):
    """LimitedEventSourceResponse under the real uvicorn (both its HTTP implementations;
    `make serve` runs httptools on uvloop): a client that
    stops reading a stream of large events is cut SEND_TIMEOUT after its last send was
    taken: the connection aborted, the generator closed and the background task (the
    place's release) run."""
    closed, released = threading.Event(), threading.Event()

    async def events():
        try:
            for _ in range(10_000):  # 640 MB, never all buffered
                yield {"data": "x" * 65536}
        finally:
            closed.set()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        response = LimitedEventSourceResponse(
            events(), send_timeout=SEND_TIMEOUT, background=BackgroundTask(released.set)
        )
        await ConnectionAccess(response)(scope, receive, send)

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    config.http, config.loop = http, loop
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert _wait_for(lambda: server.started, 30)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        assert released.wait(SEND_TIMEOUT + 30) and closed.is_set()
        assert _wait_for(lambda: not server.server_state.connections, 10)
        size, end = _drain(sock)  # the client still had its socket: reset, not fed for minutes
        assert end == "reset" and size < 1 << 20, (end, size)
    finally:
        server.should_exit = True
        thread.join(15)


def test_without_the_transport_a_deadline_is_raised_and_its_traceback_kept_quiet(caplog):
    """Under a server whose ``send`` does not lead to its transport (no abort), the deadline
    is raised for the server to close the connection; the app's "unhandled error" handler
    and uvicorn log it without a traceback reaching the logs."""
    import asyncio
    import logging

    from service import streaming

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "GET", "headers": []}
    response = streaming.LimitedStreamingResponse(
        iter([b"x" * 10] * 3), max_seconds=1e-9, send_timeout=1
    )
    with pytest.raises(streaming.StreamDeadline, match="LRS_STREAM_MAX_SECONDS"):
        asyncio.run(ConnectionAccess(response)(scope, receive, send))
    assert streaming.ABORT_KEY not in scope and sent == []
    streaming.install_log_filter()
    for name in streaming.QUIET_LOGGERS:
        with caplog.at_level(logging.ERROR, logger=name):
            caplog.clear()
            try:
                raise streaming.StreamDeadline("late")
            except streaming.StreamDeadline:
                logging.getLogger(name).exception("unhandled error on GET /x")
            logging.getLogger(name).error("another error")
        assert [r.getMessage() for r in caplog.records] == ["another error"], name
