"""Each Redis role can live on its own server or database: what each service keeps lands where its role's URL says."""

import uuid

import pytest
from redis.asyncio import Redis

from shared import REDIS_ROLES, HeraldSettings

from ..support import api_key, bearer, cloud_event, make_topics, running, serve, settings_for


def role_urls(infra) -> dict[str, str]:
    """A database of the session's Redis per role, apart from the test's own (below the xdist workers' databases)."""
    base, _, db = infra.redis_url.rpartition("/")
    return {role: f"{base}/{(int(db) - 4 - i) % 16}" for i, role in enumerate(REDIS_ROLES)}


async def keys_in(url: str, pattern: str) -> list[str]:
    redis = Redis.from_url(url)
    try:
        return [k.decode() async for k in redis.scan_iter(pattern)]
    finally:
        await redis.aclose()


def test_every_role_defaults_to_the_main_url_and_production_checks_each_ones_password():
    settings = HeraldSettings(environment="test", redis_url="redis://main:6379/0", redis_cache_url="redis://cache:6379/3")
    assert {role: settings.redis_url_for(role) for role in REDIS_ROLES} == {
        "dedupe": "redis://main:6379/0", "ratelimit": "redis://main:6379/0", "cache": "redis://cache:6379/3", "codes": "redis://main:6379/0",
    }
    from shared import UnsafeProductionSettings

    with pytest.raises(Exception) as refused:
        HeraldSettings(environment="production", redis_dedupe_url="redis://:changeme@dedupe:6379/0")
    assert isinstance(refused.value.errors()[0]["ctx"]["error"], UnsafeProductionSettings)
    assert "HERALD_REDIS_DEDUPE_URL" in str(refused.value)


async def test_ingress_keeps_dedupe_keys_and_rate_counters_where_their_roles_say_and_reports_each_redis(infra, namespace):
    from services.ingress.app import create_app
    from services.ingress.settings import Settings

    urls = role_urls(infra)
    settings = settings_for(Settings, infra, namespace, redis_dedupe_url=urls["dedupe"], redis_ratelimit_url=urls["ratelimit"])
    await make_topics(settings)
    event = cloud_event("auth.password_changed", {"user_id": "u-roles"}, id=uuid.uuid4().hex)
    async with running(create_app(settings)) as http:
        assert (await http.post("/v1/events", json=event, headers=api_key(settings))).status_code == 202
        ready = (await http.get("/readyz")).json()
    seen = f"{namespace}ingress:seen:*"
    assert await keys_in(urls["dedupe"], seen) and not await keys_in(infra.redis_url, seen)
    assert ready["checks"] == {"kafka": "ok", "postgres": "ok", "redis": "ok", "redis-dedupe": "ok", "redis-ratelimit": "ok"}


async def test_the_router_caches_profiles_and_sms_keeps_codes_and_limits_where_their_roles_say(infra, namespace):
    from sandbox.app import create_app as create_sandbox
    from services.router.directory import recipients_of
    from services.router.app import create_app as router_app
    from services.router.settings import Settings as RouterSettings
    from services.sms.app import create_app as sms_app
    from services.sms.settings import Settings as SmsSettings

    urls = role_urls(infra)
    roles = {"redis_cache_url": urls["cache"], "redis_codes_url": urls["codes"], "redis_ratelimit_url": urls["ratelimit"]}
    user = f"u-{uuid.uuid4().hex[:8]}"
    settings = settings_for(RouterSettings, infra, namespace, **roles)
    await make_topics(settings)
    app = router_app(settings)
    async with running(app):
        await recipients_of(app.state.resources).profiles([user])  # a lookup caches the profile
    assert await keys_in(urls["cache"], f"herald:router:*{user}") and not await keys_in(infra.redis_url, f"herald:router:*{user}")

    with serve(create_sandbox()) as sandbox_url:
        sms = settings_for(SmsSettings, infra, namespace, twilio_api_base=sandbox_url, sms_redis_prefix=f"{namespace}sms:", **roles)
        async with running(sms_app(sms)) as http:
            answer = await http.post("/v1/verifications", json={"phone": "+14155550142"}, headers=bearer(sms, user))
            assert answer.status_code == 202, answer.text
    assert await keys_in(urls["codes"], f"{namespace}sms:verify:code:{user}")
    assert await keys_in(urls["ratelimit"], f"{namespace}sms:verify:user:{user}")
    assert not await keys_in(infra.redis_url, f"{namespace}sms:*")
