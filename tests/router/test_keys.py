"""Service keys at the router and ingress: a key outside its scope gets 403, a hashed key works, admin actions are audited."""

from __future__ import annotations

import secrets

from services.ingress.app import create_app as create_ingress
from services.ingress.settings import Settings as IngressSettings
from services.router.app import create_app
from services.router.settings import Settings
from shared import hash_service_key

from ..support import cloud_event, make_topics, running, settings_for
from .conftest import new_user

PUBLISH, RECIPIENTS, TRACES, ROTATED, ADMIN = (secrets.token_urlsafe(32) for _ in range(5))
KEYS = ",".join(
    [
        f"shop:publish={PUBLISH}",
        f"crm:recipients={hash_service_key(RECIPIENTS)}",  # a service that only verifies holds the hash
        f"crm:recipients={ROTATED}",  # the next key of the same name, valid at once while it is rolled out
        f"support:traces={TRACES}",
        f"ops:admin={ADMIN}",
    ]
)


def key(value: str) -> dict[str, str]:
    return {"Authorization": f"ApiKey {value}"}


async def test_each_router_route_takes_only_keys_with_its_scope(infra, namespace, capfd):
    settings = settings_for(Settings, infra, namespace, api_keys=KEYS)
    await make_topics(settings)
    user = new_user()
    async with running(create_app(settings)) as client:

        async def put(value: str) -> int:
            return (await client.put(f"/v1/recipients/{user}", json={"email": "ada@example.com"}, headers=key(value))).status_code

        async def trace(value: str) -> int:
            return (await client.get(f"/v1/users/{user}/trace", headers=key(value))).status_code

        async def patch(value: str) -> int:
            body = {"preferences": [{"category": "promotional", "channel": "email", "enabled": False}]}
            return (await client.patch(f"/v1/users/{user}/preferences", json=body, headers=key(value))).status_code

        assert [await put(k) for k in (PUBLISH, TRACES, RECIPIENTS, ROTATED, ADMIN)] == [403, 403, 200, 200, 200]
        assert [await patch(k) for k in (PUBLISH, TRACES, RECIPIENTS, ADMIN)] == [403, 403, 200, 200]
        assert [await trace(k) for k in (PUBLISH, RECIPIENTS, TRACES, ADMIN)] == [403, 403, 200, 200]
        assert await put(hash_service_key(RECIPIENTS)) == 401  # the stored hash opens nothing
        refused = await client.get(f"/v1/users/{user}/trace", headers=key(PUBLISH))
        assert refused.json()["detail"] == "the key 'shop' may not do this: it needs the scope 'traces' (it has publish)"
        metrics = (await client.get("/metrics/")).text
    assert 'herald_audit_actions_total{action="recipient.put",actor="crm"} 2.0' in metrics
    assert 'herald_audit_actions_total{action="recipient.put",actor="ops"} 1.0' in metrics
    assert 'herald_audit_actions_total{action="preferences.patch",actor="crm"} 1.0' in metrics
    logged = capfd.readouterr().err
    assert f"audit: recipient.put by crm on {user}" in logged and "ada@example.com" not in logged
    assert RECIPIENTS not in logged and ROTATED not in logged


async def test_ingress_takes_service_keys_with_the_publish_scope_and_their_bound_sources(infra, namespace):
    settings = settings_for(IngressSettings, infra, namespace, api_keys=KEYS, api_key_sources="shop=/shop")
    await make_topics(settings)
    async with running(create_ingress(settings)) as client:

        async def publish(value: str, source: str) -> tuple[int, str]:
            event = cloud_event("payout.paid", {"user_id": new_user(), "payout_id": "p1", "amount": 100, "currency": "EUR"}, source=source)
            response = await client.post("/v1/events", json=event, headers=key(value))
            return response.status_code, response.json().get("detail", "")

        assert (await publish(PUBLISH, "/shop"))[0] == 202
        status, detail = await publish(PUBLISH, "/crm")
        assert (status, detail) == (403, "this key may not publish events from source '/crm'")
        status, detail = await publish(TRACES, "/support")
        assert (status, detail) == (403, "the key 'support' may not publish events: it needs the scope 'publish'")
        assert (await publish(ADMIN, "/anywhere"))[0] == 202  # admin holds every scope, bound to no source


async def test_erasure_is_an_admin_action_published_as_user_deleted_and_audited(infra, namespace, db, capfd):
    from ..support import eventually

    settings = settings_for(Settings, infra, namespace, api_keys=KEYS)
    await make_topics(settings)
    user = new_user()
    async with running(create_app(settings)) as client:
        assert (await client.put(f"/v1/recipients/{user}", json={"email": "ada@example.com"}, headers=key(RECIPIENTS))).status_code == 200
        refused = await client.delete(f"/v1/recipients/{user}", headers=key(RECIPIENTS))
        erased = await client.delete(f"/v1/recipients/{user}", headers=key(ADMIN))

        async def tombstoned():
            return await db.fetchval("SELECT deleted_at IS NOT NULL AND email IS NULL FROM router.recipients WHERE user_id = $1", user)

        assert await eventually(tombstoned, what="the router applying its own user.deleted")
        metrics = (await client.get("/metrics/")).text
    assert refused.status_code == 403 and "'admin'" in refused.json()["detail"]
    assert erased.status_code == 202 and erased.json()["event_id"]
    assert 'herald_audit_actions_total{action="recipient.erase",actor="ops"} 1.0' in metrics
    assert f"audit: recipient.erase by ops on {user}" in capfd.readouterr().err
