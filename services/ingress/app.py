"""The ingress service: ``uvicorn --factory services.ingress.app:create_app``.

SIGUSR1 closes intake: from then on every ``POST /v1/…`` (events and webhooks) answers 503
with ``Retry-After``, so producers and providers keep what they would have sent and try
again later. ``herald run`` sends it first when it stops, before waiting for the backlog.
"""

import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter

from shared import Erasure, Resources, create_service, erasure_router

from .api import build_api
from .logic import Refusal
from .settings import Settings
from .webhooks import build_webhooks


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Refusal)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)


INTAKE_RETRY_AFTER_SECONDS = 30


def _intake_control(app_state: dict):  # noqa: ANN202 - a hook factory for create_service
    @contextlib.asynccontextmanager
    async def hook(res) -> AsyncIterator[None]:  # noqa: ANN001
        import asyncio

        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGUSR1, lambda: app_state.update(closed=True))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests run apps in threads)
            pass
        try:
            yield
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGUSR1)

    return hook


async def holds_nothing(erasure: Erasure, res: Resources) -> dict[str, int]:
    """Ingress keeps nothing about a user (its dedupe keys name events, and expire): it reports the erasure done."""
    return {}


async def exports_nothing(user_id: str, res: Resources) -> dict[str, Any]:
    """Ingress keeps nothing about a user."""
    return {}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()
    intake: dict = {"closed": False}
    app = create_service(
        settings,
        title="Herald ingress",
        description="The HTTP door for domain events and provider webhooks.",
        api=build_api(settings),
        kafka_routers=[erasure_router(settings, "ingress", holds_nothing)],
        export=exports_nothing,
        hooks=[_intake_control(intake)],
    )
    app.state.intake = intake

    @app.middleware("http")
    async def closed_intake(request: Request, call_next):  # noqa: ANN001, ANN202
        if intake["closed"] and request.method == "POST" and request.url.path.startswith("/v1/"):
            return JSONResponse(
                {"detail": "Herald is stopping and takes no more events here; send again later"},
                status_code=503,
                headers={"Retry-After": str(INTAKE_RETRY_AFTER_SECONDS)},
            )
        return await call_next(request)

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
