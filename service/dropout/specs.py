"""Dropout requests and responses: torch's own module and parameter names, as pydantic models.

A request names a real ``torch.nn`` dropout module and its arguments, so
``nn.Dropout(p=0.3, inplace=False)`` applied to ``torch.randn(2, 3, 4)`` is
``{"variant": "Dropout", "p": 0.3, "shape": [2, 3, 4]}``. Defaults are torch's.
This module is the only place a dropout request is validated: field by field in the models,
across fields (input or shape, rank per variant, limits) in :func:`check_request`.
"""

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from service.devices import DeviceName
from service.errors import InvalidSpec, LimitExceeded
from service.settings import Settings

Variant = Literal[
    "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"
]
TensorName = Literal["input", "output", "mask", "input_after"]
Distribution = Literal["normal", "uniform", "ones"]

SEED_MAX = 2**63 - 1

RANKS: dict[str, tuple[tuple[int, ...], str]] = {
    "Dropout1d": ((2, 3), "a 2-D (C, L) or 3-D (N, C, L) input"),
    "Dropout2d": ((3, 4), "a 3-D (C, H, W) or 4-D (N, C, H, W) input"),
    "Dropout3d": ((4, 5), "a 4-D (C, D, H, W) or 5-D (N, C, D, H, W) input"),
}
"""Ranks torch accepts for the channel-wise variants; the smaller one has no batch dim."""

CHANNEL_WISE = ("Dropout1d", "Dropout2d", "Dropout3d", "FeatureAlphaDropout")
ALPHA = ("AlphaDropout", "FeatureAlphaDropout")

_NESTED_NUMBERS = {
    "anyOf": [
        {"type": "array", "items": {"anyOf": [{"type": "number"}, {"type": "array"}]}},
        {"type": "null"},
    ]
}

EXAMPLE = {
    "variant": "Dropout",
    "p": 0.3,
    "inplace": False,
    "training": True,
    "shape": [2, 3, 4],
    "distribution": "normal",
    "seed": 0,
    "samples": 1,
    "device": "auto",
    "return": ["input", "output", "mask"],
}


class DropoutRequest(BaseModel):
    """Applies a ``torch.nn`` dropout module to an input tensor and reports what it did.

    torch: ``nn.Dropout(p=0.5, inplace=False)``, ``nn.Dropout1d``, ``nn.Dropout2d``,
    ``nn.Dropout3d``, ``nn.AlphaDropout`` and ``nn.FeatureAlphaDropout`` (same arguments),
    put in ``train()`` or ``eval()`` mode, called once on the input.

    Args:
        variant (str): the torch.nn class. Default: ``"Dropout"``.
        p (float): probability of an element (a whole channel for the channel-wise variants)
            to be zeroed, in [0, 1]. Default: 0.5.
        inplace (bool): run the module in place, so the input tensor itself is rewritten;
            ``input_after`` shows it. Default: False.
        training (bool): ``module.train()`` when True, ``module.eval()`` (identity) when False.
            Default: True.
        input (nested list, optional): the input tensor. Give this or ``shape``.
        shape (list of int, optional): shape of a generated input. Give this or ``input``.
        distribution (str): how a ``shape`` input is drawn: ``normal`` (``torch.randn``),
            ``uniform`` (``torch.rand``, [0, 1)) or ``ones``. Default: ``"normal"``.
        seed (int, optional): seeds torch's default generator of the device for this call;
            the service picks one (and returns it) when absent. Default: None.
        samples (int): how many independent masks to draw, as one batched call. Default: 1.
        device (str): ``auto`` (CUDA when available), ``cpu`` or ``cuda``. Default: ``"auto"``.
        return (list of str): tensors to send back, in this order for ``?format=npy``.
            Default: ``["input", "output", "mask"]``.

    Replay contract: on the device used, the service does exactly
    ``torch.manual_seed(seed); x = torch.randn(shape); out = nn.Dropout(p)(x)`` (the input is
    drawn first, then the mask), so that code run with the returned seed gives the same output.

    Example::

        >>> layer = nn.Dropout(p=0.3, inplace=False)
        >>> inputs = torch.randn(2, 3, 4)
        >>> output = layer(inputs)

    is ``{"variant": "Dropout", "p": 0.3, "shape": [2, 3, 4]}``.
    """

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        populate_by_name=True,
        serialize_by_alias=True,
        json_schema_extra={"examples": [EXAMPLE]},
    )

    variant: Variant = Field(default="Dropout", description="The torch.nn dropout class.")
    p: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Probability of an element (channel-wise variants: a channel) to be zeroed.",
    )
    inplace: bool = Field(
        default=False, description="Rewrite the input tensor itself; see `input_after`."
    )
    training: bool = Field(
        default=True, description="True: module.train(); False: module.eval(), the identity."
    )
    input: Annotated[list[Any] | None, WithJsonSchema(_NESTED_NUMBERS)] = Field(
        default=None,
        description="The input tensor as a rectangular nested list of finite numbers, as "
        "torch.tensor() takes it; or give `shape`.",
    )
    shape: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None,
        min_length=1,
        description="Shape of a generated input (instead of `input`).",
        examples=[[2, 3, 4]],
    )
    distribution: Distribution = Field(
        default="normal",
        description="How a `shape` input is drawn: 'normal' (torch.randn), 'uniform' "
        "(torch.rand, [0, 1)) or 'ones'.",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=SEED_MAX,
        description="Seed of torch's default generator for this call; picked (and returned) "
        "when absent. Same seed, device and request give the same output.",
    )
    samples: int = Field(
        default=1,
        ge=1,
        description="Independent masks to draw as one batched call. With K > 1 the module gets "
        "the input stacked K times, and output, mask and input_after gain a leading K dim.",
    )
    device: DeviceName = Field(
        default="auto", description="'auto' (CUDA when available), 'cpu' or 'cuda'."
    )
    return_: list[TensorName] = Field(
        default_factory=lambda: ["input", "output", "mask"],
        alias="return",
        description="Tensors to send back (stats always come). With ?format=npy the first one "
        "is the body.",
    )


