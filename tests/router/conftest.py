"""A router running in-process on the session's real broker, PostgreSQL and Redis, with its own topics."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.router.app import create_app
from services.router.settings import Settings

from ..support import Infra, api_key, cloud_event, eventually, make_topics, produce, running, settings_for

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Harness:
    infra: Infra
    settings: Settings
    client: httpx.AsyncClient
    app: FastAPI

    @property
    def key(self) -> dict[str, str]:
        return api_key(self.settings)

    async def publish(self, event_type: str, data: Any, **attributes: Any) -> dict[str, Any]:
        event = cloud_event(event_type, data, **attributes)
        await self.send(event_type, event)
        return event

    async def send(self, event_type: str, value: bytes | dict[str, Any]) -> None:
        await produce(self.infra.kafka_bootstrap, self.settings.domain_topic(event_type), value, key=b"k")

    async def trace(self, event_id: str, count: int = 1, *, until=None) -> list[dict[str, Any]]:
        """The event's trace items once at least ``count`` are there (and ``until(items)`` holds)."""

        async def probe() -> list[dict[str, Any]] | None:
            response = await self.client.get(f"/v1/events/{event_id}/trace", headers=self.key)
            if response.status_code == 404:
                return None
            assert response.status_code == 200, response.text
            items = response.json()["items"]
            return items if len(items) >= count and (until is None or until(items)) else None

        return await eventually(probe, timeout=30, what=f"trace of {event_id}")

    async def put_recipient(self, user_id: str, **body: Any) -> httpx.Response:
        return await self.client.put(f"/v1/recipients/{user_id}", json=body, headers=self.key)


def by_channel(items: list[dict[str, Any]], user_id: str | None = None) -> dict[str, dict[str, Any]]:
    return {i["channel"]: i for i in items if user_id is None or i["user_id"] == user_id}


def new_user() -> str:
    return f"u_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def router(infra, namespace):
    settings = settings_for(Settings, infra, namespace)
    await make_topics(settings)
    app = create_app(settings)
    async with running(app) as client:
        yield Harness(infra, settings, client, app)
