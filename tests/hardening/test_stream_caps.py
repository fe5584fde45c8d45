"""Issue 15: one client may have at most LRS_STREAM_MAX_PER_CLIENT streamed schedule bodies
in flight; one more that would be streamed is a 429 with Retry-After, and the places come
back when the streams end (read to the end, dropped by the client, or cut by the server).

One server (uvicorn on a free port, `make serve`'s flags) with API keys, a cap of CAP,
bodies over 1 MB streamed and a short send timeout. A stalled reader is a socket with a
4 KB receive buffer that reads the response head and nothing more: its 33 MB body stays in
flight. What the user notices: the extra stream's 429 problem+json and Retry-After, a small
answer or another key's (or address's) stream still served, /healthz answering meanwhile,
and the client served again once its streams are gone.
"""

import hashlib
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from service.errors import TooManyRequests
from service.streaming import StreamCap

from .conftest import HealthProbe, Server, new_address, serving

CAP = 2
SEND_TIMEOUT = 2.0
KEY_A, KEY_B = "stream-cap-key-a", "stream-cap-key-b"

STALLED = {
    "scheduler": {"type": "CosineAnnealingLR", "T_max": 1000},
    "param_groups": [{"lr": 0.1 / (g + 1)} for g in range(16)],
    "steps": 100_000,
}
"""16 groups × 100k steps: ~33 MB of CSV, far more than the socket buffers hold."""
READ = {"scheduler": {"type": "CosineAnnealingLR", "T_max": 1000}, "steps": 100_000}
"""One group × 100k steps: ~2.5 MB of CSV, streamed (over LRS_STREAM_MIN_BYTES), read whole."""
BATCH = {
    "requests": [
        {"scheduler": {"type": "CosineAnnealingLR", "T_max": 100 + i}, "steps": 20_000}
        for i in range(40)
    ]
}
"""40 × 20k values: ~18 MB of batch JSON, streamed."""
SMALL = {"scheduler": {"type": "CosineAnnealingLR", "T_max": 10}, "steps": 100}
CSV = "/v1/schedules/compute?format=csv"


@pytest.fixture(scope="module")
def cap_server(tmp_path_factory) -> Iterator[Server]:
    digests = ",".join(hashlib.sha256(k.encode()).hexdigest() for k in (KEY_A, KEY_B))
    extra = {
        "LRS_API_KEYS": digests,
        "LRS_STREAM_MAX_PER_CLIENT": str(CAP),
        "LRS_STREAM_MIN_BYTES": str(1 << 20),
        "LRS_STREAM_SEND_TIMEOUT_S": str(SEND_TIMEOUT),
    }
    with serving(tmp_path_factory.mktemp("stream-caps"), "sqlite", extra) as server:
        yield server


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _stalled(server: Server, path: str, body: dict, key: str | None) -> socket.socket:
    """Send the request, read the response head (200, chunked) and nothing of the body."""
    payload = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in _auth(key).items())
    head += f"Content-Length: {len(payload)}\r\n\r\n"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    sock.sendall(head.encode() + payload)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection before answering"
        data += chunk
    status_line, _, headers = data.split(b"\r\n\r\n", 1)[0].partition(b"\r\n")
    assert b" 200 " in status_line, data[:500]
    assert b"transfer-encoding: chunked" in headers.lower()  # streamed, in flight
    return sock


def _read(client: httpx.Client, path: str, body: dict, key: str | None) -> httpx.Response:
    return client.post(path, json=body, headers=_auth(key))


