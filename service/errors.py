"""Errors as RFC 9457 problem details.

Domain code raises :class:`ServiceError` subclasses, which know their HTTP status; the
handlers installed by :func:`install_error_handlers` render those, FastAPI's validation
errors and Starlette's HTTP errors all the same way, as ``application/problem+json``.
"""

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://lr-schedules.dev/problems/"

log = logging.getLogger("service")

Loc = Sequence[str | int]


class ServiceError(Exception):
    """Base of every error the service reports on purpose; renders as problem+json."""

    status: int = 400
    title: str = "Bad request"
    slug: str = "bad-request"

    def __init__(
        self,
        detail: str,
        *,
        loc: Loc | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        if loc is not None and errors is None:
            self.errors = [{"loc": list(loc), "msg": detail, "type": self.slug}]
        self.headers = headers
        self.extra = extra or {}


class InvalidSpec(ServiceError):
    """A well-formed request whose values cannot be computed (torch would refuse them)."""

    status = 422
    title = "Invalid specification"
    slug = "invalid-spec"


class LimitExceeded(ServiceError):
    """A request above one of the limits in force (see `GET /v1/info`)."""

    status = 422
    title = "Limit exceeded"
    slug = "limit-exceeded"


class ValidationFailed(ServiceError):
    """A request that does not match its schema (pydantic's errors, made readable)."""

    status = 422
    title = "Validation failed"
    slug = "validation-failed"


class NotFound(ServiceError):
    status = 404
    title = "Not found"
    slug = "not-found"


class Conflict(ServiceError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class NotAcceptable(ServiceError):
    status = 406
    title = "Not acceptable"
    slug = "not-acceptable"


class PayloadTooLarge(ServiceError):
    status = 413
    title = "Payload too large"
    slug = "payload-too-large"


class InternalError(ServiceError):
    """A bug, caught where one request of many can fail alone (a batch slot)."""

    status = 500
    title = "Internal server error"
    slug = "internal"


class TooManyRequests(ServiceError):
    """A client over its share (queued jobs, open streams); ``Retry-After`` says when to retry."""

    status = 429
    title = "Too many requests"
    slug = "too-many-requests"


class Unavailable(ServiceError):
    status = 503
    title = "Service unavailable"
    slug = "unavailable"


_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


def problem_body(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    slug: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    instance: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the RFC 9457 members of a problem as a dict (``type``, ``title``, ``status``,
    ``detail``, and ``instance``/``errors``/extras when given)."""
    title = title or _TITLES.get(status, "Error")
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (slug or title.lower().replace(" ", "-")),
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return body


def service_error_body(exc: ServiceError, instance: str | None = None) -> dict[str, Any]:
    """Return the problem body of a ServiceError."""
    return problem_body(
        exc.status,
        exc.detail,
        title=exc.title,
        slug=exc.slug,
        errors=exc.errors,
        instance=instance,
        extra=exc.extra,
    )


def validation_body(raw_errors: Sequence[Any], instance: str | None = None) -> dict[str, Any]:
    """Return the 422 problem body of pydantic validation errors, locations cleaned.

    A limit found while validating (error type ``limit_exceeded``) makes it the same
    ``limit-exceeded`` problem a limit found anywhere else is.
    """
    cleaned = _clean_validation_errors(raw_errors)
    limits = [err for err in cleaned if err["type"] == "limit_exceeded"]
    if limits:
        cls: type[ServiceError] = LimitExceeded
        cleaned = limits
    else:
        cls = ValidationFailed
    return problem_body(
        422,
        _summary(cleaned) or "The request is not valid.",
        title=cls.title,
        slug=cls.slug,
        errors=cleaned,
        instance=instance,
    )


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    slug: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """Return an ``application/problem+json`` response with the RFC 9457 members."""
    body = problem_body(
        status, detail, title=title, slug=slug, errors=errors, instance=instance, extra=extra
    )
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


_UNION_TAGS: set[str] = set()


def register_union_tags(tags: set[str]) -> None:
    """Name discriminator values that pydantic puts in error locations, to leave them out.

    ``["body", "scheduler", "StepLR", "step_size"]`` then reads ``["body", "scheduler",
    "step_size"]``, a path into the request body as the user wrote it.
    """
    _UNION_TAGS.update(tags)


def _body_path(loc: Sequence[Any]) -> list[str | int]:
    return [p for p in loc if p is not None and not (isinstance(p, str) and p in _UNION_TAGS)]


def _clean_validation_errors(raw: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for err in raw:
        loc = _body_path(err.get("loc", ()))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        ctx_error = (err.get("ctx") or {}).get("error")
        if err.get("type") == "json_invalid" and ctx_error:
            msg = f"JSON decode error: {ctx_error}"
        out.append({"loc": loc, "msg": msg, "type": str(err.get("type", "value_error"))})
    return out


def _summary(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:3]:
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


async def _on_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    body = service_error_body(exc, instance=request.url.path)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers, media_type=PROBLEM_JSON)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    body = validation_body(exc.errors(), instance=request.url.path)
    return JSONResponse(body, status_code=422, media_type=PROBLEM_JSON)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"No route for {request.method} {request.url.path}; see /docs for the API."
    if exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}; see /docs for the API."
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        detail = "The body could not be parsed as JSON (too deeply nested or not JSON)."
    return problem(exc.status_code, detail, headers=getattr(exc, "headers", None))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(
        500,
        "An unexpected error occurred; this is a bug in the service.",
        instance=request.url.path,
    )


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details; `errors` lists `{loc, msg, type}` for bad input.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["type", "title", "status", "detail"],
}
_PROBLEM_CONTENT = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
_BODY_ERRORS = {
    "400": "The body is not JSON that can be read (not UTF-8, or nested too deeply).",
    "413": "The body is larger than LRS_MAX_BODY_BYTES.",
    "422": "Invalid input: the problem's `errors` point at the fields to change.",
}


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI document say what the handlers and middleware really answer: every
    422 is problem+json (not FastAPI's JSON `HTTPValidationError`), and every operation that
    takes a body lists 400, 413 and 422. Returns ``schema``, changed in place."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    schema["components"]["schemas"].pop("HTTPValidationError", None)
    schema["components"]["schemas"].pop("ValidationError", None)
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                for status, description in _BODY_ERRORS.items():
                    responses.setdefault(status, {"description": description})
            for status, response in responses.items():
                if not status.startswith("4"):
                    continue
                content = response.get("content") or {}
                ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
                if not content or ref.endswith("/HTTPValidationError"):
                    examples = content.get("application/json", {})
                    response["content"] = {
                        PROBLEM_JSON: {**_PROBLEM_CONTENT[PROBLEM_JSON], **{
                            k: v for k, v in examples.items() if k != "schema"
                        }}
                    }  # fmt: skip
                elif PROBLEM_JSON in content and "schema" not in content[PROBLEM_JSON]:
                    content[PROBLEM_JSON] = {
                        **_PROBLEM_CONTENT[PROBLEM_JSON],
                        **content[PROBLEM_JSON],
                    }
    return schema


def install_error_handlers(app: FastAPI) -> None:
    """Render every error the app can raise as problem+json, and document it so."""
    app.add_exception_handler(ServiceError, _on_service_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
