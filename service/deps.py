"""FastAPI dependencies shared by the routers."""

from typing import Annotated

from fastapi import Depends, Request

from service.settings import Settings


async def app_settings(request: Request) -> Settings:
    """Return the settings the app was created with (async: no thread hop per request)."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(app_settings)]
