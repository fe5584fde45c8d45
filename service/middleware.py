"""Pure-ASGI middleware: request body size limit and curl-friendly content types."""

import json

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
