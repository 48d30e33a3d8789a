"""The inapp service: ``uvicorn --factory services.inapp.app:create_app``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from shared import MessageTemplates, Resources, create_service, retention

from .api import api
from .handlers import build_routers, export, purges
from .settings import Settings
from .stream import StreamHub
from .web import web

TEMPLATES = Path(__file__).with_name("templates")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()
    templates = MessageTemplates(TEMPLATES)

    @contextlib.asynccontextmanager
    async def stream_hub(res: Resources) -> AsyncIterator[None]:
        hub = StreamHub(
            res.redis,
            settings.inbox_redis_prefix,
            queue_size=settings.stream_queue_size,
            max_per_user=settings.stream_max_per_user,
            max_per_user_total=settings.stream_max_per_user_total,
            slot_ttl_seconds=settings.stream_slot_ttl_seconds,
        )
        await hub.start()
        res.extra["hub"] = hub
        try:
            yield
        finally:
            await hub.stop()

    routes = APIRouter()
    routes.include_router(api)
    routes.include_router(web)
    app = create_service(
        settings,
        title="Herald inapp",
        description="The in-app inbox: stores each user's notifications, streams them as they arrive, serves the bell widget.",
        kafka_routers=build_routers(settings, templates),
        api=routes,
        export=export,
        hooks=[stream_hub, retention(lambda: purges(settings))],
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.allowed_origins(),
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        max_age=600,
    )
    return app
