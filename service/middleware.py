"""Pure-ASGI middleware: request body size limit, curl-friendly content types, and JSON
bodies whose objects repeat a key refused (422), for every endpoint at once."""

import json
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PROBLEM_JSON, problem_body


async def _send_413(send: Send, limit: int) -> None:
    body = json.dumps(
        problem_body(
            413,
            f"The request body exceeds the limit of {limit} bytes (setting LRS_MAX_BODY_BYTES).",
            title="Payload too large",
            slug="payload-too-large",
        )
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, by header or while streaming.

    Also treats a POST body sent without a JSON content type (curl's ``-d`` default) as JSON,
    so ``curl -d '{...}' URL`` works without ``-H 'content-type: application/json'``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return

        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _send_413(send, self.max_bytes)
            return

        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype in (b"", b"application/x-www-form-urlencoded", b"text/plain"):
            new = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            new.append((b"content-type", b"application/json"))
            scope = dict(scope, headers=new)

        received = 0
        refused = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not response_started:
                        await _send_413(send, self.max_bytes)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if refused:
                return  # the 413 has been sent; whatever the app says now goes nowhere
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


class DuplicateKey(ValueError):
    """A JSON object of the body names ``key`` twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _Pairs(list):  # type: ignore[type-arg]
    """An object's (key, value) pairs as parsed, duplicates kept, to find where one is."""


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return result


def _first_duplicate(value: Any, path: list[str | int]) -> list[str | int] | None:
    """Return the body path of the first repeated key in the parsed ``value``."""
    if isinstance(value, _Pairs):
        seen: set[str] = set()
        for key, item in value:
            if key in seen:
                return [*path, key]
            seen.add(key)
            found = _first_duplicate(item, [*path, key])
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _first_duplicate(item, [*path, index])
            if found:
                return found
    return None


def duplicate_key_path(body: bytes) -> list[str | int] | None:
    """Return the path (``["scheduler", "gamma"]``) of the first key that an object of the
    JSON ``body`` repeats, or None (also for a body that is not JSON: the app says why)."""
    try:
        json.loads(body, object_pairs_hook=_refuse_duplicates)
    except DuplicateKey:
        return _first_duplicate(json.loads(body, object_pairs_hook=_Pairs), [])
    except (ValueError, RecursionError):
        return None
    return None


THREAD_ABOVE_BYTES = 64 << 10
"""Bodies larger than this are checked in a worker thread, off the event loop."""


async def _send_duplicate(send: Send, path: list[str | int]) -> None:
    key = path[-1]
    where = ".".join(str(p) for p in path)
    detail = (
        f"{where}: the key {key!r} appears twice in one JSON object; JSON parsers keep only "
        "one of them, so give it once"
    )
    error = {"loc": ["body", *path], "msg": detail, "type": "duplicate_key"}
    body = json.dumps(
        problem_body(
            422, detail, title="Validation failed", slug="validation-failed", errors=[error]
        )
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 422,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class DuplicateKeyMiddleware:
    """Refuse a JSON request body in which an object repeats a key with a 422 naming it
    (``{"steps": 10, "steps": 20}`` would otherwise mean 20, silently).

    Reads the body (``BodyLimitMiddleware``, outside it, has bounded it), checks it, and
    hands the same bytes on to the app. Bodies that are not JSON pass untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        ctype = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
        if not (ctype == b"application/json" or ctype.endswith(b"+json")):
            await self.app(scope, receive, send)
            return

        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if len(body) > THREAD_ABOVE_BYTES:
            path = await anyio.to_thread.run_sync(duplicate_key_path, body)
        else:
            path = duplicate_key_path(body)
        if path is not None:
            await _send_duplicate(send, path)
            return
        await self.app(scope, _replay([{"type": "http.request", "body": body}], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """Return a receive that gives ``messages`` first, then whatever ``receive`` gives."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
