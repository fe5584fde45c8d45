"""HTTP for dropout: translate a request to :func:`sampler.sample` and its result to JSON or npy."""

import math
from typing import Annotated, Any, Literal

import anyio
import numpy as np
import orjson
from fastapi import APIRouter, Body, Header, Query, Response

from service.deps import SettingsDep
from service.devices import TORCH_VERSION
from service.dropout import sampler, specs
from service.errors import InvalidSpec, LimitExceeded
from service.negotiation import negotiate, npy_bytes
from service.settings import Settings

router = APIRouter(tags=["dropout"])

Format = Literal["json", "npy"]
NPY = "application/x-npy"

FormatQuery = Annotated[
    Format | None,
    Query(alias="format", description="Output format; overrides the Accept header."),
]
AcceptHeader = Annotated[str | None, Header(include_in_schema=False)]

EXAMPLES: dict[str, dict[str, Any]] = {
    "seed": {
        "summary": "The seed: nn.Dropout(p=0.3, inplace=False) on torch.randn(2, 3, 4)",
        "value": specs.EXAMPLE,
    },
    "inplace": {
        "summary": "inplace=True: input_after shows the input rewritten",
        "value": {
            "p": 0.3,
            "inplace": True,
            "shape": [2, 3, 4],
            "seed": 0,
            "return": ["input", "output", "input_after"],
        },
    },
    "channels": {
        "summary": "Dropout2d zeroes whole channels of an explicit (C, H, W) input",
        "value": {
            "variant": "Dropout2d",
            "p": 0.5,
            "input": [[[1, 2], [3, 4]], [[5, 6], [7, 8]], [[9, 10], [11, 12]]],
            "seed": 3,
            "return": ["output", "mask"],
        },
    },
    "expectation": {
        "summary": "E[output] = input: 1000 masks of one tensor, stats only",
        "value": {"p": 0.3, "shape": [100], "samples": 1000, "seed": 0, "return": []},
    },
    "alpha": {
        "summary": "AlphaDropout keeps mean 0 and std 1 of a standard-normal input",
        "value": {"variant": "AlphaDropout", "p": 0.2, "shape": [100000], "return": []},
    },
}

DESCRIPTION = """\
Run a real `torch.nn` dropout module (`Dropout`, `Dropout1d`, `Dropout2d`, `Dropout3d`,
`AlphaDropout`, `FeatureAlphaDropout`) once on an input and return what it did.

**Replay.** The response's `seed` reproduces the call: on the device used the service does
`torch.manual_seed(seed); x = torch.randn(shape); out = nn.Dropout(p)(x)` (input first, then
the mask). Without a `seed` the service picks one.

**Mask.** `mask` is 1 where an element was kept; `output == input * mask / (1 - p)` for
Dropout and the channel-wise variants in training (`scale` is 1/(1-p)). The alpha variants
map kept elements to `a·x + b` and dropped ones to a fixed negative value (`alpha_transform`).

**Samples.** With `samples: K` the module runs once on the input stacked K times (a batched
(N, C, *) input of a channel-wise variant becomes (K·N, C, *), so dim 1 stays the channels);
`output`, `mask` and `input_after` then have a leading K dim. `stats.sample_mean_abs_error`
compares the mean of the K outputs with the input: it shrinks towards 0 as K grows, showing
E[output] = input. The x·(1-p) some notes give is the expectation before the 1/(1-p) scaling.

**Formats.** JSON by default (`mask` as 0/1). `Accept: application/x-npy` or `?format=npy`
returns one tensor as a `.npy` file: the first one named in `return` (`mask` as uint8, the
others float32), with the seed, device, scale and stats in `X-Seed`, `X-Device`, `X-Scale`
and `X-Stats` headers. To get several tensors as npy, make one call per tensor with the same
seed: each replays the same call.
"""

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The tensors asked for, scale, seed and stats; or one tensor as npy.",
        "content": {
            NPY: {
                "schema": {"type": "string", "format": "binary"},
                "description": "The first tensor of `return`: mask uint8, others float32.",
            }
        },
    },
    406: {"description": "The Accept header names no format this endpoint serves."},
    413: {"description": "The request body is larger than LRS_MAX_BODY_BYTES."},
    422: {"description": "Invalid request (p, input, rank for the variant) or over a limit."},
}


