"""HTTP for training jobs: translate requests to :class:`JobService` calls and back."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from service import auth
from service.errors import InvalidSpec, NotFound
from service.health import register_readiness_check
from service.jobs import specs
from service.jobs.artifacts import Artifacts
from service.jobs.events import EventHub
from service.jobs.executor import make_executor
from service.jobs.runner import RunConfig
from service.jobs.service import MAX_SEQ, JobService
from service.streaming import LimitedEventSourceResponse

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

SUPERVISE_EVERY_S = 1.0
"""How often the API checks that its worker processes are alive (and the data quota)."""

JobId = Annotated[str, Path(description="The job's id.")]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the store, recover from the last run, start the workers; stop them at the end."""
    settings = app.state.settings
    config = RunConfig.from_settings(settings)
    store = config.store()
    await anyio.to_thread.run_sync(store.create_schema)
    executor = make_executor(settings, store, config)
    jobs = JobService(settings, store, executor, Artifacts(settings.data_dir))
    await anyio.to_thread.run_sync(jobs.recover)
    executor.start()
    app.state.jobs = jobs
    hub = EventHub(store, settings)
    app.state.job_events = hub
    await anyio.to_thread.run_sync(jobs.maintain_storage, True)

    async def ready() -> tuple[bool, str]:
        try:
            await anyio.to_thread.run_sync(store.ping)
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return False, f"the job store {store.describe()} does not answer: {reason}"
        return await anyio.to_thread.run_sync(executor.status)

    register_readiness_check(app, "jobs", ready)

    async def supervise() -> None:
        while True:
            await anyio.sleep(SUPERVISE_EVERY_S)
            await anyio.to_thread.run_sync(executor.supervise)
            await anyio.to_thread.run_sync(jobs.maintain_storage)

    supervisor = asyncio.create_task(supervise())
    try:
        yield
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        await hub.aclose()
        await anyio.to_thread.run_sync(executor.stop)
        store.dispose()


def _jobs(request: Request) -> JobService:
    return request.app.state.jobs


def _client(request: Request) -> str:
    """Return who is asking, for the per-client caps: the digest of the request's verified
    API key (``auth`` sets it), else the peer address (behind a reverse proxy, run uvicorn
    with ``--proxy-headers`` so that is the client's, not the proxy's). An unverified
    Authorization header counts as the address: made-up keys get no fresh share."""
    digest = getattr(request.state, "key_hash", None)
    if digest:
        return f"key:{digest[:32]}"
    return f"ip:{request.client.host if request.client else 'unknown'}"


_view_bytes = specs.job_json


async def _job_response(record: Any, status_code: int = 200, **headers: str) -> Response:
    """Render the job off the event loop (a result may hold millions of values)."""
    body = await anyio.to_thread.run_sync(_view_bytes, record)
    return Response(body, status_code, headers=headers, media_type="application/json")


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {}}}


def _busy(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {
            "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}
        },
        "content": {"application/problem+json": {}},
    }


NO_JOB = _problem(
    "No such job (any id that is not 32 hex digits names none), or another API key's job."
)


JOB_EXAMPLE: dict[str, Any] = {
    "id": "3f2a9c0e6b1d4e8f9a7b5c3d1e0f2a4b",
    "status": "running",
    "created_at": "2026-01-01T12:00:00.000000Z",
    "started_at": "2026-01-01T12:00:00.010000Z",
    "finished_at": None,
    "progress": {
        "epoch": 2,
        "epochs": 5,
        "step": 50,
        "optimizer_steps": 190,
        "loss": 0.0052,
        "lr": 0.0364,
        "train_loss": 0.0513,
        "test_loss": 0.0079,
    },
    "spec": specs.JobSpec().model_dump(mode="json"),
    "result": None,
    "error": None,
}


