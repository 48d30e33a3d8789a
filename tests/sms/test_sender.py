"""The SMS sender on the real broker, PostgreSQL and Redis, talking to the Twilio stand-in through the twilio library."""

import asyncio
import logging
import re
from datetime import datetime

from herald.infra import free_port
from shared import Limit, RateLimiter

from ..support import STARTS, TopicReader, api_key
from .conftest import (
    captured_logs,
    dispatch,
    new_phone,
    produce_all,
    sms_app,
    statuses_of,
)


async def test_a_dispatch_consumed_twice_is_sent_once_with_its_segments_and_price_recorded(infra, sms_settings, sandbox, db):
    settings = sms_settings()
    phone = new_phone()
    d = dispatch(phone)
    async with sms_app(settings) as client:
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [d, d])
        found = await statuses_of(infra, settings, {d.notification_id}, final=2)
        metrics = (await client.get("/metrics/")).text
        spend = (await client.get("/v1/sms/spend", headers=api_key(settings))).json()
        refused = await client.get("/v1/sms/spend")
    assert sorted((s["status"], s["replayed"]) for s in found) == [("sent", False), ("sent", True)]  # the second copy repeats the outcome
    [sent] = await sandbox.messages(phone)
    assert sent["text"] == f"Booking confirmed: Piano lesson on {STARTS.local()}. https://app.example.com/bookings/b_42"
    row = await db.fetchrow("SELECT * FROM sms.ledger WHERE notification_id = $1", d.notification_id)
    assert (row["status"], row["attempts"], row["segments"], row["encoding"], row["country"]) == ("sent", 1, 1, "GSM-7", "US")
    assert row["provider_message_id"] == sent["meta"]["sid"] and row["provider_message_id"].startswith("SM")
    assert float(row["price_usd"]) == 0.0083 and row["category"] == "lesson_updates"
    assert 'herald_sms_segments_total{category="lesson_updates",country="US",type="booking.confirmed"} 1.0' in metrics
    assert 'herald_sms_spend_usd_total{category="lesson_updates",country="US",type="booking.confirmed"} 0.0083' in metrics
    [bookings] = [r for r in spend if (r["event_type"], r["category"], r["country"]) == ("booking.confirmed", "lesson_updates", "US")]
    assert bookings["messages"] >= 1 and bookings["segments"] >= 1 and bookings["price_usd"] >= 0.0083
    assert refused.status_code == 401


async def test_a_dispatch_without_a_phone_is_suppressed(infra, sms_settings, sandbox):
    settings = sms_settings()
    d = dispatch(None)
    async with sms_app(settings):
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [d])
        [status] = await statuses_of(infra, settings, {d.notification_id}, final=1)
    assert (status["status"], status["reason"]) == ("suppressed", "no_phone")


async def test_the_time_is_shown_in_the_recipients_zone_and_language(infra, sms_settings, sandbox):
    settings = sms_settings()
    phone = new_phone("+491512", 7)
    d = dispatch(phone, locale="de-DE", timezone="Europe/Berlin")
    async with sms_app(settings):
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [d])
        await statuses_of(infra, settings, {d.notification_id}, final=1)
    [sent] = await sandbox.messages(phone)
    assert sent["text"].startswith(f"Buchung bestätigt: Piano lesson am {STARTS.local('Europe/Berlin')}.")


async def test_an_invalid_number_fails_permanently_without_reaching_twilio(infra, sms_settings, sandbox, db):
    settings = sms_settings()
    d = dispatch("+1415555")
    async with sms_app(settings):
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [d])
        [status] = await statuses_of(infra, settings, {d.notification_id}, final=1)
    assert (status["status"], status["reason"]) == ("failed", "invalid_number")
    assert await sandbox.messages() == []
    assert await db.fetchval("SELECT attempts FROM sms.ledger WHERE notification_id = $1", d.notification_id) == 1


async def test_a_number_outside_the_allowed_countries_is_suppressed(infra, sms_settings, sandbox):
    settings = sms_settings(sms_allowed_countries="US,DE")
    d = dispatch("+33612345678")
    async with sms_app(settings):
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [d])
        [status] = await statuses_of(infra, settings, {d.notification_id}, final=1)
    assert (status["status"], status["reason"]) == ("suppressed", "country_not_allowed")
    assert await sandbox.messages() == []


async def test_a_premium_rate_number_is_suppressed_before_the_provider(infra, sms_settings, sandbox):
    settings = sms_settings()
    d = dispatch("+19005550123")
    async with sms_app(settings):
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [d])
        [status] = await statuses_of(infra, settings, {d.notification_id}, final=1)
    assert (status["status"], status["reason"]) == ("suppressed", "number_type_not_allowed")
    assert await sandbox.messages() == []