def _format(format_param: Format | None, accept: str | None) -> Format:
    return negotiate(format_param, accept, ("json", "npy"))  # type: ignore[return-value]


def _check_response_size(checked: specs.CheckedRequest, fmt: Format, settings: Settings) -> None:
    names = checked.spec.return_
    if fmt == "npy":
        if not names:
            raise InvalidSpec(
                'an npy response carries one tensor: name it first in `return`, e.g. "return": '
                '["output"]',
                loc=("body", "return"),
            )
        return
    per_input = sum(1 if name == "input" else checked.spec.samples for name in set(names))
    values = math.prod(checked.shape) * per_input
    if values > settings.dropout_json_max_values:
        raise LimitExceeded(
            f"the JSON response would carry {values:,} numbers; JSON responses are limited to "
            f"{settings.dropout_json_max_values:,} (setting LRS_DROPOUT_JSON_MAX_VALUES). "
            'Return fewer tensors ("return": [] gives the stats only) or ask for ?format=npy.',
            loc=("body", "return"),
        )


def _tensors(result: sampler.Sampled, names: list[specs.TensorName]) -> dict[str, np.ndarray]:
    arrays = {
        "input": result.input,
        "output": result.output,
        "mask": result.mask,
        "input_after": result.input_after,
    }
    out = {}
    for name in names:
        tensor = arrays[name]
        dtype = np.uint8 if name == "mask" else np.float32
        out[name] = tensor.numpy().astype(dtype, copy=False)
    return out


def _headers(result: sampler.Sampled) -> dict[str, str]:
    return {
        "X-Seed": str(result.seed),
        "X-Device": result.device,
        "X-Torch-Version": TORCH_VERSION,
        "X-Scale": "null" if result.scale is None else repr(result.scale),
        "X-Stats": orjson.dumps(result.stats.model_dump()).decode(),
    }


def _render(spec: specs.DropoutRequest, fmt: Format, settings: Settings) -> Response:
    """Check, sample and encode: everything CPU-bound, run in a worker thread."""
    checked = specs.check_request(spec, settings)
    _check_response_size(checked, fmt, settings)
    result = sampler.sample(checked)
    names = list(dict.fromkeys(spec.return_))
    tensors = _tensors(result, names[:1] if fmt == "npy" else names)
    if fmt == "npy":
        headers = {**_headers(result), "X-Tensor": names[0]}
        return Response(npy_bytes(tensors[names[0]]), media_type=NPY, headers=headers)
    body = {
        "variant": spec.variant,
        "p": spec.p,
        "training": spec.training,
        "inplace": spec.inplace,
        "shape": list(result.input.shape),
        **{name: tensors.get(name) for name in ("input", "output", "mask", "input_after")},
        "scale": result.scale,
        "alpha_transform": result.alpha_transform and result.alpha_transform.model_dump(),
        "seed": result.seed,
        "device": result.device,
        "torch_version": TORCH_VERSION,
        "stats": result.stats.model_dump(),
        "warnings": result.warnings,
    }
    content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, media_type="application/json", headers=_headers(result))


@router.post(
    "/v1/dropout",
    response_model=specs.DropoutResponse,
    responses=RESPONSES,
    summary="Apply a torch.nn dropout module: output, mask, scale and statistics",
    description=DESCRIPTION,
)
async def dropout(
    spec: Annotated[specs.DropoutRequest, Body(openapi_examples=EXAMPLES)],
    settings: SettingsDep,
    format_param: FormatQuery = None,
    accept: AcceptHeader = None,
) -> Response:
    fmt = _format(format_param, accept)
    return await anyio.to_thread.run_sync(_render, spec, fmt, settings)
