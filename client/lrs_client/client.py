"""The HTTP clients: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both have the same methods; the async client's return awaitables (and ``follow``/``events``
async iterators). Each method is one endpoint of the service's v1 API.

- Errors: an error status raises a :class:`~lrs_client.errors.ProblemError` subclass holding
  the problem details (``status``, ``title``, ``detail``, ``errors``); an unreachable service
  raises :class:`~lrs_client.errors.ConnectionFailed`.
- Retries: a refused connection is retried for every call (nothing was sent); dropped
  connections, timeouts and 503 are retried for idempotent calls (reads, computations, job
  submission with its ``Idempotency-Key``, cancel, delete), with exponential backoff and
  jitter, honouring ``Retry-After``.
- ``follow(job)`` iterates a job's Server-Sent Events until its ``done`` event, reconnecting
  with ``Last-Event-ID`` when the stream drops, so no event is lost or repeated.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from lrs_client import __version__
from lrs_client.errors import ConnectionFailed, ProblemError, problem_from_response
from lrs_client.models import (
    BatchSlot,
    Catalog,
    DropoutResult,
    Event,
    Info,
    Job,
    JobPage,
    Schedule,
    SchedulerInfo,
    _numpy,
)

DEFAULT_URL = "http://127.0.0.1:8000"
Progress = Callable[[int, int | None], None]
"""Download progress callback: ``(bytes_so_far, total_bytes_or_None)``."""

MEDIA = {
    "json": "application/json",
    "csv": "text/csv",
    "npy": "application/x-npy",
    "svg": "image/svg+xml",
    "png": "image/png",
}

EXPORT_TARGETS = ("torch", "lightning", "transformers", "timm", "optax", "megatron")
"""The libraries ``export`` writes scripts for (the service's ``target`` values)."""

StateFile = str | os.PathLike | bytes | bytearray | BinaryIO
"""A scheduler state ``.pt`` for ``resume``: a path, its bytes, or a binary file object."""

_RETRY_ALWAYS = (httpx.ConnectError, httpx.ConnectTimeout)
_RETRY_IDEMPOTENT = (
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.ReadTimeout,
    httpx.PoolTimeout,
)


@dataclass
class _Call:
    """One request to make, and how to read its response."""

    method: str
    path: str
    parse: Callable[[httpx.Response], Any]
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = True
    progress: Progress | None = None
    data: dict[str, str] | None = None
    """Form fields: with ``files``, the body is multipart/form-data."""
    files: dict[str, tuple[str, bytes, str]] | None = None
    """Files to upload as ``(filename, content, media type)``, in memory so a retry resends
    them whole."""

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        return http.build_request(
            self.method, self.path, params=self.params, json=self.json, data=self.data,
            files=self.files, headers=self.headers,
        )  # fmt: skip


def _load_npy(content: bytes) -> Any:
    return _numpy().load(io.BytesIO(content), allow_pickle=False)


def _spec(spec: Any) -> Any:
    """Accept a dict, a JSON string or a path to a JSON file, or an object with
    ``model_dump`` (pydantic) as a spec."""
    if isinstance(spec, Path):
        return json.loads(spec.read_text())
    if hasattr(spec, "model_dump"):
        return spec.model_dump(mode="json", exclude_none=True)
    return spec


def _state_file(source: StateFile) -> tuple[str, bytes]:
    """The upload's file name and bytes (read now: a retry sends them again)."""
    if isinstance(source, bytes | bytearray):
        return "state.pt", bytes(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        return path.name, path.read_bytes()
    content = source.read()
    if not isinstance(content, bytes):
        raise TypeError("state_file must be opened in binary mode ('rb')")
    name = getattr(source, "name", None)
    return (Path(name).name if isinstance(name, str) else "state.pt"), content


def _job_id(job: Job | str) -> str:
    return job.id if isinstance(job, Job) else job


class _Base:
    """Endpoint methods; the transport (``_run``) is the sync or async subclass's."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = (url or os.environ.get("LRS_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("LRS_API_KEY")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self._headers = {"User-Agent": f"lrs-client/{__version__}", **(headers or {})}
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"

    def _run(self, call: _Call) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        if response is not None:
            retry_after = response.headers.get("retry-after")
            if retry_after and retry_after.replace(".", "", 1).isdigit():
                return min(float(retry_after), self.max_backoff)
        base = min(self.max_backoff, self.backoff * (2**attempt))
        return base * (0.5 + random.random() / 2)

    def _retry_delay(
        self, call: _Call, attempt: int, outcome: httpx.Response | httpx.TransportError
    ) -> float | None:
        """The one retry policy of both clients: seconds to wait before trying ``call`` again
        after ``outcome`` (a response, or the transport error the attempt raised), or None when
        ``outcome`` is the answer. A refused connection is retried for every call (nothing was
        sent); other transport errors and a 503 only for idempotent calls; at most
        ``retries`` times."""
        if attempt >= self.retries:
            return None
        if isinstance(outcome, httpx.TransportError):
            if isinstance(outcome, _RETRY_ALWAYS) or (
                call.idempotent and isinstance(outcome, _RETRY_IDEMPOTENT)
            ):
                return self._delay(attempt)
            return None
        if outcome.status_code == 503 and call.idempotent:
            return self._delay(attempt, outcome)
        return None

    def _answer(self, call: _Call, outcome: httpx.Response | httpx.TransportError) -> Any:
        """The call's result from its last outcome, or the error it raises."""
        if isinstance(outcome, httpx.TransportError):
            raise ConnectionFailed(self.url, outcome) from outcome
        if outcome.status_code >= 400:
            raise problem_from_response(outcome)
        return call.parse(outcome)

    # ------------------------------------------------------------ schedules

    def compute(self, spec: Any, *, numpy: bool = False) -> Schedule:
        """``POST /v1/schedules/compute``: the schedule of ``spec`` (a dict in the service's
        JSON, e.g. ``{"scheduler": {"type": "StepLR", "step_size": 30}, "steps": 100}``)."""
        return self._run(
            _Call(
                "POST",
                "/v1/schedules/compute",
                lambda r: Schedule.from_json(r.json(), numpy=numpy, headers=r.headers),
                json=_spec(spec),
                headers={"Accept": MEDIA["json"]},
            )
        )

    def compute_raw(self, spec: Any, format: str = "csv", *, progress: Progress | None = None):
        """The schedule in another format: ``csv``/``svg`` as text, ``png``/``npy`` as bytes."""
        return self._run(
            _Call(
                "POST",
                "/v1/schedules/compute",
                _raw(format),
                params={"format": format},
                json=_spec(spec),
                progress=progress,
            )
        )

    def compute_array(self, spec: Any, *, progress: Progress | None = None):
        """The lrs as a numpy array of shape (groups, points), downloaded as ``.npy`` (far
        smaller than JSON for long schedules); ``progress`` is told of the bytes received."""
        return self._run(
            _Call(
                "POST",
                "/v1/schedules/compute",
                lambda r: _load_npy(r.content),
                params={"format": "npy"},
                json=_spec(spec),
                progress=progress,
            )
        )

    def schedule(
        self, type: str, steps: int | None = None, *, numpy: bool = False, **params: Any
    ) -> Schedule:
        """``GET /v1/schedules/{type}``: one scheduler with scalar parameters, e.g.
        ``schedule("StepLR", 100, step_size=30, gamma=0.1)``."""
        return self._run(
            _Call(
                "GET",
                f"/v1/schedules/{type}",
                lambda r: Schedule.from_json(r.json(), numpy=numpy, headers=r.headers),
                params=_query(steps, params),
                headers={"Accept": MEDIA["json"]},
            )
        )

    def schedule_raw(
        self,
        type: str,
        steps: int | None = None,
        *,
        format: str = "csv",
        progress: Progress | None = None,
        **params: Any,
    ):
        """``GET /v1/schedules/{type}`` in ``csv``/``svg`` (text) or ``png``/``npy`` (bytes)."""
        return self._run(
            _Call(
                "GET",
                f"/v1/schedules/{type}",
                _raw(format),
                params={**_query(steps, params), "format": format},
                progress=progress,
            )
        )

    def batch(self, specs: list[Any], *, numpy: bool = False) -> list[BatchSlot]:
        """``POST /v1/schedules/batch``: one slot per spec, a result or a problem each."""

        def parse(r: httpx.Response) -> list[BatchSlot]:
            slots = []
            for slot in r.json()["results"]:
                status = int(slot["status"])
                if status == 200:
                    result = Schedule.from_json(slot["result"], numpy=numpy)
                    slots.append(BatchSlot(status, result=result))
                else:
                    body = slot.get("problem") or {}
                    slots.append(BatchSlot(status, problem=_problem_of(status, body)))
            return slots

        return self._run(
            _Call(
                "POST",
                "/v1/schedules/batch",
                parse,
                json={"requests": [_spec(s) for s in specs]},
            )
        )

    def batch_array(self, specs: list[Any], *, progress: Progress | None = None):
        """All lrs of a batch as one array (specs, groups, points), downloaded as ``.npy``."""
        return self._run(
            _Call(
                "POST",
                "/v1/schedules/batch",
                lambda r: _load_npy(r.content),
                params={"format": "npy"},
                json={"requests": [_spec(s) for s in specs]},
                progress=progress,
            )
        )

    def batch_raw(self, specs: list[Any], *, progress: Progress | None = None) -> bytes:
        """The ``.npy`` bytes of :meth:`batch_array`, e.g. to write to a file as they are."""
        return self._run(
            _Call(
                "POST",
                "/v1/schedules/batch",
                lambda r: r.content,
                params={"format": "npy"},
                json={"requests": [_spec(s) for s in specs]},
                progress=progress,
            )
        )

    def catalog(self) -> Catalog:
        """``GET /v1/schedulers``: every scheduler type with parameters and an example."""
        return self._run(_Call("GET", "/v1/schedulers", lambda r: Catalog.from_json(r.json())))

    def scheduler(self, type: str) -> SchedulerInfo:
        """One catalog entry; :class:`~lrs_client.errors.NotFound`-like KeyError when absent."""
        return self._run(
            _Call("GET", "/v1/schedulers", lambda r: Catalog.from_json(r.json())[type])
        )

    def resume(
        self,
        spec: Any,
        resume_at: int | None = None,
        *,
        state: dict[str, Any] | None = None,
        state_file: StateFile | None = None,
        next_steps: int | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """``POST /v1/schedules/resume``: what each resume recipe gives against the
        uninterrupted run, resuming at ``resume_at``; or, from a real scheduler's state, the
        lr of the ``next_steps`` steps after it (``recipes["state"]``) beside the uninterrupted
        run, and whether the state matches it (``state``).

        The state is ``state`` (``scheduler.state_dict()`` as a JSON-able dict) or
        ``state_file``: the ``.pt`` of ``torch.save(scheduler.state_dict(), f)`` (or a
        checkpoint dict with a ``"scheduler"`` entry) as a path, its bytes or an open binary
        file, uploaded as multipart/form-data; the service loads it with
        ``torch.load(weights_only=True)``. Other ``fields`` (``recipes``, ``changed``) go in
        the JSON body; an upload takes only ``spec`` and ``next_steps``."""
        if state is not None and state_file is not None:
            raise ValueError("give state (a dict) or state_file (a .pt), not both")
        if state_file is not None:
            if resume_at is not None or fields:
                extra = ["resume_at"] if resume_at is not None else []
                raise ValueError(
                    "a state_file upload takes spec and next_steps only, not "
                    + ", ".join(extra + sorted(fields))
                )
            name, content = _state_file(state_file)
            data = {"spec": json.dumps(_spec(spec))}
            if next_steps is not None:
                data["next_steps"] = str(next_steps)
            return self._run(
                _Call(
                    "POST",
                    "/v1/schedules/resume",
                    lambda r: r.json(),
                    data=data,
                    files={"state": (name, content, "application/octet-stream")},
                )
            )
        body = {"spec": _spec(spec), **fields}
        if resume_at is not None:
            body["resume_at"] = resume_at
        if state is not None:
            body["state"] = state
        if next_steps is not None:
            body["next_steps"] = next_steps
        return self._run(_Call("POST", "/v1/schedules/resume", lambda r: r.json(), json=body))

    def compare(self, specs: list[Any], labels: list[str] | None = None, **fields: Any):
        """``POST /v1/schedules/compare``: the series of several specs and where they differ."""
        body: dict[str, Any] = {"specs": [_spec(s) for s in specs], **fields}
        if labels is not None:
            body["labels"] = labels
        return self._run(_Call("POST", "/v1/schedules/compare", lambda r: r.json(), json=body))

    def export(self, spec: Any, target: str = "torch", *, checkpoint: bool = False) -> str:
        """``POST /v1/schedules/export``: a runnable script that builds the schedule with
        ``target`` (one of :data:`EXPORT_TARGETS`) and prints every optimizer step's lr per
        group as JSON. ``checkpoint=True`` (torch, transformers): the script also runs the
        resume-safe checkpoint recipe halfway. A spec the target cannot write raises
        :class:`~lrs_client.errors.InvalidSpec` naming the targets that can."""
        params: dict[str, Any] = {"target": target}
        if checkpoint:
            params["checkpoint"] = "true"
        return self._run(
            _Call("POST", "/v1/schedules/export", lambda r: r.text, params=params, json=_spec(spec))
        )

    def lint(self, spec: Any) -> list[dict[str, Any]]:
        """``POST /v1/schedules/lint``: the findings about a spec, each a dict with ``code``
        (stable; docs/lint.md), ``message``, ``step`` (the optimizer step where it bites, or
        None), ``see`` (a link explaining it) and ``kind`` (``caveat``: compute warns it too;
        ``hazard``: it bites in a training loop; ``error``). ``[]``: nothing to know."""
        return self._run(
            _Call("POST", "/v1/schedules/lint", lambda r: r.json()["findings"], json=_spec(spec))
        )

    # ------------------------------------------------------------ dropout

    def dropout(self, spec: Any = None, *, numpy: bool = False, **fields: Any) -> DropoutResult:
        """``POST /v1/dropout``, e.g. ``dropout(variant="Dropout", p=0.3, shape=[2, 3])``."""
        body = {**(_spec(spec) or {}), **fields}
        return self._run(
            _Call(
                "POST",
                "/v1/dropout",
                lambda r: DropoutResult.from_json(r.json(), numpy=numpy),
                json=body,
            )
        )

    # ------------------------------------------------------------ jobs

    def submit_job(self, spec: Any = None, *, idempotency_key: str | None = None) -> Job:
        """``POST /v1/jobs``: queue a training job (``{}``/None: the seed's task). An
        ``Idempotency-Key`` is generated when none is given, so a retried submission never
        queues the job twice."""
        key = idempotency_key or uuid.uuid4().hex
        return self._run(
            _Call(
                "POST",
                "/v1/jobs",
                lambda r: Job.from_json(
                    r.json(), replayed=r.headers.get("idempotent-replayed") == "true"
                ),
                json=_spec(spec) or {},
                headers={"Idempotency-Key": key},
            )
        )

    def get_job(self, job: Job | str) -> Job:
        """``GET /v1/jobs/{id}``."""
        return self._run(
            _Call("GET", f"/v1/jobs/{_job_id(job)}", lambda r: Job.from_json(r.json()))
        )

    def list_jobs(
        self,
        status: str | None = None,
        *,
        page_size: int | None = None,
        page_token: str | None = None,
    ) -> JobPage:
        """``GET /v1/jobs``: one page, newest first; pass ``next_page_token`` back for more."""
        params = {"status": status, "page_size": page_size, "page_token": page_token}

        def parse(r: httpx.Response) -> JobPage:
            body = r.json()
            return JobPage([Job.from_json(j) for j in body["jobs"]], body.get("next_page_token"))

        return self._run(
            _Call(
                "GET", "/v1/jobs", parse, params={k: v for k, v in params.items() if v is not None}
            )
        )

    def cancel_job(self, job: Job | str) -> Job:
        """``POST /v1/jobs/{id}/cancel``: cancelled at once when queued, else stopping."""
        return self._run(
            _Call("POST", f"/v1/jobs/{_job_id(job)}/cancel", lambda r: Job.from_json(r.json()))
        )

    def delete_job(self, job: Job | str) -> None:
        """``DELETE /v1/jobs/{id}``: a finished job, its events and artifacts."""
        return self._run(_Call("DELETE", f"/v1/jobs/{_job_id(job)}", lambda r: None))

    def artifact(
        self, job: Job | str, name: str = "metrics.json", *, progress: Progress | None = None
    ) -> bytes:
        """``GET /v1/jobs/{id}/artifacts/{name}``: ``model.pt`` or ``metrics.json``, as bytes."""
        return self._run(
            _Call(
                "GET",
                f"/v1/jobs/{_job_id(job)}/artifacts/{name}",
                lambda r: r.content,
                progress=progress,
            )
        )

    # ------------------------------------------------------------ service

    def health(self) -> bool:
        """``GET /healthz``: True when the process answers."""
        return self._run(_Call("GET", "/healthz", lambda r: r.json().get("status") == "ok"))

    def ready(self) -> dict[str, Any]:
        """``GET /readyz``: the readiness checks (raises Unavailable when not ready)."""
        return self._run(_Call("GET", "/readyz", lambda r: r.json(), idempotent=False))

    def info(self) -> Info:
        """``GET /v1/info``: versions, devices and the limits in force."""
        return self._run(_Call("GET", "/v1/info", lambda r: Info.from_json(r.json())))

    def metrics(self) -> str:
        """``GET /metrics``: Prometheus' text format."""
        return self._run(_Call("GET", "/metrics", lambda r: r.text))


def _query(steps: int | None, params: dict[str, Any]) -> dict[str, Any]:
    query: dict[str, Any] = {} if steps is None else {"steps": steps}
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = str(value).lower()
        query[name] = value
    return query


def _raw(format: str) -> Callable[[httpx.Response], Any]:
    if format not in MEDIA:
        raise ValueError(f"format must be one of {sorted(MEDIA)}, not {format!r}")
    if format in ("csv", "svg", "json"):
        return lambda r: r.text
    return lambda r: r.content


def _problem_of(status: int, body: dict[str, Any]) -> ProblemError:
    response = httpx.Response(status, json=body)
    return problem_from_response(response)


def _sse_events(lines: Iterator[str]) -> Iterator[Event]:
    """Parse Server-Sent Events from the stream's lines."""
    event_id: str | None = None
    name = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                payload = "\n".join(data)
                try:
                    parsed = json.loads(payload)
                except ValueError:
                    parsed = {"text": payload}
                yield Event(
                    int(event_id) if event_id and event_id.isdigit() else None, name, parsed
                )
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "id":
            event_id = value
        elif key == "event":
            name = value
        elif key == "data":
            data.append(value)


class _LineFeeder:
    """Turn text chunks into lines (for the async stream, which has no sync iterator)."""

    def __init__(self) -> None:
        self.buffer = ""

    def feed(self, chunk: str) -> list[str]:
        self.buffer += chunk
        *lines, self.buffer = self.buffer.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        return lines


class Client(_Base):
    """Blocking client: ``with Client("http://host:8000") as lrs: lrs.compute({...})``.

    ``url`` defaults to ``$LRS_URL`` (else ``http://127.0.0.1:8000``) and ``api_key`` to
    ``$LRS_API_KEY``.
    """

    def __init__(self, url: str | None = None, **options: Any) -> None:
        transport = options.pop("transport", None)
        super().__init__(url, **options)
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=self.timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, call: _Call) -> Any:
        attempt = 0
        while True:
            outcome = self._attempt(call)
            delay = self._retry_delay(call, attempt, outcome)
            if delay is None:
                return self._answer(call, outcome)
            time.sleep(delay)
            attempt += 1

    def _attempt(self, call: _Call) -> httpx.Response | httpx.TransportError:
        """Send ``call`` once: its response with the body read, or the transport error."""
        try:
            response = self._http.send(call.request(self._http), stream=True)
            try:
                reader = _Reader(response, call.progress)
                for chunk in response.iter_bytes():
                    reader.add(chunk)
            finally:
                response.close()
        except httpx.TransportError as exc:
            return exc
        return _done(response, reader.content)

    def events(self, job: Job | str, *, last_event_id: int | None = None) -> Iterator[Event]:
        """``GET /v1/jobs/{id}/events`` once: the events after ``last_event_id`` until the
        stream ends (no reconnection; see :meth:`follow`)."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, 60.0))
        try:
            with self._http.stream(
                "GET", f"/v1/jobs/{_job_id(job)}/events", headers=headers, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise problem_from_response(response)
                yield from _sse_events(response.iter_lines())
        except httpx.TransportError as exc:
            raise ConnectionFailed(self.url, exc) from exc

    def follow(self, job: Job | str, *, last_event_id: int | None = None) -> Iterator[Event]:
        """Every event of the job until its ``done`` event, reconnecting with
        ``Last-Event-ID`` when the stream drops (up to ``retries`` times in a row)."""
        failures = 0
        while True:
            try:
                for event in self.events(job, last_event_id=last_event_id):
                    failures = 0
                    if event.id is not None:
                        last_event_id = event.id
                    yield event
                    if event.event == "done":
                        return
            except ConnectionFailed:
                if failures >= self.retries:
                    raise
            failures += 1
            if failures > self.retries:
                raise ConnectionFailed(self.url, RuntimeError("the event stream kept ending"))
            time.sleep(self._delay(failures - 1))

    def wait(self, job: Job | str) -> Job:
        """Follow the job to its end and return its final record."""
        for _ in self.follow(job):
            pass
        return self.get_job(job)

    def iter_jobs(self, status: str | None = None, *, page_size: int = 100) -> Iterator[Job]:
        """Every job, newest first, page after page."""
        token = None
        while True:
            page = self.list_jobs(status, page_size=page_size, page_token=token)
            yield from page.jobs
            if not page.next_page_token:
                return
            token = page.next_page_token


class AsyncClient(_Base):
    """asyncio client: ``async with AsyncClient(url) as lrs: await lrs.compute({...})``.

    The same methods as :class:`Client`, awaited; ``events``/``follow`` are async iterators.
    """

    def __init__(self, url: str | None = None, **options: Any) -> None:
        transport = options.pop("transport", None)
        super().__init__(url, **options)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=self.timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, call: _Call) -> Any:  # type: ignore[override]
        attempt = 0
        while True:
            outcome = await self._attempt(call)
            delay = self._retry_delay(call, attempt, outcome)
            if delay is None:
                return self._answer(call, outcome)
            await asyncio.sleep(delay)
            attempt += 1

    async def _attempt(self, call: _Call) -> httpx.Response | httpx.TransportError:
        """Send ``call`` once: its response with the body read, or the transport error."""
        try:
            response = await self._http.send(call.request(self._http), stream=True)
            try:
                reader = _Reader(response, call.progress)
                async for chunk in response.aiter_bytes():
                    reader.add(chunk)
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            return exc
        return _done(response, reader.content)

    async def events(
        self, job: Job | str, *, last_event_id: int | None = None
    ) -> AsyncIterator[Event]:
        """The job's events after ``last_event_id`` until the stream ends (no reconnection)."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, 60.0))
        try:
            async with self._http.stream(
                "GET", f"/v1/jobs/{_job_id(job)}/events", headers=headers, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise problem_from_response(response)
                feeder = _LineFeeder()
                async for chunk in response.aiter_text():
                    for event in _sse_events(iter(feeder.feed(chunk))):
                        yield event
        except httpx.TransportError as exc:
            raise ConnectionFailed(self.url, exc) from exc

    async def follow(
        self, job: Job | str, *, last_event_id: int | None = None
    ) -> AsyncIterator[Event]:
        """Every event of the job until ``done``, reconnecting with ``Last-Event-ID``."""
        failures = 0
        while True:
            try:
                async for event in self.events(job, last_event_id=last_event_id):
                    failures = 0
                    if event.id is not None:
                        last_event_id = event.id
                    yield event
                    if event.event == "done":
                        return
            except ConnectionFailed:
                if failures >= self.retries:
                    raise
            failures += 1
            if failures > self.retries:
                raise ConnectionFailed(self.url, RuntimeError("the event stream kept ending"))
            await asyncio.sleep(self._delay(failures - 1))

    async def wait(self, job: Job | str) -> Job:
        """Follow the job to its end and return its final record."""
        async for _ in self.follow(job):
            pass
        return await self.get_job(job)


def _length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    return int(value) if value and value.isdigit() else None


class _Reader:
    """A response body as it arrives, with the download progress told of each chunk."""

    def __init__(self, response: httpx.Response, progress: Progress | None) -> None:
        self.total = _length(response)
        self.progress = progress
        self.parts: list[bytes] = []
        self.done = 0

    def add(self, chunk: bytes) -> None:
        self.parts.append(chunk)
        self.done += len(chunk)
        if self.progress is not None:
            self.progress(self.done, self.total)

    @property
    def content(self) -> bytes:
        return b"".join(self.parts)


def _done(response: httpx.Response, content: bytes) -> httpx.Response:
    """A response with its (decoded) body in memory, for the parsers."""
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "content-encoding"]
    return httpx.Response(
        response.status_code, headers=headers, content=content, request=response.request
    )
