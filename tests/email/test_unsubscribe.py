"""One-click unsubscribe: the signed link switches the category's email preference off through the router's API."""

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from services.email.logic import unsubscribe_token
from shared import Category

from ..support import TopicReader, produce
from .conftest import email_dispatch
from .servers import RecordingRouter, serve


@pytest.fixture
def router_api():
    recorder = RecordingRouter()
    with serve(recorder.app()) as url:
        recorder.url = url
        yield recorder


def token(settings, *, user_id="u_1", category=Category.promotional, secret=None, now=None, days=1.0):
    return unsubscribe_token(
        secret=secret or settings.unsubscribe_secret.get_secret_value(), user_id=user_id, category=category,
        now=now or datetime.now(UTC), ttl=timedelta(days=days),
    )


async def test_the_link_in_a_promotional_email_switches_promotional_email_off(email_service, sandbox, router_api):
    d = email_dispatch("promotion", event_type="marketing.promotion", category="promotional", user_id="user 42+x")
    async with await email_service(router_url=router_api.url, api_keys="email=key-for-the-router") as (settings, client):
        await produce(settings.kafka_bootstrap, settings.notify_topic("email"), d.model_dump_json().encode())
        async with TopicReader(settings.kafka_bootstrap, settings.status_topic) as reader:
            await reader.wait_for(1)
        [message] = await sandbox.messages("smtp")
        [link] = [v for k, v in message["meta"]["headers"] if k == "List-Unsubscribe"]
        query = urlsplit(link.strip("<>")).query
        response = await client.post(f"/v1/unsubscribe?{query}", content="List-Unsubscribe=One-Click",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "unsubscribed", "category": "promotional", "channel": "email"}
    [call] = router_api.requests
    assert call["path"] == "/v1/users/user%2042%2Bx/preferences" and call["user_id"] == "user 42+x"
    assert call["body"] == {"preferences": [{"category": "promotional", "channel": "email", "enabled": False}]}
    assert call["authorization"] == "ApiKey key-for-the-router"
    assert parse_qs(query)["token"]


async def test_a_learning_tips_token_switches_learning_tips_off(email_service, router_api):
    async with await email_service(router_url=router_api.url, router_api_key="dedicated") as (settings, client):
        response = await client.post("/v1/unsubscribe", params={"token": token(settings, category=Category.learning_tips)})
    assert response.status_code == 200
    assert router_api.requests[0]["body"]["preferences"][0]["category"] == "learning_tips"
    assert router_api.requests[0]["authorization"] == "ApiKey dedicated"


@pytest.mark.parametrize("kind", ["forged", "expired", "garbage", "missing"])
async def test_a_forged_or_expired_token_gets_400_and_changes_nothing(email_service, router_api, kind):
    async with await email_service(router_url=router_api.url) as (settings, client):
        params = {
            "forged": {"token": token(settings, secret="not-the-service-secret-not-the-service-secret")},
            "expired": {"token": token(settings, now=datetime.now(UTC) - timedelta(days=3), days=1)},
            "garbage": {"token": "abc.def.ghi"},
            "missing": {},
        }[kind]
        response = await client.post("/v1/unsubscribe", params=params)
        page = await client.get("/v1/unsubscribe", params=params)
    expected = 422 if kind == "missing" else 400
    assert response.status_code == expected and page.status_code == expected
    if kind != "missing":
        assert "invalid or expired unsubscribe token" in response.json()["detail"]
        assert "not valid or has expired" in page.text
    assert router_api.requests == []


async def test_the_page_behind_the_link_asks_before_changing_anything(email_service, router_api):
    async with await email_service(router_url=router_api.url) as (settings, client):
        page = await client.get("/v1/unsubscribe", params={"token": token(settings)})
    assert page.status_code == 200 and "<form method=post" in page.text and "promotional" in page.text
    assert router_api.requests == []


async def test_unsubscribing_an_erased_user_succeeds_with_nothing_to_record(email_service, router_api):
    router_api.status = 410  # the router: this user was deleted (erased)
    async with await email_service(router_url=router_api.url) as (settings, client):
        response = await client.post("/v1/unsubscribe", params={"token": token(settings)})
    assert response.status_code == 200 and response.json()["status"] == "unsubscribed"
    assert len(router_api.requests) == 1


async def test_a_router_that_refuses_is_reported_as_a_bad_gateway(email_service, router_api):
    router_api.status = 503
    async with await email_service(router_url=router_api.url) as (settings, client):
        response = await client.post("/v1/unsubscribe", params={"token": token(settings)})
    assert response.status_code == 502 and "503" in response.json()["detail"]
    assert len(router_api.requests) == 1


async def test_unsubscribe_requests_are_limited_per_address(email_service, router_api, redis_client):
    async with await email_service(router_url=router_api.url, public_rate_limits="unsubscribe=3") as (settings, client):
        answers = [await client.get("/v1/unsubscribe", params={"token": "not-a-token"}) for _ in range(4)]
        posted = await client.post("/v1/unsubscribe", params={"token": token(settings)})
    assert [a.status_code for a in answers] == [400, 400, 400, 429]
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 60 and "from this address" in answers[3].json()["detail"]
    assert posted.status_code == 429 and router_api.requests == []  # the limit comes before any work