def _assert_streams_refused(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text[:500]
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "5"
    problem = response.json()
    assert problem["status"] == 429 and problem["title"] == "Too many requests"
    detail = problem["detail"]
    assert f"you have {CAP} streamed responses in flight" in detail, detail
    assert "LRS_STREAM_MAX_PER_CLIENT" in detail
    assert "wait for your other streams to finish, or sample fewer points" in detail


def _served_again(client: httpx.Client, key: str, timeout: float) -> float:
    """Ask for a streamed body until it is served whole; return the seconds it took."""
    start = time.monotonic()
    while True:
        r = _read(client, CSV, READ, key)
        if r.status_code == 200:
            assert "content-length" not in r.headers  # streamed
            assert r.text.count("\n") == READ["steps"] + 1
            return time.monotonic() - start
        _assert_streams_refused(r)
        assert time.monotonic() - start < timeout, "the client's places never came back"
        time.sleep(0.05)


def test_a_client_over_its_streams_gets_429_and_is_served_once_they_are_dropped(cap_server):
    with (
        httpx.Client(base_url=cap_server.url, timeout=30) as client,
        HealthProbe(cap_server.url, every=0.05) as probe,
    ):
        assert client.get("/v1/info").json()["limits"]["stream_max_per_client"] == CAP
        socks = [_stalled(cap_server, CSV, STALLED, KEY_A) for _ in range(CAP - 1)]
        socks.append(_stalled(cap_server, "/v1/schedules/batch", BATCH, KEY_A))
        # one more of A's, a schedule or a batch that would be streamed: refused
        _assert_streams_refused(_read(client, CSV, STALLED, KEY_A))
        _assert_streams_refused(_read(client, "/v1/schedules/batch", BATCH, KEY_A))
        # A's small answers, sent in one piece, neither count nor are refused
        small = _read(client, CSV, SMALL, KEY_A)
        assert small.status_code == 200 and "content-length" in small.headers
        batch = _read(client, "/v1/schedules/batch", {"requests": [SMALL] * 3}, KEY_A)
        assert batch.status_code == 200 and len(batch.json()["results"]) == 3
        # another key, and a client without one, still get their streams
        for key in (KEY_B, None):
            with httpx.Client(
                base_url=cap_server.url,
                timeout=30,
                transport=httpx.HTTPTransport(local_address=new_address()),
            ) as other:
                r = _read(other, CSV, READ, key)
                assert r.status_code == 200 and "content-length" not in r.headers
                assert r.text.count("\n") == READ["steps"] + 1
        # A drops its streams (closes its sockets): its places are free again at once,
        # not only when the send timeout would have cut them
        for sock in socks:
            sock.close()
        took = _served_again(client, KEY_A, SEND_TIMEOUT + 10)
        assert took < SEND_TIMEOUT, f"freed after {took:.1f} s: by the cut, not the disconnect"
        # streams read to the end free their places: more than CAP of them one after another
        for _ in range(CAP + 1):
            _served_again(client, KEY_A, 0)
    print(
        f"\nplaces back {took * 1000:.0f} ms after the disconnect; /healthz worst {probe.worst * 1000:.0f} ms"
    )
    assert probe.failures == []
    assert probe.worst < 1.0, f"/healthz took {probe.worst:.2f} s meanwhile"


def test_streams_cut_at_the_send_timeout_free_their_places(cap_server):
    with httpx.Client(base_url=cap_server.url, timeout=30) as client:
        socks = [_stalled(cap_server, CSV, STALLED, KEY_A) for _ in range(CAP)]
        start = time.monotonic()
        _assert_streams_refused(_read(client, CSV, STALLED, KEY_A))
        # the client keeps its sockets open and reads nothing: the server cuts them after
        # SEND_TIMEOUT, and the cut gives the places back
        _served_again(client, KEY_A, SEND_TIMEOUT + 20)
        took = time.monotonic() - start
        print(
            f"\nplaces back {took:.1f} s after the cap was reached (send timeout {SEND_TIMEOUT} s)"
        )
        assert took >= SEND_TIMEOUT * 0.5
        for sock in socks:
            sock.close()


def test_a_cap_of_zero_lets_every_stream_through():
    scope = {"type": "http", "headers": [], "client": ("127.0.0.1", 1)}
    with StreamCap(0).held(scope), StreamCap(0).held(scope):
        pass
    cap = StreamCap(1)
    with cap.held(scope), pytest.raises(TooManyRequests, match="LRS_STREAM_MAX_PER_CLIENT"):
        cap.check(scope)
    assert cap.in_flight == {}  # released
