"""Content negotiation shared by the routers: ``?format=`` wins, then ``Accept``, then JSON.

Also the one ``.npy`` encoder every endpoint that serves arrays uses.
"""

import io
from collections.abc import Sequence

import numpy as np

from service.errors import NotAcceptable

MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "npy": "application/x-npy",
    "svg": "image/svg+xml",
    "png": "image/png",
}
"""The media type each format name is sent as."""

_BY_MEDIA = {
    "application/json": "json",
    "text/csv": "csv",
    "application/x-npy": "npy",
    "application/octet-stream": "npy",
    "image/svg+xml": "svg",
    "image/png": "png",
}
_WILDCARDS = {"*/*": "json", "*": "json", "application/*": "json", "text/*": "csv"}


def _ranked(accept: str) -> list[str]:
    """Return the media ranges of an Accept header, best first; q=0 ones left out."""
    ranked = []
    for i, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if q > 0:  # q=0 means "not acceptable"
            ranked.append((-q, i, media.lower()))
    return [media for _, _, media in sorted(ranked)]


def negotiate(format_param: str | None, accept: str | None, offered: Sequence[str]) -> str:
    """Return the format to answer in, one of ``offered`` (the first is the default).

    ``?format=`` wins (validated by the route's own type); else the best-ranked ``Accept``
    type that is offered; ``*/*`` or no header gives the default. Raises NotAcceptable (406)
    when the Accept header names only types this endpoint cannot produce.
    """
    if format_param:
        return format_param
    if not accept:
        return offered[0]
    for media in _ranked(accept):
        fmt = _BY_MEDIA.get(media) or _WILDCARDS.get(media)
        if media == "image/*":
            fmt = next((f for f in ("svg", "png") if f in offered), None)
        if fmt in offered:
            return fmt
        if media in ("*/*", "*"):
            return offered[0]
    served = ", ".join(sorted({MEDIA_TYPES[f].split(";")[0] for f in offered}))
    raise NotAcceptable(
        f"cannot produce any of {accept!r}; this endpoint serves {served} "
        f"(or use ?format={'|'.join(offered)})"
    )


def npy_bytes(array: np.ndarray) -> bytes:
    """Return ``array`` as the bytes of a ``.npy`` file (no pickles)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
