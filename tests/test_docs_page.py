"""/docs works without internet: Swagger UI's files come from the service itself."""

import re


def test_docs_page_loads_its_assets_from_the_service(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), f"{asset} would need the internet"
        assert client.get(asset).status_code == 200, asset
    assert "/openapi.json" in page.text
