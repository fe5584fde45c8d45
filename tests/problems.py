"""The one check of an error response: status, problem+json, type, and what it says."""

from typing import Any


def assert_problem(
    response: Any, status: int = 422, slug: str | None = None, *fragments: str
) -> dict[str, Any]:
    """Assert ``response`` is an RFC 9457 problem with ``status`` (and ``type`` ending in
    ``/problems/<slug>``) whose detail contains every fragment; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    if slug is not None:
        assert body["type"].endswith(f"/problems/{slug}"), body["type"]
    for fragment in fragments:
        assert fragment in body["detail"], (fragment, body["detail"])
    return body
