"""Errors as RFC 9457 problem details.

Domain code raises :class:`ServiceError` subclasses, which know their HTTP status; the
handlers installed by :func:`install_error_handlers` render those, FastAPI's validation
errors and Starlette's HTTP errors all the same way, as ``application/problem+json``.
"""

import difflib
import html
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "/problems/"
"""Problem ``type`` URIs are references into this service: ``GET /problems/<slug>`` explains
each (see :data:`PROBLEMS`)."""

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
        ctx = err.get("ctx") or {}
        ctx_error = ctx.get("error")
        if err.get("type") == "json_invalid" and ctx_error:
            msg = f"JSON decode error: {ctx_error}"
        if err.get("type") == "union_tag_not_found":
            msg = f"add `{str(ctx.get('discriminator', 'type')).strip(chr(39))}`"
        if err.get("type") == "union_tag_invalid":
            msg = _unknown_tag(ctx)
        out.append({"loc": loc, "msg": msg, "type": str(err.get("type", "value_error"))})
    return out


def _unknown_tag(ctx: dict[str, Any]) -> str:
    """Return pydantic's "Input tag 'x' found using 'type' does not match any of the expected
    tags" in words: the value, the name it is closest to, and the values there are."""
    field = str(ctx.get("discriminator", "type")).strip("'")
    given = str(ctx.get("tag", ""))
    names = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",")]
    close = difflib.get_close_matches(given, names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown {field} {given!r}; {hint}one of {', '.join(names)}"


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
        allow = (getattr(exc, "headers", None) or {}).get("Allow")
        detail = f"{request.method} is not allowed on {request.url.path}; " + (
            f"it takes {allow} (see /docs for the API)." if allow else "see /docs for the API."
        )
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
    "400": "The body could not be parsed: JSON nested too deeply.",
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


PROBLEMS: dict[str, tuple[str, str, str]] = {
    "validation-failed": (
        "Validation failed",
        "The body or the query string does not match the API's schema: a field is missing, "
        "misspelt, of the wrong type or out of its range.",
        "Each entry of `errors` has `loc`, where in what you sent, and `msg`, what to change "
        "(with the name you probably meant for a misspelt type or field). Fix those and send "
        "the request again.",
    ),
    "invalid-spec": (
        "Invalid specification",
        "The request is well-formed, but the schedule cannot be computed: torch refused a "
        "value when building the optimizer or scheduler or at a step, or the lr stopped being "
        "finite.",
        "Change the field that `errors[].loc` names; the detail quotes torch's reason and "
        "the scheduler step.",
    ),
    "limit-exceeded": (
        "Limit exceeded",
        "The request is over one of the limits in force (GET /v1/info lists them).",
        "Lower what the detail names (steps, schedulers, param groups, points...), or, where "
        "you run the service, raise the `LRS_` setting it names.",
    ),
    "unprocessable-content": (
        "Unprocessable content",
        "The request was read but cannot be processed as it is.",
        "The detail says what to change.",
    ),
    "bad-request": (
        "Bad request",
        "The request could not be read (for example a body that is not JSON).",
        "Send a JSON body with `Content-Type: application/json`.",
    ),
    "unauthorized": (
        "Unauthorized",
        "The service needs an API key and the request has none, or an unknown one.",
        "Send `Authorization: Bearer <key>` with a key the service was configured with.",
    ),
    "forbidden": (
        "Forbidden",
        "The API key is valid but may not do this (for example another key's job).",
        "Use the key that created the resource.",
    ),
    "not-found": (
        "Not found",
        "No route, job or resource answers to this path.",
        "Check the path against /docs; a job id comes from the `Location` of its POST.",
    ),
    "method-not-allowed": (
        "Method not allowed",
        "The path exists but does not take this HTTP method.",
        "Use the method the `Allow` header names (POST /v1/schedules/compute takes JSON).",
    ),
    "not-acceptable": (
        "Not acceptable",
        "The `Accept` header names no format this endpoint can produce.",
        "Ask for one the detail lists, or use `?format=`.",
    ),
    "conflict": (
        "Conflict",
        "The resource is not in a state that allows this (for example deleting a running "
        "job, or an Idempotency-Key reused with another body).",
        "Wait for the job to finish or cancel it first; use a new Idempotency-Key.",
    ),
    "payload-too-large": (
        "Payload too large",
        "The request body is larger than `LRS_MAX_BODY_BYTES`.",
        "Send a smaller body (sample fewer points, split a batch).",
    ),
    "unsupported-media-type": (
        "Unsupported media type",
        "The body's `Content-Type` is not one this endpoint reads.",
        "Send JSON with `Content-Type: application/json`.",
    ),
    "too-many-requests": (
        "Too many requests",
        "A rate limit, or a client's cap on queued jobs or open streams, was reached.",
        "Wait for the number of seconds `Retry-After` gives, then try again.",
    ),
    "busy": (
        "Too many requests",
        "Expensive schedule computations (long, many groups, or a batch) already fill their "
        "share of the compute threads, and this one waited longer than LRS_COMPUTE_MAX_SECONDS "
        "for a turn. Cheap requests are still served.",
        "Wait for the number of seconds `Retry-After` gives and send it again, or make it "
        "cheaper: fewer steps (or `sample` with npy), fewer param groups, smaller batches.",
    ),
    "internal": (
        "Internal server error",
        "A bug in the service; nothing in the request needs to change.",
        "Report it with the request and the `X-Request-ID` it got.",
    ),
    "internal-server-error": (
        "Internal server error",
        "A bug in the service; nothing in the request needs to change.",
        "Report it with the request and the `X-Request-ID` it got.",
    ),
    "unavailable": (
        "Service unavailable",
        "A dependency (the job store, the workers, the broker) cannot serve this now.",
        "Try again after `Retry-After`; GET /readyz says what is not ready.",
    ),
    "service-unavailable": (
        "Service unavailable",
        "A dependency (the job store, the workers, the broker) cannot serve this now.",
        "Try again after `Retry-After`; GET /readyz says what is not ready.",
    ),
    "not-ready": (
        "Not ready",
        "A dependency of the service is not ready (the detail names it).",
        "Wait and ask GET /readyz again; see the named check's detail.",
    ),
}
"""What each problem ``type`` means and how to fix it: ``(title, meaning, what to do)``."""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1><p>{meaning}</p><h2>What to do</h2><p>{fix}</p>
<p>Problem type <code>{uri}</code>; the API is at <a href="/docs">/docs</a>.</p></body></html>
"""


async def _problem_page(request: Request) -> HTMLResponse:
    slug = request.path_params["slug"]
    if slug not in PROBLEMS:
        raise StarletteHTTPException(404, f"no problem type {slug!r}; see /docs for the API.")
    title, meaning, fix = (html.escape(part) for part in PROBLEMS[slug])
    page = _PAGE.format(title=title, meaning=meaning, fix=fix, uri=PROBLEM_BASE + slug)
    return HTMLResponse(page)


def install_error_handlers(app: FastAPI) -> None:
    """Render every error the app can raise as problem+json, and document it so."""
    app.add_exception_handler(ServiceError, _on_service_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_api_route(
        PROBLEM_BASE + "{slug}", _problem_page, methods=["GET"], include_in_schema=False
    )
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
