"""Sending pushes: real broker, PostgreSQL and Redis, the push service and the sandbox Web Push service over HTTP."""

from __future__ import annotations

import asyncio
import base64
import logging
from datetime import datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.push import logic
from services.push.logic import EndpointRefused
from services.push.providers import WebPushClient, load_vapid

from ..support import TopicReader, eventually, produce
from .conftest import browser_subscription, new_user, push_dispatch, push_service, pushes_of


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def send(infra, settings, dispatch) -> None:
    await produce(infra.kafka_bootstrap, settings.notify_topic("push", critical=dispatch.critical), dispatch.model_dump_json().encode(), key=dispatch.recipient.user_id.encode())


async def statuses_of(infra, settings, notification_id, count, *, timeout=40.0) -> list[dict]:
    async with TopicReader(infra.kafka_bootstrap, settings.status_topic) as reader:

        async def enough():
            await reader.poll()
            found = [s for s in reader.json() if s["notification_id"] == str(notification_id)]
            return found if len(found) >= count else None

        return await eventually(enough, timeout=timeout, what=f"{count} status(es) of {notification_id}")


async def pushed(sandbox, notification_id, count=1, *, timeout=40.0) -> list[dict]:
    async def enough():
        found = await pushes_of(sandbox, notification_id)
        return found if len(found) >= count else None

    return await eventually(enough, timeout=timeout, what=f"{count} push(es) of {notification_id}")


async def fault(sandbox, token: str, status: int, *, count: int = 1, retry_after: int | None = None) -> None:
    answer = await sandbox.post("/api/faults", json={"provider": f"webpush:{token}", "status": status, "count": count, "retry_after": retry_after})
    assert answer.status_code == 204


def metric(app, name: str, **labels: str) -> float:
    return app.state.resources.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_push_arrives_decrypted_with_its_title_body_url_and_a_valid_vapid_signature(infra, push_settings, sandbox, sandbox_url, db):
    key = ec.generate_private_key(ec.SECP256R1())
    settings = push_settings(vapid_private_key=b64(key.private_numbers().private_value.to_bytes(32, "big")), vapid_subject="mailto:ops@herald.test")
    user = new_user()
    normal = push_dispatch(user, url="/messages/c1")
    critical = push_dispatch(user, event_type="auth.password_changed", category="security", critical=True, template="password_changed", data={}, url=None)
    async with push_service(settings) as (url, app):
        sub = await browser_subscription(sandbox, url, settings, user)
        await send(infra, settings, normal)
        await send(infra, settings, critical)
        [push] = await pushed(sandbox, normal.notification_id)
        [urgent] = await pushed(sandbox, critical.notification_id)
        [status] = await statuses_of(infra, settings, normal.notification_id, 1)
    assert push["meta"]["notification"] == {
        "title": "New message from Ada",
        "body": "Are we still on for Tuesday?",
        "url": "https://app.example.com/messages/c1",
        "notification_id": str(normal.notification_id),
        "category": "messages",
    }
    server_key = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert sub["subscription"]["endpoint"].startswith(sandbox_url)
    assert push["meta"]["vapid"]["verified"] is True
    assert push["meta"]["vapid"]["aud"] == sandbox_url and push["meta"]["vapid"]["sub"] == "mailto:ops@herald.test"
    assert push["meta"]["token"] == sub["token"]
    assert (push["meta"]["ttl"], push["meta"]["urgency"], push["meta"]["topic"]) == (settings.push_ttl_seconds, "normal", logic.topic(normal.notification_id))
    assert urgent["meta"]["urgency"] == "high" and urgent["meta"]["notification"]["url"] == "https://app.example.com"
    assert status["status"] == "sent"
    ledger = await db.fetch("SELECT target, status, provider_message_id FROM push.ledger WHERE notification_id = $1 ORDER BY target", normal.notification_id)
    assert [(r["target"], r["status"]) for r in ledger] == [("", "sent"), (logic.endpoint_hash(sub["subscription"]["endpoint"]), "sent")]
    assert ledger[1]["provider_message_id"] == f"/webpush/messages/{push['id']}"
    [bound] = [s for s in (await sandbox.get("/webpush/subscriptions")).json() if s["token"] == sub["token"]]
    assert bound["application_server_key"] == b64(server_key)  # the sandbox refuses pushes signed with any other key


