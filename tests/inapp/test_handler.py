"""Storing a dispatch: exactly one row, announced after the commit, retried when the announcement fails."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from herald.infra import free_port
from services.inapp import logic, repo
from services.inapp.app import TEMPLATES, create_app
from services.inapp.handlers import store_notification
from services.inapp.settings import Settings
from shared import MessageTemplates, Metrics, Resources, TransientError

from ..support import STARTS, TopicReader, eventually, make_topics, produce, running, settings_for
from .helpers import dispatch

TEMPLATE_SET = MessageTemplates(TEMPLATES)


def resources(settings, pool, redis) -> Resources:
    return Resources(settings=settings, broker=None, metrics=Metrics(CollectorRegistry()), pool=pool, redis=redis)  # type: ignore[arg-type]


async def next_message(pubsub) -> dict:
    async def one():
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        return json.loads(message["data"]) if message else None

    return await eventually(one, what="a published message")


async def test_a_failed_announcement_is_retried_and_the_retry_announces_the_stored_row(infra, namespace, pool, redis_client, user):
    settings = settings_for(Settings, infra, namespace)
    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    d = dispatch(user, data={"title": "Once", "body": "."})
    with pytest.raises(TransientError) as raised:
        await store_notification(d, resources(settings, pool, unreachable), templates=TEMPLATE_SET, settings=settings)
    assert raised.value.reason == "realtime_unavailable"
    await unreachable.aclose()
    assert await pool.fetchval("SELECT count(*) FROM inapp.notifications WHERE user_id = $1", user) == 1

    pubsub = redis_client.pubsub()
    await pubsub.subscribe(logic.channel_of(settings.inbox_redis_prefix, user))
    try:
        assert (await pubsub.get_message(timeout=10))["type"] == "subscribe"
        retry = resources(settings, pool, redis_client)
        await store_notification(d, retry, templates=TEMPLATE_SET, settings=settings)
        message = await next_message(pubsub)
        assert message["kind"] == "notification" and message["item"]["id"] == str(d.notification_id) and message["seq"] == 1
        assert message["unread"] == 1 and message["item"]["title"] == "Once"
        assert await pool.fetchval("SELECT count(*) FROM inapp.notifications WHERE user_id = $1", user) == 1
        assert retry.metrics.inbox_operations.labels("stored")._value.get() == 0, "the retry stored nothing new"

        async with pool.acquire() as conn:
            assert await repo.soft_delete(conn=conn, user_id=user, id=d.notification_id)
        await store_notification(d, retry, templates=TEMPLATE_SET, settings=settings)
        await redis_client.publish(logic.channel_of(settings.inbox_redis_prefix, user), b'{"kind": "marker"}')
        assert (await next_message(pubsub))["kind"] == "marker", "a deleted notification is not announced again"
        async with pool.acquire() as conn:
            assert await repo.last_seq(conn=conn, user_id=user) == 1, "redeliveries take no numbers"
    finally:
        await pubsub.aclose()


async def test_a_dispatch_whose_template_is_unknown_fails_permanently_and_stores_nothing(infra, namespace, pool, user):
    settings = settings_for(Settings, infra, namespace)
    await make_topics(settings)
    d = dispatch(user, template="no_such_template")
    async with running(create_app(settings)), TopicReader(infra.kafka_bootstrap, settings.status_topic) as reader:
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=user.encode())
        (status,) = [json.loads(r.value) for r in await reader.wait_for(1)]
    assert status["status"] == "failed" and status["reason"] == "template_error"
    assert await pool.fetchval("SELECT count(*) FROM inapp.notifications WHERE user_id = $1", user) == 0


async def test_a_critical_dispatch_lands_in_the_inbox_too(infra, namespace, pool, user):
    settings = settings_for(Settings, infra, namespace)
    await make_topics(settings)
    d = dispatch(user, event_type="auth.password_changed", category="security", critical=True, template="password_changed", data={"user_id": user})
    async with running(create_app(settings)):
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp", critical=True), d.model_dump_json().encode(), key=user.encode())

        async def stored():
            return await pool.fetchrow("SELECT category, title FROM inapp.notifications WHERE id = $1", d.notification_id)

        row = await eventually(stored, what="the critical notification stored")
    assert row["category"] == "security" and row["title"] == "Your password was changed"


async def test_a_time_in_the_body_is_shown_in_the_recipients_zone_and_the_data_keeps_the_moment(infra, namespace, pool, user):
    settings = settings_for(Settings, infra, namespace)
    await make_topics(settings)
    data = {"booking_id": "b_1", "student_id": user, "instructor_id": "u_x", "title": "Piano", "starts_at": STARTS.iso}
    d = dispatch(user, event_type="booking.confirmed", category="lesson_updates", template="booking_confirmed_student", data=data, timezone="Europe/Berlin")
    async with running(create_app(settings)):
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=user.encode())

        async def stored():
            return await pool.fetchrow("SELECT body, data FROM inapp.notifications WHERE id = $1", d.notification_id)

        row = await eventually(stored, what="the booking notification stored")
    assert row["body"] == f"See you on {STARTS.local('Europe/Berlin')}."
    assert row["data"] == {"booking_id": "b_1", "starts_at": STARTS.iso}  # only what the template declares for display