class AlphaTransform(BaseModel):
    """What the alpha variants do in training: kept ``x`` becomes ``scale·x + shift``.

    With SELU's alpha' = -1.7581: ``scale = ((1-p)(1 + p·alpha'^2))^-1/2``,
    ``shift = -scale·alpha'·p``, and dropped elements become ``scale·alpha'·(1-p)``.
    """

    scale: float = Field(description="Factor on a kept element.")
    shift: float = Field(description="Added to a kept element after scaling.")
    dropped_value: float = Field(description="Value of every dropped element.")


class DropoutStats(BaseModel):
    """Statistics of the call, over all samples; always returned."""

    samples: int = Field(description="Independent masks drawn (K).")
    kept_fraction: float = Field(description="Fraction of elements the mask kept.")
    expected_kept_fraction: float = Field(
        description="1 - p in training; 1 in eval mode (nothing is dropped)."
    )
    input_mean: float
    output_mean: float = Field(description="Mean over every element of every sample.")
    input_std: float = Field(description="Population standard deviation of the input.")
    output_std: float = Field(description="Population standard deviation of the output.")
    sample_mean_abs_error: float = Field(
        description="mean |mean_k(output_k) - input| over the input's elements: how far the "
        "average output of the K samples is from the input. For Dropout, Dropout1d/2d/3d with "
        "p < 1 it shrinks towards 0 as K grows (about as 1/sqrt(K)), because E[output] = input: "
        "kept elements are scaled by 1/(1-p). The seed's x·(1-p) is the unscaled expectation, "
        "which this would not approach. The alpha variants keep the mean and variance of a "
        "standard-normal input instead (see output_mean, output_std), not each element's value."
    )
    sample_mean_max_abs_error: float = Field(
        description="max |mean_k(output_k) - input| over the input's elements."
    )


class DropoutResponse(BaseModel):
    """The tensors asked for in ``return`` (others null), the factor, the seed and stats.

    ``output``, ``mask`` and ``input_after`` have the input's shape, with a leading
    ``samples`` dim when ``samples`` > 1. ``mask`` is 1 where an element was kept and 0 where
    it was dropped, so ``output == input * mask / (1 - p)`` for Dropout and its channel-wise
    variants in training.
    """

    variant: Variant
    p: float
    training: bool
    inplace: bool
    shape: list[int] = Field(description="The input's shape.")
    input: list[Any] | None = Field(default=None, description="The input before the call.")
    output: list[Any] | None = Field(default=None, description="What the module returned.")
    mask: list[Any] | None = Field(default=None, description="1 kept, 0 dropped.")
    input_after: list[Any] | None = Field(
        default=None,
        description="What the tensor handed to the module holds afterwards: the output when "
        "`inplace` (in training), the input otherwise.",
    )
    scale: float | None = Field(
        description="1/(1-p), the factor on kept elements in training; null when p = 1."
    )
    alpha_transform: AlphaTransform | None = Field(
        default=None,
        description="The alpha variants' affine transform, when one was applied (0 < p < 1, "
        "training).",
    )
    seed: int = Field(description="The seed used; send it back to replay this call.")
    device: str = Field(description="The device the module ran on, e.g. 'cpu' or 'cuda:0'.")
    torch_version: str
    stats: DropoutStats
    warnings: list[str] = Field(default_factory=list)


