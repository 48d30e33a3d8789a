"""The ingress service: ``uvicorn --factory services.ingress.app:create_app``."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter

from shared import create_service

from .api import build_api
from .logic import Refusal
from .settings import Settings
from .webhooks import build_webhooks


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Refusal)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = create_service(
        settings,
        title="Herald ingress",
        description="The HTTP door for domain events and provider webhooks.",
        api=build_api(settings),
    )
    resources = app.state.resources
    resources.extra["taken"] = Counter(
        "herald_ingress_events_total",
        "Events offered to ingress over HTTP, by producer and outcome (accepted, duplicate, unavailable)",
        ["producer", "outcome"],
        registry=resources.metrics.registry,
    )
    app.include_router(build_webhooks(settings))
    app.add_exception_handler(Refusal, _refused)
    return app
