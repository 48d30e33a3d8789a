"""Email test fixtures: the sandbox providers on free ports and the email service against them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.email.app import create_app
from services.email.settings import Settings
from shared import Channel, Dispatch, Recipient, notification_id

from ..support import make_topics, running, settings_for
from .servers import sandbox_server


@pytest.fixture(scope="session")
def sandbox_urls() -> Iterator[tuple[str, int]]:
    with sandbox_server() as urls:
        yield urls


@pytest.fixture
def sandbox(sandbox_urls) -> Iterator["Sandbox"]:
    url, smtp_port = sandbox_urls
    box = Sandbox(url, smtp_port)
    box.clear()
    yield box
    box.clear()


class Sandbox:
    """Talks to the sandbox over HTTP, as a person at its page would."""

    def __init__(self, url: str, smtp_port: int) -> None:
        self.url = url
        self.smtp_port = smtp_port

    def clear(self) -> None:
        httpx.delete(f"{self.url}/api/messages").raise_for_status()
        for provider in ("smtp", "resend"):
            httpx.put(f"{self.url}/api/{provider}/delay", json={"ms": 0}).raise_for_status()

    def fault(self, provider: str, status: int, *, count: int = 1, retry_after: int | None = None) -> None:
        httpx.post(f"{self.url}/api/faults", json={"provider": provider, "status": status, "count": count, "retry_after": retry_after}).raise_for_status()

    async def messages(self, provider: str | None = None) -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{self.url}/api/messages", params={"provider": provider} if provider else None)
        return response.json()


@pytest.fixture
def email_service(infra, namespace, sandbox):
    """Start the email service on the test infrastructure: ``async with (await email_service(**overrides)) as (settings, client)``."""

    async def start(**overrides: Any):
        values = dict(
            smtp_port=sandbox.smtp_port,
            resend_api_base=sandbox.url,
            email_retry_base_seconds=0.05,
            email_retry_cap_seconds=0.2,
            smtp_timeout_seconds=5.0,
            resend_timeout_seconds=5.0,
        )
        values.update(overrides)
        settings = settings_for(Settings, infra, namespace, **values)
        await make_topics(settings)
        return _Running(settings)

    return start


class _Running:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self._ctx = running(self.app)

    async def __aenter__(self) -> tuple[Settings, httpx.AsyncClient]:
        client = await self._ctx.__aenter__()
        return self.settings, client

    async def __aexit__(self, *exc: object) -> None:
        await self._ctx.__aexit__(*exc)


def email_dispatch(
    template: str = "booking_confirmed_student",
    *,
    event_type: str = "booking.confirmed",
    category: str = "lesson_updates",
    data: dict[str, Any] | None = None,
    email: str | None = "ada@example.com",
    user_id: str = "u_1",
    locale: str = "en",
    critical: bool = False,
    url: str | None = "http://localhost:3000/bookings/b_42",
) -> Dispatch:
    """A dispatch for the email channel with the example data of its event type."""
    from shared.events import EVENT_MODELS

    example = EVENT_MODELS[event_type].model_config["json_schema_extra"]["examples"][0]
    event_id = uuid.uuid4().hex
    return Dispatch(
        notification_id=notification_id(source="tests", event_id=event_id, user_id=user_id, channel="email"),
        event_id=event_id,
        event_source="tests",
        event_type=event_type,
        category=category,
        critical=critical,
        channel=Channel.email,
        recipient=Recipient(user_id=user_id, email=email),
        locale=locale,
        template=template,
        url=url,
        data=data if data is not None else dict(example),
    )
