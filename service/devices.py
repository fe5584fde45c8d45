"""Which torch device a request runs on, and which torch it is."""

from typing import Literal

import torch

from service.errors import InvalidSpec

DeviceName = Literal["auto", "cpu", "cuda"]

TORCH_VERSION = torch.__version__.split("+")[0]
"""The torch release every engine runs, without the local build tag (``2.13.0``)."""


def cuda_available() -> bool:
    """Return True when torch sees a usable CUDA device."""
    return torch.cuda.is_available()


def resolve_device(
    requested: DeviceName, *, loc: tuple[str, ...] = ("body", "device")
) -> torch.device:
    """Return the torch device for ``requested``: ``auto`` is CUDA when available, else CPU.

    Raises InvalidSpec (422) when ``cuda`` is asked for on a machine without CUDA.
    """
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda":
        if not cuda_available():
            raise InvalidSpec(
                "device 'cuda' was requested but CUDA is not available on this server; "
                "use 'auto' or 'cpu'.",
                loc=loc,
            )
        return torch.device("cuda")
    return torch.device("cuda" if cuda_available() else "cpu")


def device_names() -> list[str]:
    """Return the devices this server can compute on, e.g. ``['cpu', 'cuda:0']``."""
    names = ["cpu"]
    if cuda_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return names
