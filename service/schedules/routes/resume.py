"""POST /v1/schedules/resume: a spec and a stopping step (or a scheduler state) in, each resume
recipe's lr out.

The body is JSON (:class:`~service.schedules.resume.ResumeRequest`), or multipart/form-data
with a ``state`` file (a ``.pt`` of ``torch.save(scheduler.state_dict())``), the ``spec`` as a
JSON string and optionally ``next_steps``. The upload is read as it streams: over
``LRS_MAX_STATE_BYTES`` it is a 413 before more is read; it is loaded with
``torch.load(weights_only=True)`` only, then answered exactly as the JSON ``state`` is.
"""

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from service.deps import SettingsDep
from service.errors import ServiceError
from service.schedules import resume, resume_state
from service.schedules.routes import running

FIELDS_MAX_BYTES = 64 << 10
"""The form fields besides the file (the spec, next_steps) together, in bytes."""

FORM_FIELDS = ("state", "spec", "next_steps")


class BadMultipart(ServiceError):
    status = 400
    title = "Bad request"
    slug = "bad-request"


def _too_large(detail: str) -> resume_state.StateTooLarge:
    return resume_state.StateTooLarge(
        detail, loc=("body", "state"), headers={"Connection": "close"}
    )


async def read_upload(request: Request) -> dict[str, Any]:
    """Return the multipart form's fields (``state`` as bytes), read as the body streams and
    refused (413) as soon as the file passes LRS_MAX_STATE_BYTES."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

    settings = request.app.state.settings
    limit = settings.max_state_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + FIELDS_MAX_BYTES:
        raise _too_large(
            f"the upload is {int(length)} bytes; a state file may have at most {limit} bytes "
            f"(LRS_MAX_STATE_BYTES) and the other form fields {FIELDS_MAX_BYTES} bytes. A "
            "scheduler's state_dict() is a few KB: save scheduler.state_dict() alone, not the "
            "model or the optimizer."
        )
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadMultipart(
            "multipart/form-data without a boundary: let the client build the form "
            "(curl -F state=@state.pt -F spec=@spec.json)"
        )

    fields: dict[str, bytearray] = {}
    files: set[str] = set()
    current: dict[str, Any] = {
        "name": None,
        "header_field": b"",
        "header_value": b"",
        "headers": {},
    }
    sizes = {"fields": 0}

    def on_part_begin() -> None:
        current["name"] = None
        current["headers"] = {}

    # python-multipart bounds a part's headers (their size and count): past it, a 400 below
    def on_header_field(data: bytes, start: int, end: int) -> None:
        current["header_field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        current["header_value"] += data[start:end]

    def on_header_end() -> None:
        current["headers"][current["header_field"].lower()] = current["header_value"]
        current["header_field"] = b""
        current["header_value"] = b""

    def on_headers_finished() -> None:
        disposition = current["headers"].get(b"content-disposition", b"")
        _, params = parse_options_header(disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise BadMultipart("a form part has no name (Content-Disposition: form-data; name=...)")
        if name not in FORM_FIELDS:
            raise resume_state.Refused(
                f"unknown form field {name!r}: the form takes a 'state' file (the .pt), 'spec' "
                "(the compute request as JSON) and optionally 'next_steps'",
                loc=("body", name),
            )
        if name in fields:
            raise resume_state.Refused(
                f"the form field {name!r} is given twice", loc=("body", name)
            )
        if b"filename" in params:
            files.add(name)
        current["name"] = name
        fields[name] = bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        name = current["name"]
        chunk = data[start:end]
        fields[name] += chunk
        if name == "state":
            if len(fields[name]) > limit:
                raise _too_large(
                    f"the state file is over {limit} bytes (LRS_MAX_STATE_BYTES); a scheduler's "
                    "state_dict() is a few KB: save scheduler.state_dict() alone, not the model "
                    "or the optimizer"
                )
        else:
            sizes["fields"] += len(chunk)
            if sizes["fields"] > FIELDS_MAX_BYTES:
                raise _too_large(
                    f"the form fields besides the state file are over {FIELDS_MAX_BYTES} bytes"
                )

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
        },
    )
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
        if parser.state != MultipartState.END:
            raise MultipartParseError("it ends before its closing boundary")
    except MultipartParseError as exc:
        raise BadMultipart(
            f"the multipart/form-data body is malformed ({exc}); send it as a client builds "
            "it: curl -F state=@state.pt -F spec=@spec.json URL"
        ) from None
    if "state" not in fields:
        raise resume_state.Refused(
            "the form has no 'state' file: add the .pt (curl -F state=@state.pt ...)",
            loc=("body", "state"),
        )
    if "spec" not in fields:
        raise resume_state.Refused(
            "the form has no 'spec' field: add the compute request as JSON (curl -F "
            'spec=@spec.json or -F \'spec={"scheduler": ..., "steps": ...}\')',
            loc=("body", "spec"),
        )
    return {name: bytes(value) for name, value in fields.items()}


def _form_as_body(form: dict[str, Any]) -> tuple[bytes, list[str]]:
    """Return the JSON body the upload stands for (its state loaded from the .pt) and the
    notes loading it gave."""
    try:
        spec = json.loads(form["spec"])
    except RecursionError:
        raise resume_state.Refused(
            "the form field 'spec' nests too deeply; give the compute request as a JSON object",
            loc=("body", "spec"),
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise resume_state.Refused(
            f"the form field 'spec' is not JSON ({exc}); give the compute request as a JSON object",
            loc=("body", "spec"),
        ) from None
    loaded, notes = resume_state.picked(resume_state.load_pt(form["state"]))
    state = resume_state.jsonable(loaded)
    body: dict[str, Any] = {"spec": spec, "state": state}
    if "next_steps" in form:
        text = form["next_steps"].decode("utf-8", "replace").strip()
        try:
            body["next_steps"] = int(text)
        except ValueError:
            raise resume_state.Refused(
                f"the form field 'next_steps' is {text!r}; give a whole number of steps",
                loc=("body", "next_steps"),
            ) from None
    try:
        return json.dumps(body).encode(), notes
    except (TypeError, ValueError, RecursionError):
        raise resume_state.Refused(
            "the form field 'spec' cannot be read back as JSON; give the compute request as a "
            "JSON object of numbers, strings, lists and objects",
            loc=("body", "spec"),
        ) from None


class ResumeRoute(APIRoute):
    """The resume route: multipart uploads become the JSON body they stand for (the state
    loaded from the .pt), so both are validated and answered by one path."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "multipart/form-data":
                return await handler(request)
            try:
                form = await read_upload(request)
            except ClientDisconnect:
                # the client left, or the body went over LRS_MAX_BODY_BYTES while streaming
                # and the body-limit middleware has answered 413: nothing more to say
                return Response(status_code=499)
            body, notes = _form_as_body(form)
            sent = False
            receive = request.receive

            async def replay() -> dict[str, Any]:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            headers = [
                (k, v)
                for k, v in request.scope["headers"]
                if k not in (b"content-type", b"content-length")
            ]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            scope = dict(request.scope, headers=headers)
            scope.setdefault("state", {})
            scope["state"] = {**scope["state"], "state_source": "pt", "state_notes": notes}
            return await handler(Request(scope, replay))

        return route


