"""Running the real ``torch.nn`` dropout modules on a request's input.

:func:`sample` seeds torch's default generator of the device, draws the input (when the
request gives a ``shape``), calls the module once (on the input stacked ``samples`` times
when that is above 1) and derives the mask, then restores the generator's previous state.
The order is the replay contract: ``torch.manual_seed(seed); x = torch.randn(shape);
out = nn.Dropout(p)(x)`` gives the service's output.

The modules do not return their mask, so it is derived exactly:

* Dropout, Dropout1d/2d/3d: the output is ``input * noise`` with ``noise`` either 0 or
  ``1/(1-p) >= 1``, so a non-zero input element was kept exactly when its output is non-zero.
  When the input holds a zero, that test cannot tell, and the mask comes from a replay (below).
* AlphaDropout, FeatureAlphaDropout, and any input holding a zero: the generator is set back
  to its state before the call and the same module is called on ``torch.ones_like(input)``.
  torch draws the noise from the shape alone, so the replay draws the same noise; a kept one
  comes out positive (1/(1-p), or ``a + a·alpha·p``) and a dropped one as 0 or the negative
  SELU saturation value ``-a·alpha·(1-p)``. The mask is ``replay > 0``.

torch's default generator is process-wide, so the whole seeded section holds
:data:`GLOBAL_RNG_LOCK`; other code in this process that draws from torch's default
generator while requests run must hold it too, or both lose their reproducibility.
"""

import math
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from service.devices import resolve_device
from service.dropout.specs import (
    ALPHA,
    CHANNEL_WISE,
    RANKS,
    AlphaTransform,
    CheckedRequest,
    DropoutRequest,
    DropoutStats,
)
from service.errors import InvalidSpec

SELU_ALPHA = 1.7580993408473766
"""-alpha' of Klambauer et al. 2017: torch's constant in alpha dropout."""
PICKED_SEED_BITS = 53
"""Seeds the service picks fit in 53 bits, so JavaScript clients can send them back intact."""

GLOBAL_RNG_LOCK = threading.Lock()
"""Held while torch's default generators are seeded, drawn from and restored."""


@dataclass
class Sampled:
    """One dropout call: tensors on the CPU, float32 (``mask``: bool)."""

    input: torch.Tensor
    """The input before the call, the request's shape."""
    output: torch.Tensor
    """What the module returned; shape (samples, *shape) when samples > 1, else shape."""
    mask: torch.Tensor
    """True where an element was kept; the output's shape."""
    input_after: torch.Tensor
    """What the tensor handed to the module holds afterwards; the output's shape."""
    scale: float | None
    alpha_transform: AlphaTransform | None
    seed: int
    device: str
    stats: DropoutStats
    warnings: list[str] = field(default_factory=list)


def sample(checked: CheckedRequest) -> Sampled:
    """Return the module's output, mask and statistics for a checked request.

    Raises InvalidSpec (422) for CUDA asked for without CUDA, an explicit input outside
    float32's range, or an output that overflows it.
    """
    spec, shape = checked.spec, checked.shape
    device = resolve_device(spec.device)
    seed = spec.seed if spec.seed is not None else secrets.randbits(PICKED_SEED_BITS)
    module = getattr(torch.nn, spec.variant)(p=spec.p, inplace=spec.inplace)
    module.train(spec.training)
    k = spec.samples
    module_shape = _module_shape(spec.variant, shape, k)
    warnings = _warnings(spec, shape)

    with GLOBAL_RNG_LOCK, _seeded(device, seed) as generator:
        x = _make_input(spec, shape, device)
        before = x.clone() if spec.inplace and k == 1 else x
        if k == 1:
            arg = x.view(module_shape)
        else:
            arg = x.unsqueeze(0).expand(k, *shape).contiguous().view(module_shape)
        has_zero = spec.variant not in ALPHA and bool((arg == 0).any())
        state = generator.get_state()
        out = module(arg)
        mask = _mask(spec, module, arg, out, has_zero, generator, state)

    out_shape = (k, *shape) if k > 1 else shape
    output = out.reshape(out_shape)
    if spec.input is not None and not bool(torch.isfinite(output).all()):
        raise InvalidSpec(
            f"the output overflows float32: kept inputs times the scale exceed "
            f"{torch.finfo(torch.float32).max:.7g}; send smaller values",
            loc=("body", "input"),
        )
    mask = mask.reshape(out_shape)
    stats = _stats(spec, before, output, mask)
    return Sampled(
        input=before.cpu(),
        output=output.cpu(),
        mask=mask.cpu(),
        input_after=arg.reshape(out_shape).cpu(),
        scale=None if spec.p == 1 else 1.0 / (1.0 - spec.p),
        alpha_transform=_alpha_transform(spec),
        seed=seed,
        device=_device_name(device),
        stats=stats,
        warnings=warnings,
    )


