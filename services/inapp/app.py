"""The inapp service: ``uvicorn --factory services.inapp.app:create_app``."""

from pathlib import Path

from fastapi import FastAPI

from shared import MessageTemplates, create_service

from .api import api
from .handlers import build_routers
from .settings import Settings

TEMPLATES = Path(__file__).with_name("templates")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    templates = MessageTemplates(TEMPLATES)
    return create_service(
        settings,
        title="Herald inapp",
        description="The in-app inbox: stores each user's notifications and serves them.",
        kafka_routers=build_routers(settings, templates),
        api=api,
    )
