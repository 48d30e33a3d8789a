from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest

from services.ingress import logic, repo
from services.ingress.app import create_app
from services.ingress.settings import Settings

from ..support import api_key, make_topics, running, settings_for

STRIPE_SECRET = "whsec_test_ingress_secret"
PARTNER_SECRET = "whsec_" + "c2NoZWR1bGVyLXNpZ25pbmcta2V5LWZvci10ZXN0cw=="


@dataclass
class Ingress:
    http: httpx.AsyncClient
    settings: Settings

    def service_key(self) -> dict[str, str]:
        return api_key(self.settings)

    async def new_key(self, db, *types: str, rate: int = 1000, producer: str = "bookings") -> dict[str, str]:
        key = logic.new_key()
        await repo.insert_key(
            conn=db, producer=producer, key_hash=logic.hash_key(key), key_prefix=logic.key_prefix(key),
            event_types=list(types), rate_per_minute=rate,
        )
        return {"Authorization": f"ApiKey {key}"}


def ingress_settings(infra, namespace, **overrides) -> Settings:
    values = dict(stripe_webhook_secret=STRIPE_SECRET, webhook_secrets=f"scheduler={PARTNER_SECRET}")
    values.update(overrides)
    return settings_for(Settings, infra, namespace, **values)


@pytest.fixture
async def ingress(infra, namespace):
    settings = ingress_settings(infra, namespace)
    await make_topics(settings)
    async with running(create_app(settings)) as http:
        yield Ingress(http, settings)


@pytest.fixture
def infra_env(infra):
    """The session's PostgreSQL and Redis (the broker is the test's own)."""
    return infra
