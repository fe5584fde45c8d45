"""Item 8 of issue 15: what the app can see of a bad HTTP request is problem+json; uvicorn's
own limits are the same in `make serve` and the image, and in force on the real server."""

import json
import socket
import time

from .conftest import ROOT, uvicorn_flags


def _raw(server, data: bytes, wait: float = 10) -> bytes:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer or not _complete(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _request(path: str, body: bytes, *headers: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: t", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_make_serve_and_the_image_run_uvicorn_with_the_same_limits():
    flags = uvicorn_flags()
    for flag in ("--timeout-keep-alive", "--limit-concurrency", "--timeout-graceful-shutdown"):
        assert flag in flags
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = next(line for line in dockerfile.splitlines() if line.startswith("CMD "))
    args = json.loads(cmd[4:])
    assert " ".join(flags) in " ".join(args)
    assert int(flags[flags.index("--limit-concurrency") + 1]) > 1000  # the event-stream cap


def test_bad_bodies_the_app_sees_are_problem_json_and_the_connection_lives_on(server):
    cases = [
        # a Content-Length above the body limit: refused before any byte is read
        (_request("/v1/jobs", b"", "Content-Length: 99999999"), 413),
        # a chunked body that grows past the limit
        (
            _request(
                "/v1/jobs",
                b"100400\r\n" + b" " * 0x100400 + b"\r\n" + b"0\r\n\r\n",
                "Transfer-Encoding: chunked",
                "Content-Type: application/json",
            ),
            413,
        ),
        (_request("/v1/jobs", b"\xff\xfe{}", "Content-Length: 4"), 422),  # not UTF-8
        (_request("/v1/jobs", b"{not json", "Content-Length: 9"), 422),
        (_request("/v1/jobs", b'{"a":1,"a":2}', "Content-Length: 13"), 422),  # duplicate key
        (_request("/v1/jobs", b"[" * 5000, "Content-Length: 5000"), 400),  # nested too deep
    ]
    for data, status in cases:
        start = time.monotonic()
        answer = _raw(server, data)
        assert time.monotonic() - start < 5
        head = answer.split(b"\r\n\r\n", 1)[0].decode()
        assert head.startswith(f"HTTP/1.1 {status} "), (data[:80], head)
        assert "content-type: application/problem+json" in head.lower(), head


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(server):
    flags = uvicorn_flags()
    timeout = float(flags[flags.index("--timeout-keep-alive") + 1])
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout + 10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = b""
        while not _complete(answer):
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert sock.recv(65536) == b""  # the server hangs up on the idle connection
        assert timeout - 1 < time.monotonic() - start < timeout + 5