async def test_a_duplicate_dispatch_is_pushed_once(infra, push_settings, sandbox):
    settings = push_settings()
    user = new_user()
    dispatch = push_dispatch(user)
    async with push_service(settings) as (url, app):
        await browser_subscription(sandbox, url, settings, user)
        await send(infra, settings, dispatch)
        await send(infra, settings, dispatch)
        found = await statuses_of(infra, settings, dispatch.notification_id, 2)  # each is published after its push
    assert sorted((s["status"], s["replayed"]) for s in found) == [("sent", False), ("sent", True)]  # the second copy repeats the outcome
    assert len(await pushes_of(sandbox, dispatch.notification_id)) == 1


async def test_every_subscription_gets_one_push_and_a_retry_resends_only_the_one_that_failed(infra, push_settings, sandbox, db):
    settings = push_settings()
    user = new_user()
    dispatch = push_dispatch(user)
    async with push_service(settings) as (url, app):
        subs = [await browser_subscription(sandbox, url, settings, user, label=f"device {i}") for i in range(3)]
        await fault(sandbox, subs[2]["token"], 503, retry_after=1)
        await send(infra, settings, dispatch)
        found = await statuses_of(infra, settings, dispatch.notification_id, 2)
        pushes = await pushed(sandbox, dispatch.notification_id, 3)
    assert [s["status"] for s in found] == ["retrying", "sent"]
    assert found[0]["reason"] == "http_503"
    assert sorted(p["meta"]["token"] for p in pushes) == sorted(s["token"] for s in subs)
    attempts = {
        r["target"]: r["attempts"]
        for r in await db.fetch("SELECT target, attempts FROM push.ledger WHERE notification_id = $1 AND target <> ''", dispatch.notification_id)
    }
    assert attempts == {logic.endpoint_hash(s["subscription"]["endpoint"]): (2 if s is subs[2] else 1) for s in subs}


async def test_410_removes_the_subscription_and_the_others_still_get_the_push(infra, push_settings, sandbox, db):
    settings = push_settings()
    user = new_user()
    dispatch = push_dispatch(user)
    async with push_service(settings) as (url, app):
        gone, kept = [await browser_subscription(sandbox, url, settings, user, label=f"device {i}") for i in range(2)]
        assert (await sandbox.delete(f"/webpush/subscriptions/{gone['token']}")).status_code == 204
        await send(infra, settings, dispatch)
        [status] = await statuses_of(infra, settings, dispatch.notification_id, 1)
        [push] = await pushed(sandbox, dispatch.notification_id)
        removed = metric(app, "herald_push_subscriptions_removed_total", reason="gone")
    endpoints = [r["endpoint"] for r in await db.fetch("SELECT endpoint FROM push.subscriptions WHERE user_id = $1", user)]
    assert endpoints == [kept["subscription"]["endpoint"]]
    assert status["status"] == "sent" and push["meta"]["token"] == kept["token"]
    assert removed == 1


async def test_a_404_on_the_only_subscription_removes_it_and_fails_the_dispatch(infra, push_settings, sandbox, db):
    settings = push_settings()
    user = new_user()
    dispatch = push_dispatch(user)
    async with push_service(settings) as (url, app):
        sub = await browser_subscription(sandbox, url, settings, user)
        await fault(sandbox, sub["token"], 404)
        await send(infra, settings, dispatch)
        [status] = await statuses_of(infra, settings, dispatch.notification_id, 1)
    assert (status["status"], status["reason"]) == ("failed", "http_404")
    assert await db.fetchval("SELECT count(*) FROM push.subscriptions WHERE user_id = $1", user) == 0


