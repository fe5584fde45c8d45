"""The browser page, ``/`` and ``/playground``: a form built from ``GET /v1/schedulers`` that
plots what the schedule API returns.

Everything the page loads comes from this service: its own files from ``static/`` and the
charting library from the installed ``plotly`` wheel (``plotly/package_data/plotly.min.js``),
so the page works on a machine without internet.
"""

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Header, Response
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).parent / "static"
ASSETS = "/playground/assets"
IMMUTABLE = "public, max-age=31536000, immutable"
"""Assets are addressed by a hash of their content (``?v=``), so a browser may keep them."""


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    media_type: str
    etag: str


_MEDIA = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@cache
def plotly_js() -> Path:
    """Return the path of ``plotly.min.js`` in the installed ``plotly`` package (looked up when
    first asked for, so the API starts even where the page's dependency is missing)."""
    return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))


@cache
def _asset(name: str) -> Asset | None:
    """Return one of the page's files (or plotly.js), read and gzipped once per process."""
    path = plotly_js() if name == "plotly.min.js" else STATIC / name
    if path.suffix not in _MEDIA or not path.is_file():
        return None
    if name != "plotly.min.js" and path.parent != STATIC:
        return None
    body = path.read_bytes()
    digest = hashlib.sha256(body).hexdigest()[:16]
    return Asset(body, gzip.compress(body, 6, mtime=0), _MEDIA[path.suffix], f'"{digest}"')


@cache
def _page() -> str:
    """Return the page's HTML with every asset URL versioned by its content hash."""
    html = (STATIC / "index.html").read_text()
    for name in ("app.js", "app.css", "plotly.min.js"):
        asset = _asset(name)
        assert asset is not None
        html = html.replace(f"{{{{{name}}}}}", f"{ASSETS}/{name}?v={asset.etag.strip(chr(34))}")
    return html


@router.api_route("/", methods=["GET", "HEAD"])
@router.api_route("/playground", methods=["GET", "HEAD"])
async def playground() -> HTMLResponse:
    """The schedule playground."""
    return HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})


@router.api_route(ASSETS + "/{name}", methods=["GET", "HEAD"])
async def asset(
    name: str,
    accept_encoding: str | None = Header(default=None),
    if_none_match: str | None = Header(default=None),
) -> Response:
    """The page's script and style sheet, and plotly.js from the installed package."""
    found = _asset(name)
    if found is None:
        return Response(status_code=404)
    headers = {"Cache-Control": IMMUTABLE, "ETag": found.etag, "Vary": "Accept-Encoding"}
    if if_none_match is not None and found.etag in if_none_match:
        return Response(status_code=304, headers=headers)
    if accept_encoding and "gzip" in accept_encoding:
        headers["Content-Encoding"] = "gzip"
        return Response(found.gzipped, media_type=found.media_type, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)