async def test_a_number_twilio_refuses_fails_permanently_and_gives_its_cap_slot_back(infra, sms_settings, sandbox, redis_client):
    settings = sms_settings()
    d = dispatch("+15005550001")
    async with sms_app(settings):
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [d])
        [status] = await statuses_of(infra, settings, {d.notification_id}, final=1)
    assert (status["status"], status["reason"]) == ("failed", "invalid_number")
    cap = Limit(f"{settings.sms_redis_prefix}cap:{{{d.recipient.user_id}}}:all", 10, 86_400)
    assert await RateLimiter(redis_client).used(cap) == 0


async def test_a_transient_twilio_error_is_retried_and_the_failed_attempt_gives_its_slot_back(infra, sms_settings, sandbox, db):
    settings = sms_settings(sms_daily_cap=1)
    phone = new_phone()
    d = dispatch(phone)
    await sandbox.fail(503, count=2)
    async with sms_app(settings):
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [d])
        found = await statuses_of(infra, settings, {d.notification_id}, final=1, timeout=90)
    assert [s["status"] for s in found] == ["retrying", "retrying", "sent"]
    assert found[0]["reason"] == "provider_503"
    assert len(await sandbox.messages(phone)) == 1
    assert await db.fetchval("SELECT attempts FROM sms.ledger WHERE notification_id = $1", d.notification_id) == 3


async def test_twilio_throttling_is_retried_no_sooner_than_its_retry_after(infra, sms_settings, sandbox, db):
    settings = sms_settings(sms_retry_base_seconds=0.05, sms_retry_cap_seconds=30)
    d = dispatch(new_phone())
    await sandbox.fail(429, count=1, retry_after=3)
    async with sms_app(settings):
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [d])
        found = await statuses_of(infra, settings, {d.notification_id}, final=1, timeout=60)
    assert [s["status"] for s in found] == ["retrying", "sent"]
    assert found[0]["reason"] == "provider_rate_limited"
    waited = (datetime.fromisoformat(found[1]["at"]) - datetime.fromisoformat(found[0]["at"])).total_seconds()
    assert waited >= 3


async def test_a_dispatch_still_failing_after_the_last_attempt_is_dead_lettered_with_its_slots_given_back(infra, sms_settings, sandbox, db, redis_client):
    settings = sms_settings(sms_max_attempts=3, sms_retry_base_seconds=0.05, sms_retry_cap_seconds=0.2)
    d = dispatch(new_phone())
    await sandbox.fail(503, count=10)
    async with sms_app(settings):
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [d])
        async with TopicReader(infra.kafka_bootstrap, settings.dlq_topic) as dlq:
            [dead] = await dlq.wait_for(1, timeout=60)
        found = await statuses_of(infra, settings, {d.notification_id}, final=1)
    assert dict(dead.headers)["herald-reason"] == b"retries_exhausted"
    assert [s["status"] for s in found] == ["retrying", "retrying", "dead_lettered"]
    assert await db.fetchval("SELECT status FROM sms.ledger WHERE notification_id = $1", d.notification_id) == "dead_lettered"
    cap = Limit(f"{settings.sms_redis_prefix}cap:{{{d.recipient.user_id}}}:all", 10, 86_400)
    assert await RateLimiter(redis_client).used(cap) == 0
    assert await sandbox.messages() == []


async def test_an_unreachable_provider_is_a_transient_failure(infra, sms_settings, sandbox):
    closed = f"http://127.0.0.1:{free_port()}"
    settings = sms_settings(twilio_api_base=closed, sms_max_attempts=2, sms_retry_base_seconds=0.05, sms_retry_cap_seconds=0.1)
    d = dispatch(new_phone())
    async with sms_app(settings):
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [d])
        found = await statuses_of(infra, settings, {d.notification_id}, final=1)
    assert [(s["status"], s["reason"]) for s in found] == [("retrying", "provider_unreachable"), ("dead_lettered", "retries_exhausted")]


async def test_a_hundred_concurrent_dispatches_for_one_user_with_a_cap_of_ten_send_exactly_ten(infra, sms_settings, sandbox, db):
    settings = sms_settings(sms_daily_cap=10)
    phone = new_phone()
    dispatches = [dispatch(phone, user_id="u-busy") for _ in range(100)]
    async with sms_app(settings):
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), dispatches)
        found = await statuses_of(infra, settings, {d.notification_id for d in dispatches}, final=100, timeout=120)
    outcomes = [(s["status"], s["reason"]) for s in found]
    assert outcomes.count(("sent", None)) == 10
    assert outcomes.count(("suppressed", "daily_cap")) == 90
    assert len(await sandbox.messages(phone)) == 10
    ids = [d.notification_id for d in dispatches]
    assert await db.fetchval("SELECT count(*) FROM sms.ledger WHERE notification_id = ANY($1) AND status = 'sent'", ids) == 10
    assert await db.fetchval("SELECT count(*) FROM sms.ledger WHERE notification_id = ANY($1) AND status = 'suppressed'", ids) == 90