router = APIRouter(tags=["schedules"], route_class=ResumeRoute)

MULTIPART_DOC: dict[str, Any] = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["state", "spec"],
                    "properties": {
                        "state": {
                            "type": "string",
                            "format": "binary",
                            "description": "A .pt written by torch.save(scheduler.state_dict(), "
                            "f) (or a checkpoint dict with a 'scheduler' entry), at most "
                            "LRS_MAX_STATE_BYTES; loaded with torch.load(weights_only=True).",
                        },
                        "spec": {
                            "type": "string",
                            "description": "The compute request (ScheduleRequest) as JSON text.",
                            "example": json.dumps(
                                {
                                    "scheduler": {"type": "StepLR", "step_size": 10, "gamma": 0.5},
                                    "steps": 60,
                                }
                            ),
                        },
                        "next_steps": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "How many optimizer steps to answer after the "
                            "state (default: to the end of spec.steps).",
                            "example": 20,
                        },
                    },
                },
                "encoding": {
                    "state": {"contentType": "application/octet-stream"},
                    "spec": {"contentType": "application/json"},
                },
                "example": {
                    "state": "(the bytes of state.pt)",
                    "spec": '{"scheduler": {"type": "StepLR", "step_size": 10, "gamma": 0.5}, '
                    '"steps": 60}',
                    "next_steps": 20,
                },
            }
        }
    }
}


@router.post(
    "/v1/schedules/resume",
    response_model=resume.ResumeResult,
    responses={
        400: {"description": "A malformed multipart/form-data body."},
        413: {
            "description": "The body is over LRS_MAX_BODY_BYTES, or the .pt over "
            "LRS_MAX_STATE_BYTES."
        },
        422: {
            "description": "Invalid spec, resume_at outside the run, a state that does not "
            "fit the spec's scheduler, a .pt that is not a plain state_dict(), or a limit."
        },
        429: {"description": "Expensive computations fill their share of the compute threads."},
    },
    summary="What a run resumed at a step (or from a saved state) gets, recipe by recipe",
    openapi_extra=MULTIPART_DOC,
)
async def resume_check(request: Request, body: resume.ResumeRequest, settings: SettingsDep):
    """Run the spec uninterrupted and resumed at `resume_at` by each recipe, with real torch
    objects, and say where each recipe's lr first differs.

    Recipes: `state_dict` (optimizer and scheduler `state_dict()` saved and loaded into fresh
    objects: the correct one), `last_epoch` (the scheduler rebuilt with `last_epoch=resume_at
    - 1` on a fresh optimizer with `initial_lr` set: `SequentialLR` goes wrong here),
    `fast_forward` (fresh objects stepped `resume_at` times) and `changed` (the saved state
    loaded into objects built from the `changed` spec). `first_difference` is the first
    optimizer step whose lr differs from the uninterrupted run (relative tolerance 1e-12).

    With `state` instead of `resume_at` (a scheduler's `state_dict()` as JSON, or a `.pt`
    uploaded as multipart/form-data: `curl -F state=@state.pt -F spec=@spec.json URL`), the
    state is loaded into the spec's scheduler and the answer is the lr of the next
    `next_steps` optimizer steps (`recipes.state`), the uninterrupted run at the same steps,
    and `state`: whether the loaded values equal the uninterrupted run's `state_dict()` at the
    state's `last_epoch`, and which differ.
    """
    if body.state is not None:
        source = getattr(request.state, "state_source", "json")
        notes = list(getattr(request.state, "state_notes", []))

        def work() -> dict[str, Any]:
            out = resume_state.check_state(body, settings, source)
            out["warnings"] = [*notes, *out["warnings"]]
            return out
    else:

        def work() -> dict[str, Any]:
            return resume.check(body, settings)

    heavy = resume.cost_share(body, settings) > settings.compute_heavy_share
    result = await running.run_budgeted(request, work, heavy=heavy)
    if result is None:  # the client left; the computation was stopped
        return Response(status_code=499)
    return Response(
        resume.ResumeResult.model_validate(result).model_dump_json(),
        media_type="application/json",
    )
