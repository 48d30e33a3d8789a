"""The email service: ``uvicorn --factory services.email.app:create_app``.

Consumes ``notify.email`` (and its priority lane and ``retry.email``) through the
shared sender pipeline, renders each dispatch with the email templates and hands
it to the provider ``HERALD_EMAIL_PROVIDER`` names (SMTP or Resend). Serves the
RFC 8058 one-click unsubscribe endpoint.
"""

from fastapi import FastAPI

from shared import create_service, ledger_purge, retention

from .api import api
from .compose import EmailTemplates
from .handlers import build_routers, export, provider_hook
from .settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()
    templates = EmailTemplates()
    return create_service(
        settings,
        title="Herald email",
        description="The email sender: templates, SMTP or Resend, retries, dead letters and one-click unsubscribe.",
        kafka_routers=build_routers(settings, templates),
        api=api,
        export=export,
        hooks=[provider_hook(settings), retention(lambda: [ledger_purge("email", days=settings.ledger_retention_days)])],
    )