async def test_critical_sms_are_not_refused_by_the_daily_cap_but_count_in_it_and_have_their_own_ceiling(infra, sms_settings, sandbox):
    settings = sms_settings(sms_daily_cap=2, sms_daily_cap_critical=2)
    phone = new_phone()
    user = "u-critical"

    def alert() -> object:
        return dispatch(phone, user_id=user, event_type="auth.password_changed", category="security", critical=True, template="password_changed", data={"user_id": user})

    async def run(batch, *, critical: bool) -> list:
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms", critical=critical), batch)
        found = await statuses_of(infra, settings, {d.notification_id for d in batch}, final=len(batch))
        return [(s["status"], s["reason"]) for s in found]

    async with sms_app(settings):
        assert await run([dispatch(phone, user_id=user) for _ in range(2)], critical=False) == [("sent", None)] * 2
        assert await run([alert()], critical=True) == [("sent", None)]
        assert await run([dispatch(phone, user_id=user)], critical=False) == [("suppressed", "daily_cap")]
        assert await run([alert()], critical=True) == [("sent", None)]
        assert await run([alert()], critical=True) == [("suppressed", "daily_cap_critical")]
    assert len(await sandbox.messages(phone)) == 4


async def test_a_body_over_the_maximum_segments_is_cut_with_a_warning_carrying_its_length(infra, sms_settings, sandbox, db):
    settings = sms_settings(sms_max_segments=1)
    phone = new_phone()
    device = "Firefox " * 40
    d = dispatch(phone, event_type="auth.new_device_login", category="security", critical=True, template="new_device_login", data={"user_id": "u", "device": device})
    async with sms_app(settings):
        with captured_logs() as logs:
            await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms", critical=True), [d])
            [status] = await statuses_of(infra, settings, {d.notification_id}, final=1)
    assert status["status"] == "sent"
    [sent] = await sandbox.messages(phone)
    assert len(sent["text"]) <= 160 and sent["text"].endswith("...")
    [warning] = [r for r in logs.records if "cut from" in r.getMessage()]
    assert warning.levelname == "WARNING" and warning.original_length > 320
    assert await db.fetchval("SELECT segments FROM sms.ledger WHERE notification_id = $1", d.notification_id) == 1


async def test_a_unicode_body_is_counted_as_ucs2(infra, sms_settings, sandbox, db):
    settings = sms_settings()
    phone = new_phone()
    d = dispatch(phone, data={"title": "Урок игры на фортепиано 🎹", "starts_at": STARTS.iso}, url=None)
    async with sms_app(settings):
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [d])
        await statuses_of(infra, settings, {d.notification_id}, final=1)
    [sent] = await sandbox.messages(phone)
    row = await db.fetchrow("SELECT encoding, segments FROM sms.ledger WHERE notification_id = $1", d.notification_id)
    assert (row["encoding"], row["segments"]) == ("UCS-2", 1) and len(sent["text"].encode("utf-16-le")) // 2 <= 70


async def test_no_log_line_carries_a_phone_number_in_clear(infra, sms_settings, sandbox):
    settings = sms_settings()
    phone = new_phone()
    sent, refused, invalid = dispatch(phone), dispatch("+15005550001"), dispatch("+1415555")
    await sandbox.fail(500)
    async with sms_app(settings):
        with captured_logs(logging.DEBUG) as logs:  # the line about each sent SMS is DEBUG
            await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [sent, refused, invalid])
            await statuses_of(infra, settings, {sent.notification_id, refused.notification_id, invalid.notification_id}, final=3, timeout=60)
    text = logs.text()
    assert "Twilio refused SMS" in text and f"{phone[:5]}*" in text  # the sent one's number, masked
    for number in (phone, "+15005550001", "15005550001", phone[1:], "+1415555"):
        assert number not in text
    assert not re.search(r"\+\d{8,}", text.replace(settings.twilio_from, ""))


async def test_the_provider_rate_is_shared_and_throttles_rather_than_refuses(infra, sms_settings, sandbox):
    settings = sms_settings(sms_provider_mps=5)
    phone = new_phone()
    batch = [dispatch(phone, user_id=f"u-{i}") for i in range(12)]
    async with sms_app(settings):
        started = asyncio.get_running_loop().time()
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), batch)
        found = await statuses_of(infra, settings, {d.notification_id for d in batch}, final=12, timeout=60)
        elapsed = asyncio.get_running_loop().time() - started
    assert [s["status"] for s in found] == ["sent"] * 12
    assert elapsed >= 2.0  # a correctness bound, not a speed figure: 12 sends at 5 per sliding second span two windows
    assert len(await sandbox.messages(phone)) == 12