def _nested_shape(value: Any, loc: tuple[str | int, ...], dims: int) -> tuple[int, ...]:
    """Return the shape of a rectangular nested list of finite numbers, or raise InvalidSpec."""
    if not isinstance(value, list):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidSpec(
                f"{_path(loc)} is {value!r}; the input holds numbers only", loc=("body", *loc)
            )
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond float64's range, e.g. 10**400
            raise InvalidSpec(
                f"{_path(loc)} is an integer too large for float32", loc=("body", *loc)
            ) from None
        if not finite:
            raise InvalidSpec(
                f"{_path(loc)} is {value}; numbers must be finite", loc=("body", *loc)
            )
        return ()
    if len(loc) > dims:
        raise InvalidSpec(
            f"input is nested deeper than {dims} levels (setting LRS_DROPOUT_MAX_DIMS)",
            loc=("body", *loc),
        )
    if not value:
        raise InvalidSpec(
            f"{_path(loc)} is an empty list; every dim needs at least one element",
            loc=("body", *loc),
        )
    first = _nested_shape(value[0], (*loc, 0), dims)
    for i in range(1, len(value)):
        item = value[i]
        if isinstance(item, list) != bool(first) or (first and len(item) != first[0]):
            raise InvalidSpec(
                f"input is ragged: {_path((*loc, i))} has {_describe(item)} where "
                f"{_path((*loc, 0))} has {_describe(value[0])}; torch needs a rectangular "
                "nested list",
                loc=("body", *loc, i),
            )
        if _nested_shape(item, (*loc, i), dims) != first:
            raise InvalidSpec(
                f"input is ragged below {_path((*loc, i))}; torch needs a rectangular nested list",
                loc=("body", *loc, i),
            )
    return (len(value), *first)


def _path(loc: tuple[str | int, ...]) -> str:
    return str(loc[0]) + "".join(f"[{i}]" for i in loc[1:])


def _describe(item: Any) -> str:
    if not isinstance(item, list):
        return "a number"
    return "1 item" if len(item) == 1 else f"{len(item)} items"


def _dims(shape: tuple[int, ...]) -> str:
    return f"{len(shape)} dim{'' if len(shape) == 1 else 's'} {list(shape)}"


@dataclass(frozen=True)
class CheckedRequest:
    """A request :func:`check_request` accepted, with its input's shape."""

    spec: DropoutRequest
    shape: tuple[int, ...]


def check_request(spec: DropoutRequest, settings: Settings) -> CheckedRequest:
    """Return the request with its input's shape once it is computable, else raise.

    Raises InvalidSpec (422) for a missing or doubled input, a ragged or non-finite list and
    a rank the variant does not take; LimitExceeded (422) naming the setting for a request
    over ``dropout_max_elements``, ``dropout_max_samples`` or ``dropout_max_total``.
    """
    if (spec.input is None) == (spec.shape is None):
        raise InvalidSpec(
            "give exactly one of `input` (a nested list) or `shape` (with `distribution`)",
            loc=("body", "input" if spec.input is not None else "shape"),
        )
    if spec.input is not None and "distribution" in spec.model_fields_set:
        raise InvalidSpec(
            "`distribution` draws a `shape` input; it cannot apply to an explicit `input`",
            loc=("body", "distribution"),
        )
    if spec.input is not None:
        field = "input"
        shape = _nested_shape(spec.input, ("input",), settings.dropout_max_dims)
    else:
        field = "shape"
        shape = tuple(spec.shape or ())
        if len(shape) > settings.dropout_max_dims:
            raise InvalidSpec(
                f"shape has {len(shape)} dims; at most {settings.dropout_max_dims} are accepted "
                "(setting LRS_DROPOUT_MAX_DIMS)",
                loc=("body", "shape"),
            )
    _check_rank(spec.variant, shape, field)

    elements = math.prod(shape)
    if elements > settings.dropout_max_elements:
        raise LimitExceeded(
            f"the input has {elements:,} elements; the limit is "
            f"{settings.dropout_max_elements:,} (setting LRS_DROPOUT_MAX_ELEMENTS)",
            loc=("body", field),
        )
    if spec.samples > settings.dropout_max_samples:
        raise LimitExceeded(
            f"samples is {spec.samples:,}; the limit is {settings.dropout_max_samples:,} "
            "(setting LRS_DROPOUT_MAX_SAMPLES)",
            loc=("body", "samples"),
        )
    if elements * spec.samples > settings.dropout_max_total:
        raise LimitExceeded(
            f"{elements:,} elements × {spec.samples:,} samples = "
            f"{elements * spec.samples:,}; the limit is {settings.dropout_max_total:,} "
            "(setting LRS_DROPOUT_MAX_TOTAL)",
            loc=("body", "samples"),
        )
    return CheckedRequest(spec, shape)


def _check_rank(variant: str, shape: tuple[int, ...], field: str) -> None:
    if variant in RANKS:
        ranks, wanted = RANKS[variant]
        if len(shape) not in ranks:
            raise InvalidSpec(
                f"{variant} takes {wanted}; {field} has {_dims(shape)}",
                loc=("body", field),
            )
    elif variant == "FeatureAlphaDropout" and len(shape) < 2:
        raise InvalidSpec(
            f"FeatureAlphaDropout takes an input of at least 2 dims, (N, C, *): torch reads "
            f"dim 0 as the batch and dim 1 as the channels; {field} has {_dims(shape)}",
            loc=("body", field),
        )
