"""The router service: ``uvicorn --factory services.router.app:create_app``."""

from fastapi import FastAPI

from shared import create_service

from .catalogue import load_catalogue
from .handlers import build_router
from .settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    catalogue = load_catalogue(settings.catalogue_path)
    return create_service(
        settings,
        title="Herald router",
        description="Turns domain events into one dispatch per recipient and channel.",
        kafka_routers=[build_router(settings, catalogue)],
    )
