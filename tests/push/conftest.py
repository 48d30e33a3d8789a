"""Fixtures of the push tests: the sandbox and the push service served over real HTTP (uvicorn in threads)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sandbox.app import create_app as create_sandbox
from services.push.app import create_app
from services.push.settings import Settings
from shared import Channel, Dispatch, Recipient

from ..support import bearer, make_topics, serve, settings_for


@pytest.fixture(scope="session")
def sandbox_url() -> Iterator[str]:
    with serve(create_sandbox()) as url:
        yield url


@pytest.fixture
async def sandbox(sandbox_url: str):
    async with httpx.AsyncClient(base_url=sandbox_url, timeout=30) as client:
        yield client


@pytest.fixture
def push_settings(infra, namespace, sandbox_url):
    """Settings of a push service on the test infrastructure that admits the sandbox as a dev host."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "push_dev_hosts": sandbox_url.removeprefix("http://"),
            "push_retry_base_seconds": 0.2,
            "push_retry_cap_seconds": 5.0,
            "frontend_url": "https://app.example.com",
        }
        values.update(overrides)
        return settings_for(Settings, infra, namespace, **values)

    return make


@contextlib.asynccontextmanager
async def push_service(settings: Settings):
    """The push service (API and Kafka consumers) over HTTP; yields (base URL, app)."""
    await make_topics(settings)
    app = create_app(settings)
    with serve(app) as url:
        yield url, app


async def browser_subscription(sandbox: httpx.AsyncClient, push_url: str, settings: Settings, user: str, label: str = "browser") -> dict[str, Any]:
    """A sandbox browser subscribes and registers itself with Herald for ``user``; returns what the sandbox answered."""
    answer = await sandbox.post(
        "/webpush/subscriptions",
        json={"label": label, "herald": {"herald_url": push_url, "authorization": bearer(settings, user)["Authorization"]}},
    )
    assert answer.status_code == 201, answer.text
    found = answer.json()
    assert found["registered"]["status"] == 201, found
    return found


def push_dispatch(user: str, **overrides: Any) -> Dispatch:
    values: dict[str, Any] = dict(
        notification_id=uuid.uuid4(),
        event_id=uuid.uuid4().hex,
        event_source="tests",
        event_type="message.received",
        category="messages",
        channel=Channel.push,
        recipient=Recipient(user_id=user),
        template="new_message",
        url="https://app.example.com/messages/c1",
        data={"sender_name": "Ada", "preview": "Are we still on for Tuesday?"},
    )
    values.update(overrides)
    return Dispatch(**values)


async def pushes_of(sandbox: httpx.AsyncClient, notification_id: uuid.UUID) -> list[dict[str, Any]]:
    """What the sandbox received for a notification."""
    messages = (await sandbox.get("/api/messages", params={"provider": "webpush"})).json()
    return [m for m in messages if m["meta"]["notification"].get("notification_id") == str(notification_id)]


def new_user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"
