"""Fixtures of the inapp tests: the service's settings, a database pool, users, a running app."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from services.inapp import repo
from services.inapp.app import create_app
from services.inapp.settings import Settings
from shared import create_pool

from ..support import make_topics, new_namespace, running, settings_for


@pytest.fixture
def settings(infra, namespace) -> Settings:
    return settings_for(Settings, infra, namespace)


@pytest.fixture
async def pool(infra) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(infra.database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def other_user() -> str:
    return f"v-{uuid.uuid4().hex[:10]}"


Seed = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def seed(pool) -> Seed:
    """Store one notification for a user, as the Kafka handler would."""

    async def store(user_id: str, *, category: str = "system_updates", title: str = "Hello", type: str = "system.update") -> dict[str, Any]:
        async with pool.acquire() as conn:
            row, _ = await repo.insert(
                conn=conn, id=uuid.uuid4(), user_id=user_id, category=category, type=type, title=title,
                body=f"{title} body", url="https://app.example/x", data={"k": 1}, created_at=datetime.now(UTC),
            )
        return row

    return store


@pytest.fixture(scope="module")
async def module_settings(infra) -> Settings:
    settings = settings_for(Settings, infra, new_namespace())
    await make_topics(settings)
    return settings


@pytest.fixture(scope="module")
async def client(module_settings):
    """One running app (lifespan, broker, pools) for a module's API tests, over ASGI."""
    async with running(create_app(module_settings)) as client:
        yield client
