"""FastAPI dependencies shared by the routers."""

from typing import Annotated

from fastapi import Depends, Request

from service.settings import Settings, bind_settings


async def app_settings(request: Request) -> Settings:
    """Return the settings the app was created with (async: no thread hop per request)."""
    return request.app.state.settings


async def bind_app_settings(request: Request) -> None:
    """Bind the app's settings for this request, so that validating a spec applies its
    limits (an app-wide dependency: it runs before any request body is validated)."""
    bind_settings(request.app.state.settings)


SettingsDep = Annotated[Settings, Depends(app_settings)]