def _example(value: Any, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": value}}}


JOB_EXAMPLES = {
    "seed": {"summary": "The seed's task, all defaults", "value": {}},
    "warmup_cosine": {
        "summary": "Warmup from 0, then cosine; gradients accumulated over 2 batches",
        "value": specs.JobSpec.model_config["json_schema_extra"]["examples"][1],
    },
    "own_series": {
        "summary": "Your own series, stepping ReduceLROnPlateau per epoch",
        "value": {
            "data": {"type": "series", "values": [0.0, 0.5, 0.9, 1.0, 0.8, 0.4, 0.0, -0.3] * 8},
            "scheduler": {"type": "ReduceLROnPlateau", "factor": 0.5, "patience": 1},
            "interval": "epoch",
            "batch_size": 8,
            "epochs": 10,
        },
    },
}


@router.post(
    "",
    status_code=202,
    response_model=specs.Job,
    summary="Submit a training job",
    responses={
        202: _example(
            {**JOB_EXAMPLE, "status": "queued", "progress": None},
            "Queued; `Location` names the job.",
        ),
        403: _problem("The Idempotency-Key was used by another API key (LRS_API_KEYS set)."),
        422: {"description": "Invalid spec, a limit exceeded, or a reused Idempotency-Key."},
        429: _busy("This client has LRS_JOB_QUEUE_MAX_PER_CLIENT jobs queued or running."),
        503: _busy("LRS_JOB_QUEUE_MAX jobs are queued or running, or the data quota is full."),
    },
)
async def submit_job(
    request: Request,
    owner: Annotated[str | None, Depends(auth.job_writer)],
    spec: Annotated[specs.JobSpec | None, Body(openapi_examples=JOB_EXAMPLES)] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description="Retrying with the same key and body returns the same job.",
        ),
    ] = None,
) -> Response:
    """Queue a job that trains the seed's MLP with the given schedule; `{}` is the seed's task.

    Returns 202 with the job and `Location: /v1/jobs/{id}`. A retry with the same
    `Idempotency-Key` and body returns the same job (header `Idempotent-Replayed: true`).
    """
    spec = spec or specs.JobSpec()
    record, created = await anyio.to_thread.run_sync(
        _jobs(request).submit, spec, idempotency_key, _client(request), owner
    )
    headers = {"Location": f"/v1/jobs/{record.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return await _job_response(record, 202, **headers)


@router.get(
    "",
    response_model=specs.JobPage,
    summary="List jobs, newest first (with API keys: the caller's own)",
    responses={
        200: _example(
            {"jobs": [JOB_EXAMPLE], "next_page_token": "eyJiZWZvcmUiOjQyLCJzdGF0dXMiOm51bGx9"},
            "A page of jobs; pass next_page_token back for the next one.",
        )
    },
)
async def list_jobs(
    request: Request,
    owner: Annotated[str | None, Depends(auth.job_reader)],
    status: Annotated[
        specs.JobStatus | None, Query(description="Only jobs in this status.")
    ] = None,
    page_size: Annotated[int, Query(ge=1, le=1000, description="Jobs per page.")] = 20,
    page_token: Annotated[
        str | None, Query(max_length=200, description="`next_page_token` of the last page.")
    ] = None,
) -> Response:
    """Return a page of jobs and the token of the next page (null on the last page). A page
    ends early, with a token, rather than pass LRS_JOB_PAGE_MAX_BYTES.

    With `LRS_API_KEYS` set, listing needs a key (401 without) and lists only the jobs that
    key submitted, on every page and with any `status` filter; jobs submitted while the
    service had no keys are in no key's listing. Without keys, every job is listed."""
    settings = request.app.state.settings
    page_size = min(page_size, settings.job_page_size_max)
    jobs = _jobs(request)

    def page() -> bytes:  # in a thread: the event loop only sends the bytes
        parts, token = jobs.list_page(
            status, page_size, page_token, _view_bytes, settings.job_page_max_bytes, owner
        )
        tail = json.dumps(token).encode()
        return b'{"jobs":[' + b",".join(parts) + b'],"next_page_token":' + tail + b"}"

    return Response(await anyio.to_thread.run_sync(page), media_type="application/json")


@router.get(
    "/{job_id}",
    response_model=specs.Job,
    summary="A job: status, progress, result",
    dependencies=[Depends(auth.job_owner)],
    responses={200: _example(JOB_EXAMPLE, "The job."), 404: NO_JOB},
)
async def get_job(request: Request, job_id: JobId) -> Response:
    """Return the job; 404 when there is none, or (with `LRS_API_KEYS` set) when another key
    submitted it."""
    record = await anyio.to_thread.run_sync(partial(_jobs(request).get, job_id, raw=True))
    return await _job_response(record)


@router.post(
    "/{job_id}/cancel",
    response_model=specs.Job,
    summary="Cancel a queued or running job",
    dependencies=[Depends(auth.job_owner)],
    responses={
        200: _example(
            {**JOB_EXAMPLE, "status": "cancelled", "started_at": None, "progress": None},
            "It was queued and is now cancelled.",
        ),
        202: _example(JOB_EXAMPLE, "Running: it stops before its next batch."),
        404: NO_JOB,
        409: _problem(
            "The job already finished, or finished (its last batch done) before the cancel "
            "took effect; the job's `cancel.outcome` is then `too_late`."
        ),
    },
)
async def cancel_job(request: Request, job_id: JobId) -> Response:
    """Cancel a queued job at once (200) or stop a running one before its next batch (202)."""
    record = await anyio.to_thread.run_sync(_jobs(request).cancel, job_id)
    return await _job_response(record, 200 if record.status == "cancelled" else 202)


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete a finished job and its artifacts",
    dependencies=[Depends(auth.job_owner)],
    responses={
        204: {"description": "Deleted, e.g. `curl -X DELETE localhost:8000/v1/jobs/{id}`."},
        404: NO_JOB,
        409: {
            "description": "The job is queued or running.",
            "content": {
                "application/problem+json": {
                    "example": {
                        "type": "/problems/conflict",
                        "title": "Conflict",
                        "status": 409,
                        "detail": "job 3f2a… is running; cancel it first, only finished jobs "
                        "can be deleted",
                    }
                }
            },
        },
    },
)
async def delete_job(request: Request, job_id: JobId) -> Response:
    """Delete the job, its events and its artifact folder (never what a link points at)."""
    await anyio.to_thread.run_sync(_jobs(request).delete, job_id)
    return Response(status_code=204)


