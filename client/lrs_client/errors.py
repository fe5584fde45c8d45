"""Exceptions: every refusal of the service is a :class:`ProblemError` carrying its RFC 9457
problem details; a service that cannot be reached is :class:`ConnectionFailed`."""

from __future__ import annotations

import json
from typing import Any

import httpx


class LRSError(Exception):
    """Base of every error this client raises."""


class ConnectionFailed(LRSError):
    """The service could not be reached (refused, timed out, connection dropped), after
    the retries the client was allowed."""

    def __init__(self, url: str, cause: BaseException) -> None:
        super().__init__(f"cannot reach the service at {url}: {cause or type(cause).__name__}")
        self.url = url
        self.cause = cause


class ProblemError(LRSError):
    """The service answered with an error status; the fields are its problem details.

    ``errors`` is the validation errors list (``[{"loc": [...], "msg": ..., "type": ...}]``)
    when the service gave one, else an empty list.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        instance: str | None = None,
        body: dict[str, Any] | None = None,
        headers: httpx.Headers | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors = errors or []
        self.instance = instance
        self.body = body or {}
        self.headers = headers or httpx.Headers()

    @property
    def request_id(self) -> str | None:
        """The ``X-Request-ID`` of the refused request, to quote in a bug report."""
        return self.headers.get("x-request-id")


class Unauthorized(ProblemError):
    """401: no API key, or one the service does not accept."""


class Forbidden(ProblemError):
    """403."""


class NotFound(ProblemError):
    """404: no such job, artifact or route (also another key's job)."""


class Conflict(ProblemError):
    """409: e.g. deleting a running job, cancelling a finished one."""


class InvalidSpec(ProblemError):
    """422: the spec is invalid, torch refused it, or a limit was exceeded."""


class RateLimited(ProblemError):
    """429: too many requests; ``retry_after`` is the seconds to wait."""

    @property
    def retry_after(self) -> float | None:
        value = self.headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


class Unavailable(ProblemError):
    """503: not ready (still starting, the store is down)."""


_BY_STATUS: dict[int, type[ProblemError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidSpec,
    429: RateLimited,
    503: Unavailable,
}


def problem_from_response(response: httpx.Response) -> ProblemError:
    """Return the exception for an error response, from its problem+json body when it has one."""
    body: dict[str, Any] = {}
    try:
        parsed = json.loads(response.content) if response.content else {}
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    status = int(body.get("status") or response.status_code)
    title = str(body.get("title") or response.reason_phrase or "Error")
    detail = body.get("detail")
    if detail is None:
        detail = response.text[:500] if response.content and not body else title
    cls = _BY_STATUS.get(response.status_code, ProblemError)
    return cls(
        status,
        title,
        str(detail),
        type=body.get("type"),
        errors=body.get("errors"),
        instance=body.get("instance"),
        body=body,
        headers=response.headers,
    )