@contextmanager
def _seeded(device: torch.device, seed: int) -> Iterator[torch.Generator]:
    """Seed the device's default generator, yield it, then restore its previous state."""
    if device.type == "cuda":
        torch.cuda.init()
        generator = torch.cuda.default_generators[_cuda_index(device)]
    else:
        generator = torch.default_generator
    saved = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield generator
    finally:
        generator.set_state(saved)


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _device_name(device: torch.device) -> str:
    return f"cuda:{_cuda_index(device)}" if device.type == "cuda" else "cpu"


def _make_input(spec: DropoutRequest, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    if spec.input is not None:
        x = torch.tensor(spec.input, dtype=torch.float32, device=device)
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            where = [int(i) for i in bad.nonzero()[0]]
            value = spec.input
            for i in where:
                value = value[i]
            raise InvalidSpec(
                "input" + "".join(f"[{i}]" for i in where) + f" = {value:g} does not fit in "
                f"float32 (|x| <= {torch.finfo(torch.float32).max:.7g})",
                loc=("body", "input", *where),
            )
        return x
    if spec.distribution == "normal":
        return torch.randn(shape, device=device)
    if spec.distribution == "uniform":
        return torch.rand(shape, device=device)
    return torch.ones(shape, device=device)


def _module_shape(variant: str, shape: tuple[int, ...], k: int) -> tuple[int, ...]:
    """Return the shape the module is called on: the input stacked ``k`` times.

    A batched input of a channel-wise variant, (N, C, *), becomes (k·N, C, *) so that torch
    still reads dim 1 as the channels; any other input becomes (k, *shape). With k = 1 that
    is the input itself, except that an unbatched (C, *) input gets its batch dim of 1:
    torch reads a 3-D Dropout2d input as (N, C, L), the contract (and torch's docs) as (C, H, W).
    """
    batched = variant == "FeatureAlphaDropout" or (
        variant in RANKS and len(shape) == max(RANKS[variant][0])
    )
    if batched:
        return (k * shape[0], *shape[1:])
    if k == 1 and variant not in CHANNEL_WISE:
        return shape
    return (k, *shape)


def _mask(
    spec: DropoutRequest,
    module: torch.nn.Module,
    arg: torch.Tensor,
    out: torch.Tensor,
    has_zero: bool,
    generator: torch.Generator,
    state: torch.Tensor,
) -> torch.Tensor:
    if not spec.training or spec.p == 0:
        return torch.ones_like(out, dtype=torch.bool)
    if spec.p == 1:
        return torch.zeros_like(out, dtype=torch.bool)
    if spec.variant not in ALPHA and not has_zero:
        return out != 0
    generator.set_state(state)
    return module(torch.ones_like(arg)) > 0


def _alpha_transform(spec: DropoutRequest) -> AlphaTransform | None:
    if spec.variant not in ALPHA or not spec.training or spec.p in (0.0, 1.0):
        return None
    a = 1.0 / math.sqrt((SELU_ALPHA**2 * spec.p + 1.0) * (1.0 - spec.p))
    return AlphaTransform(
        scale=a, shift=SELU_ALPHA * a * spec.p, dropped_value=-SELU_ALPHA * a * (1.0 - spec.p)
    )


def _stats(
    spec: DropoutRequest, x: torch.Tensor, output: torch.Tensor, mask: torch.Tensor
) -> DropoutStats:
    x64 = x.double()
    input_std, input_mean = torch.std_mean(x64, correction=0)
    output_std, output_mean = torch.std_mean(output.double(), correction=0)
    if spec.samples > 1:
        mean_output = output.sum(dim=0, dtype=torch.float64) / spec.samples
    else:
        mean_output = output.double()
    error = mean_output.sub_(x64).abs_()
    return DropoutStats(
        samples=spec.samples,
        kept_fraction=int(torch.count_nonzero(mask)) / mask.numel(),
        expected_kept_fraction=1.0 - spec.p if spec.training else 1.0,
        input_mean=float(input_mean),
        output_mean=float(output_mean),
        input_std=float(input_std),
        output_std=float(output_std),
        sample_mean_abs_error=float(error.mean()),
        sample_mean_max_abs_error=float(error.max()),
    )


def _warnings(spec: DropoutRequest, shape: tuple[int, ...]) -> list[str]:
    warnings = []
    if spec.variant == "Dropout2d" and len(shape) == 3:
        warnings.append(
            "Dropout2d read this 3-D input as (C, H, W), one sample without a batch dim, as "
            "torch documents, and ran on input.unsqueeze(0): whole (H, W) channels are dropped. "
            "nn.Dropout2d called on a 3-D tensor still reads it as (N, C, L) and warns."
        )
    if spec.inplace and spec.samples > 1:
        warnings.append(
            "with samples > 1 the module runs in place on the stacked copy of the input; "
            "input_after shows that copy, and `input` is unchanged"
        )
    return warnings
