"""The sms service: `uvicorn --factory services.sms.app:create_app`.

Its channel sender is not built yet: the service runs with health, readiness
and metrics only, and consumes nothing, so dispatches for it wait in
`notify.sms` until it does.
"""

from fastapi import FastAPI

from shared import create_service

from .settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    return create_service(settings, title="Herald sms")
