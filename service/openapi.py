"""Print the app's OpenAPI document: ``python -m service.openapi > openapi/openapi.json``."""

import json
import sys

from service.main import create_app


def render() -> str:
    """Return the OpenAPI document as stable, indented JSON text."""
    return json.dumps(create_app().openapi(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
