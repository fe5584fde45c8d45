"""GET /v1/schedulers: the catalog of scheduler types."""

from fastapi import APIRouter

from service.schedules import catalog

router = APIRouter(tags=["schedules"])


@router.get(
    "/v1/schedulers", response_model=catalog.Catalog, summary="Every supported scheduler type"
)
async def scheduler_catalog() -> catalog.Catalog:
    """Return each scheduler type with its parameters (JSON Schema), torch's defaults, a
    one-line description and a ready example request. Dashboards build their forms from it."""
    return catalog.catalog()
