"""API keys: who may submit, list, read, follow, cancel and delete jobs and download their
artifacts.

Keys are configured as SHA-256 hex digests (``LRS_API_KEYS`` or ``LRS_API_KEYS_FILE``), so the
service never stores a key itself. A request's ``Authorization: Bearer KEY`` is hashed and
compared with every configured digest in constant time. With keys configured every
``/v1/jobs`` route needs a key (401 without), and a key sees only its own jobs: a job
remembers the digest of the key that created it (the store's ``owner`` column, written with
the job), ``GET /v1/jobs`` lists only the caller's, and every route naming another key's job
answers 404, as if it did not exist, so ids cannot be probed. Jobs submitted while the
service had no keys belong to no key: any key reaches them by id (as anyone could when they
were made), and no key's listing shows them.

Without keys configured everything stays open, as before.
"""

import hashlib
import hmac
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import NotFound, ServiceError
from service.settings import Settings

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class Unauthorized(ServiceError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class Forbidden(ServiceError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


def load_key_hashes(settings: Settings) -> frozenset[str]:
    """Return the configured key digests (lower-case hex), from the setting and the file."""
    raw = [part.strip() for part in settings.api_keys.split(",")]
    if settings.api_keys_file is not None:
        for line in settings.api_keys_file.read_text().splitlines():
            raw.append(line.split("#", 1)[0].strip())
    hashes = {h.lower() for h in raw if h}
    bad = [h for h in hashes if len(h) != 64 or any(c not in "0123456789abcdef" for c in h)]
    if bad:
        raise ValueError(
            f"LRS_API_KEYS / LRS_API_KEYS_FILE must hold SHA-256 hex digests (64 hex digits), "
            f"not {bad[0][:12]!r}…; make one with: printf %s YOUR_KEY | sha256sum"
        )
    return frozenset(hashes)


def key_hash(key: str) -> str:
    """Return the SHA-256 hex digest of ``key``, as configured in ``LRS_API_KEYS``."""
    return hashlib.sha256(key.encode()).hexdigest()


def _matches(digest: str, configured: frozenset[str]) -> bool:
    found = False
    for candidate in configured:  # no early exit: the time does not tell which one matched
        found |= hmac.compare_digest(digest, candidate)
    return found


_bearer = HTTPBearer(auto_error=False, description="An API key, when `LRS_API_KEYS` is set.")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _challenge(detail: str) -> Unauthorized:
    return Unauthorized(detail, headers={"WWW-Authenticate": 'Bearer realm="lr-schedules"'})


def identify(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    """Return the digest of the request's valid key, None when keys are off; 401 otherwise."""
    configured: frozenset[str] = request.app.state.api_key_hashes
    if not configured:
        return None
    if credentials is None:
        raise _challenge(
            "this endpoint needs an API key: send `Authorization: Bearer YOUR_KEY` "
            "(the service has LRS_API_KEYS set)"
        )
    digest = key_hash(credentials.credentials)
    if not _matches(digest, configured):
        raise _challenge("the API key is not one this service accepts")
    request.state.key_hash = digest
    return digest


async def job_writer(request: Request, credentials: BearerDep) -> str | None:
    """Dependency of job submission: the caller's key digest (None without keys)."""
    return identify(request, credentials)


async def job_reader(request: Request, credentials: BearerDep) -> str | None:
    """Dependency of the listing: the caller's key digest, whose jobs it lists (None without
    keys: every job); 401 without a valid key when keys are configured."""
    return identify(request, credentials)


async def job_owner(request: Request, job_id: str, credentials: BearerDep) -> str | None:
    """Dependency of every route naming a job (read, events, cancel, delete, artifacts): 404
    when the job is another key's."""
    digest = identify(request, credentials)
    if digest is None:
        return None
    store = request.app.state.jobs.store
    owner = await anyio.to_thread.run_sync(store.owner_of, job_id)
    if owner is not None and not hmac.compare_digest(owner, digest):
        raise NotFound(f"no job {job_id!r}", loc=("path", "job_id"))
    return digest


async def require_key_for_all(request: Request) -> None:
    """App-wide dependency: with ``LRS_REQUIRE_KEY_FOR_ALL``, every /v1 route needs a key.
    (It reads the header itself, so the OpenAPI document marks only the job routes as
    needing a bearer token, the default.)"""
    settings: Settings = request.app.state.settings
    if settings.require_key_for_all and request.url.path.startswith("/v1/"):
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        credentials = None
        if scheme.lower() == "bearer" and token.strip():
            credentials = HTTPAuthorizationCredentials(scheme=scheme, credentials=token.strip())
        identify(request, credentials)


def listening_host(argv: Sequence[str] | None = None, environ: dict[str, Any] | None = None) -> str:
    """Return the host uvicorn was told to listen on (``--host`` or ``UVICORN_HOST``)."""
    argv = list(sys.argv if argv is None else argv)
    for i, arg in enumerate(argv):
        if arg == "--host" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--host="):
            return arg.split("=", 1)[1]
    import os

    env = os.environ if environ is None else environ
    return str(env.get("UVICORN_HOST", "127.0.0.1"))


def exposure_warning(host: str, keys: frozenset[str]) -> str | None:
    """Return the start-up warning for a service reachable beyond loopback without keys."""
    if keys or host in LOOPBACK:
        return None
    return (
        f"WARNING: listening on {host} without API keys: anyone who reaches this port can "
        "submit, cancel and delete jobs and download their artifacts. Set LRS_API_KEYS "
        "(SHA-256 digests of your keys) for any deployment beyond loopback."
    )


def warn_if_exposed(keys: frozenset[str]) -> None:
    """Print the exposure warning to stderr (where uvicorn logs) when it applies."""
    message = exposure_warning(listening_host(), keys)
    if message:
        print(message, file=sys.stderr, flush=True)


def _problem_response(description: str, status: int, title: str, slug: str, detail: str) -> dict:
    example = {
        "type": f"/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    return {
        "description": description,
        "content": {"application/problem+json": {"example": example}},
    }


def document_access(app: Any) -> None:
    """Add the 401 (keys) and 429 (rate limits) answers to the OpenAPI operations they apply
    to, so the document says what a client must handle."""
    from service.ratelimit import COMPUTE

    original = app.openapi

    def openapi() -> dict[str, Any]:
        schema = original()
        for path, item in schema.get("paths", {}).items():
            for method, operation in item.items():
                responses = operation.setdefault("responses", {})
                keyed = path.startswith("/v1/jobs") and method in ("get", "post", "delete")
                if keyed:
                    responses.setdefault(
                        "401",
                        _problem_response(
                            "With LRS_API_KEYS set: no key or an unknown one. A key lists and "
                            "reaches only its own jobs: another key's job answers 404.",
                            401,
                            "Unauthorized",
                            "unauthorized",
                            "this endpoint needs an API key: send `Authorization: Bearer "
                            "YOUR_KEY` (the service has LRS_API_KEYS set)",
                        ),
                    )
                limited = (path == "/v1/jobs" and method == "post") or (
                    COMPUTE.match(path) and method in ("post", "get")
                )
                if limited:
                    responses.setdefault(
                        "429",
                        _problem_response(
                            "Rate limited (LRS_RATE_LIMIT_*): retry after `Retry-After` seconds.",
                            429,
                            "Too many requests",
                            "rate-limited",
                            "too many schedule computations (LRS_RATE_LIMIT_COMPUTE_PER_S): 60 "
                            "at once, then 1 a second per API key or client address; retry "
                            "after 1 s",
                        ),
                    )
        return schema

    app.openapi = openapi