@router.get(
    "/{job_id}/events",
    summary="Server-Sent Events: status, progress, then one `done` event",
    dependencies=[Depends(auth.job_owner)],
    responses={
        200: {
            "content": {
                "text/event-stream": {
                    "example": 'id: 3\nevent: progress\ndata: {"epoch": 1, "step": 38, '
                    '"loss": 0.0027, "lr": 0.047}\n\nid: 9\nevent: done\ndata: '
                    '{"status": "succeeded", "error": null}\n\n'
                }
            }
        },
        404: NO_JOB,
        422: _problem("Last-Event-ID is not an event id this service sent."),
        429: _busy("This client has LRS_JOB_EVENTS_MAX_STREAMS_PER_CLIENT streams open."),
        503: _busy(
            "The job has LRS_JOB_EVENTS_MAX_STREAMS_PER_JOB streams open, or the service "
            "LRS_JOB_EVENTS_MAX_STREAMS."
        ),
    },
)
async def job_event_stream(
    request: Request,
    job_id: JobId,
    last_event_id: Annotated[
        int | None, Header(ge=0, description="Resume after this event id.")
    ] = None,
) -> LimitedEventSourceResponse:
    """Stream `status` (queued, running), `progress` (every epoch and every
    `LRS_JOB_PROGRESS_EVERY` optimizer steps) and a final `done` event whose data holds the
    status. A finished job's stream replays its events and closes. Open streams are capped
    per client (429), per job and in all (503)."""
    jobs = _jobs(request)
    await anyio.to_thread.run_sync(jobs.get, job_id)
    if last_event_id is not None and last_event_id > MAX_SEQ:
        raise InvalidSpec(
            f"Last-Event-ID {last_event_id} is not an event id this service sent; send the "
            "`id` of the last event received",
            loc=("header", "Last-Event-ID"),
        )
    hub: EventHub = request.app.state.job_events
    ticket = hub.admit(job_id, _client(request))
    return LimitedEventSourceResponse(
        hub.stream(ticket, last_event_id or 0),
        send_timeout=request.app.state.settings.stream_send_timeout_s,
        background=BackgroundTask(hub.release, ticket),
    )


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download model.pt or metrics.json",
    dependencies=[Depends(auth.job_owner)],
    responses={
        200: {
            "content": {
                "application/octet-stream": {"example": "(torch.save of the state_dict)"},
                "application/json": {"example": {"id": "…", "train_loss": [0.051, 0.0048]}},
            }
        },
        404: {"description": "No such job or artifact (only succeeded jobs have them)."},
    },
)
async def get_artifact(
    request: Request, job_id: JobId, name: Annotated[str, Path(examples=["model.pt"])]
) -> FileResponse:
    """Return `model.pt` (a state_dict for `torch.load(f, weights_only=True)`) or
    `metrics.json` (spec and result)."""
    jobs = _jobs(request)
    record = await anyio.to_thread.run_sync(jobs.get, job_id)
    path = jobs.artifacts.path(job_id, name)
    if path is None:
        raise NotFound(
            f"job {job_id} ({record.status}) has no artifact {name!r}; succeeded jobs have "
            "model.pt and metrics.json until retention removes the oldest "
            "(LRS_JOB_ARTIFACTS_KEEP, LRS_JOB_DATA_MAX_BYTES)",
            loc=("path", "name"),
        )
    media = "application/json" if name.endswith(".json") else "application/octet-stream"
    return FileResponse(path, media_type=media, filename=f"{job_id}-{name}")