async def test_413_is_a_permanent_failure_that_is_not_retried(infra, push_settings, sandbox, db):
    settings = push_settings()
    user = new_user()
    dispatch = push_dispatch(user)
    async with push_service(settings) as (url, app):
        sub = await browser_subscription(sandbox, url, settings, user)
        await fault(sandbox, sub["token"], 413, count=5)
        await send(infra, settings, dispatch)
        [status] = await statuses_of(infra, settings, dispatch.notification_id, 1)
        await asyncio.sleep(1.0)  # longer than the retry backoff: a retry would show up as a second status
        later = await statuses_of(infra, settings, dispatch.notification_id, 1)
    assert (status["status"], status["reason"]) == ("failed", "http_413")
    assert len(later) == 1
    assert await db.fetchval("SELECT failures FROM push.subscriptions WHERE user_id = $1", user) == 1


async def test_429_is_retried_no_sooner_than_its_retry_after(infra, push_settings, sandbox):
    settings = push_settings(push_retry_cap_seconds=30)
    user = new_user()
    dispatch = push_dispatch(user)
    async with push_service(settings) as (url, app):
        sub = await browser_subscription(sandbox, url, settings, user)
        await fault(sandbox, sub["token"], 429, retry_after=3)
        await send(infra, settings, dispatch)
        retrying, sent = await statuses_of(infra, settings, dispatch.notification_id, 2)
        async with TopicReader(infra.kafka_bootstrap, settings.retry_topics("push")) as retries:
            [retry] = await retries.wait_for(1)
    not_before = datetime.fromisoformat(retries.json()[0]["not_before"])
    assert (retrying["status"], retrying["reason"], sent["status"]) == ("retrying", "http_429", "sent")
    assert (not_before - datetime.fromisoformat(retrying["at"])).total_seconds() >= 2.9
    assert (datetime.fromisoformat(sent["at"]) - datetime.fromisoformat(retrying["at"])).total_seconds() >= 2.9


async def test_a_subscription_that_fails_n_times_in_a_row_is_dropped(infra, push_settings, sandbox, db):
    settings = push_settings(push_max_failures=2, push_max_attempts=2)
    user = new_user()
    dispatch = push_dispatch(user)
    async with push_service(settings) as (url, app):
        sub = await browser_subscription(sandbox, url, settings, user)
        await fault(sandbox, sub["token"], 500, count=10)
        await send(infra, settings, dispatch)
        found = await statuses_of(infra, settings, dispatch.notification_id, 2)
        dropped = metric(app, "herald_push_subscriptions_removed_total", reason="too_many_failures")
    assert [s["status"] for s in found] == ["retrying", "dead_lettered"]
    assert await db.fetchval("SELECT count(*) FROM push.subscriptions WHERE user_id = $1", user) == 0
    assert dropped == 1


async def test_a_redirect_is_not_followed(infra, push_settings, sandbox):
    settings = push_settings()
    user = new_user()
    dispatch = push_dispatch(user)
    async with push_service(settings) as (url, app):
        sub = await browser_subscription(sandbox, url, settings, user)
        await fault(sandbox, sub["token"], 307)
        await send(infra, settings, dispatch)
        [status] = await statuses_of(infra, settings, dispatch.notification_id, 1)
    assert (status["status"], status["reason"]) == ("failed", "redirect_refused")
    assert await pushes_of(sandbox, dispatch.notification_id) == []


async def test_an_endpoint_whose_name_now_resolves_to_a_private_address_is_refused_at_send_time(infra, push_settings, sandbox, db):
    settings = push_settings(push_allowed_hosts="localhost")
    user = new_user()
    dispatch = push_dispatch(user)
    endpoint = "https://localhost/push/stored-when-it-resolved-elsewhere"
    keys = (await sandbox.post("/webpush/subscriptions", json={})).json()["subscription"]["keys"]
    await db.execute(
        "INSERT INTO push.subscriptions (user_id, endpoint, endpoint_hash, p256dh, auth) VALUES ($1, $2, $3, $4, $5)",
        user, endpoint, logic.endpoint_hash(endpoint), keys["p256dh"], keys["auth"],
    )
    async with push_service(settings) as (url, app):
        await send(infra, settings, dispatch)
        [status] = await statuses_of(infra, settings, dispatch.notification_id, 1)
    assert (status["status"], status["reason"]) == ("failed", "endpoint_refused")
    assert await db.fetchval("SELECT failures FROM push.subscriptions WHERE endpoint = $1", endpoint) == 1


