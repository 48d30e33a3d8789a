"""The ingress service: ``uvicorn --factory services.ingress.app:create_app``."""

from fastapi import FastAPI

from shared import create_service

from .api import api
from .settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    return create_service(
        settings,
        title="Herald ingress",
        description="The HTTP door for domain events and provider webhooks.",
        api=api,
    )