async def test_the_connection_itself_refuses_a_name_that_resolves_to_loopback_unless_it_is_a_dev_host(sandbox, sandbox_url):
    port = sandbox_url.rsplit(":", 1)[1]
    sub = (await sandbox.post("/webpush/subscriptions", json={})).json()
    endpoint = f"http://localhost:{port}/webpush/push/{sub['token']}"
    keys = sub["subscription"]["keys"]
    vapid, _ = load_vapid(None)
    args = dict(endpoint=endpoint, p256dh=keys["p256dh"], auth=keys["auth"], payload=b'{"title":"t"}', ttl=60, urgency="normal", topic="t")
    async with WebPushClient(vapid=vapid, subject="mailto:a@b.test", dev_hosts=[], timeout=10, resolve_timeout=3) as strict:
        with pytest.raises(EndpointRefused, match="loopback"):
            await strict.send(**args)
    async with WebPushClient(vapid=vapid, subject="mailto:a@b.test", dev_hosts=[f"localhost:{port}"], timeout=10, resolve_timeout=3) as dev:
        assert (await dev.send(**args)).status == 201


async def test_an_oversize_body_is_shortened_with_a_warning_and_accepted(infra, push_settings, sandbox):
    settings = push_settings()
    user = new_user()
    dispatch = push_dispatch(user, data={"sender_name": "Ada", "preview": "ü" * 6000})
    warnings: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = warnings.append  # type: ignore[method-assign]
    logging.getLogger("services.push.handlers").addHandler(handler)
    try:
        async with push_service(settings) as (url, app):
            await browser_subscription(sandbox, url, settings, user)
            await send(infra, settings, dispatch)
            [push] = await pushed(sandbox, dispatch.notification_id)
            [status] = await statuses_of(infra, settings, dispatch.notification_id, 1)
            shortened = metric(app, "herald_push_payload_shortened_total")
    finally:
        logging.getLogger("services.push.handlers").removeHandler(handler)
    body = push["meta"]["notification"]["body"]
    assert status["status"] == "sent"
    assert push["meta"]["payload_bytes"] <= settings.push_max_payload_bytes and push["meta"]["encrypted_bytes"] <= 4096
    assert body.startswith("üüü") and body.endswith("…") and len(body) < 6000
    assert shortened == 1
    assert any("shortened" in r.getMessage() and r.levelno == logging.WARNING for r in warnings)


async def test_a_user_without_subscriptions_is_suppressed(infra, push_settings):
    settings = push_settings()
    dispatch = push_dispatch(new_user())
    async with push_service(settings) as (url, app):
        await send(infra, settings, dispatch)
        [status] = await statuses_of(infra, settings, dispatch.notification_id, 1)
    assert (status["status"], status["reason"]) == ("suppressed", "no_subscription")


async def test_a_push_service_that_does_not_answer_in_time_is_retried(infra, push_settings, sandbox):
    settings = push_settings(push_timeout_seconds=1.0)
    user = new_user()
    dispatch = push_dispatch(user)
    async with push_service(settings) as (url, app):
        sub = await browser_subscription(sandbox, url, settings, user)
        await fault(sandbox, sub["token"], 0)
        await send(infra, settings, dispatch)
        retrying, sent = await statuses_of(infra, settings, dispatch.notification_id, 2)
        [push] = await pushed(sandbox, dispatch.notification_id)
    assert (retrying["status"], retrying["reason"], sent["status"]) == ("retrying", "timeout", "sent")
    assert push["meta"]["token"] == sub["token"]
