"""The sms service's part of an erasure: the user's Redis keys go, the ledger keeps its cost record without
error texts, and, as configured, the user's messages are deleted or redacted at Twilio (the sandbox)."""

import json
import uuid
from datetime import UTC, datetime

import pytest

from services.sms.delivery import SmsDelivery
from shared import Erasure

from ..support import TopicReader, bearer, eventually, produce
from .conftest import dispatch, new_phone, produce_all, sms_app, statuses_of


@pytest.mark.parametrize("how", ["delete", "redact"])
async def test_an_erasure_clears_the_users_keys_and_erases_their_messages_at_twilio(infra, sms_settings, sandbox, db, redis_client, how):
    settings = sms_settings(twilio_erasure=how)
    me, other = f"u-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}"
    phone, other_phone = new_phone(), new_phone()
    prefix = settings.sms_redis_prefix
    mine, theirs = dispatch(phone, user_id=me), dispatch(other_phone, user_id=other)
    async with sms_app(settings) as client:
        assert (await client.post("/v1/verifications", json={"phone": phone}, headers=bearer(settings, me))).status_code == 202  # a code pending
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [mine, theirs])
        await statuses_of(infra, settings, {mine.notification_id, theirs.notification_id}, final=2)
        for d in (mine, theirs):  # as an earlier failed attempt would have left it
            await db.execute("UPDATE sms.ledger SET error = $2 WHERE notification_id = $1", d.notification_id, f"number {d.recipient.phone} refused once")
        held = [k.decode() async for k in redis_client.scan_iter(f"{prefix}*")]
        assert any(me in k for k in held) and any(":verify:number:" in k for k in held)
        erasure = Erasure(erasure_id=uuid.uuid4(), user_id=me, event_id="e-erase", requested_at=datetime.now(UTC))
        async with TopicReader(infra.kafka_bootstrap, settings.erasure_status_topic) as reports:
            await produce(infra.kafka_bootstrap, settings.erasure_topic, erasure.model_dump_json().encode(), key=me.encode())
            [report] = await reports.wait_for(1, timeout=30)
    erased = json.loads(report.value)["erased"]
    done = "twilio_deleted" if how == "delete" else "twilio_redacted"
    assert (erased[done], erased["twilio_not_found"], erased["ledger_errors"]) == (2, 0, 1)  # the code's SMS and the notification
    at_twilio = await sandbox.messages(phone)
    if how == "delete":
        assert at_twilio == []
    else:
        assert len(at_twilio) == 2 and all(m["text"] == "" and m["meta"]["redacted"] for m in at_twilio)
    assert [m["text"] != "" for m in await sandbox.messages(other_phone)] == [True]  # the other user's message is untouched
    left = [k.decode() async for k in redis_client.scan_iter(f"{prefix}*")]
    assert [k for k in left if me in k or ":verify:number:" in k] == []
    rows = {r["user_id"]: r for r in await db.fetch("SELECT user_id, error, segments, price_usd, provider_message_id FROM sms.ledger WHERE user_id = ANY($1)", [me, other])}
    assert rows[me]["error"] is None and rows[me]["segments"] >= 1 and rows[me]["provider_message_id"]  # the cost record stays
    assert rows[other]["error"] is not None
    assert await db.fetchval("SELECT count(*) FROM sms.erasures WHERE user_id = $1", me) == 1


async def test_twilio_failing_does_not_hold_up_the_erasure_and_its_messages_are_erased_later(infra, sms_settings, sandbox, db):
    """Twilio answers 500 while a user is erased: the erasure is applied and reported at once (its messages at
    Twilio queued, the service still ready), and the background erases them when Twilio is back."""
    settings = sms_settings(twilio_erasure="delete", twilio_erasure_budget_seconds=2, twilio_erasure_retry_seconds=0.3)
    me, phone = f"u-{uuid.uuid4().hex[:8]}", new_phone()
    sent = [dispatch(phone, user_id=me), dispatch(phone, user_id=me)]
    async with sms_app(settings) as client:
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), sent)
        await statuses_of(infra, settings, {d.notification_id for d in sent}, final=2)
        assert len(await sandbox.messages(phone)) == 2
        await sandbox.http.post("/api/faults", json={"provider": "twilio", "status": 500, "until_cleared": True})
        try:
            erasure = Erasure(erasure_id=uuid.uuid4(), user_id=me, event_id="e-erase", requested_at=datetime.now(UTC))
            async with TopicReader(infra.kafka_bootstrap, settings.erasure_status_topic) as reports:
                await produce(infra.kafka_bootstrap, settings.erasure_topic, erasure.model_dump_json().encode(), key=me.encode())
                [report] = await reports.wait_for(1, timeout=30)
            erased = json.loads(report.value)["erased"]
            assert (erased["twilio_deleted"], erased["twilio_pending"]) == (0, 2)
            assert (await client.get("/readyz")).status_code == 200
            assert len(await sandbox.messages(phone)) == 2
            queued = await db.fetch("SELECT attempts, last_error FROM sms.provider_erasures WHERE user_id = $1", me)
            assert len(queued) == 2 and all(r["attempts"] >= 1 and "500" in r["last_error"] for r in queued)
        finally:
            await sandbox.http.delete("/api/faults")

        async def erased_at_twilio():
            left = await db.fetchval("SELECT count(*) FROM sms.provider_erasures WHERE user_id = $1", me)
            return left == 0 and await sandbox.messages(phone) == []

        await eventually(erased_at_twilio, timeout=30, what="the queued messages erased at Twilio")


async def test_an_erased_user_cannot_ask_for_a_verification_code(sms_settings, sandbox, db, redis_client):
    settings = sms_settings()
    me, phone = f"u-{uuid.uuid4().hex[:8]}", new_phone()
    await db.execute("INSERT INTO sms.erasures (user_id, erasure_id, requested_at) VALUES ($1, $2, now())", me, uuid.uuid4())
    async with sms_app(settings) as client:
        answer = await client.post("/v1/verifications", json={"phone": phone}, headers=bearer(settings, me))
    assert answer.status_code == 410 and "erased" in answer.json()["detail"]
    assert await sandbox.messages(phone) == []
    assert [k async for k in redis_client.scan_iter(f"{settings.sms_redis_prefix}*{me}*")] == []


async def test_a_code_for_a_user_erased_while_it_is_sent_is_not_sent(sms_settings, sandbox, db, redis_client, monkeypatch):
    """The erasure commits between the endpoint's check and the send: the claim reads the tombstone."""
    settings = sms_settings()
    me, phone = f"u-{uuid.uuid4().hex[:8]}", new_phone()
    real_send_now = SmsDelivery.send_now

    async def erased_meanwhile(self, dispatch, res):
        await db.execute("INSERT INTO sms.erasures (user_id, erasure_id, requested_at) VALUES ($1, $2, now())", me, uuid.uuid4())
        return await real_send_now(self, dispatch, res)

    monkeypatch.setattr(SmsDelivery, "send_now", erased_meanwhile)
    async with sms_app(settings) as client:
        answer = await client.post("/v1/verifications", json={"phone": phone}, headers=bearer(settings, me))
    assert answer.status_code == 410
    assert await sandbox.messages(phone) == []
    assert await redis_client.exists(f"{settings.sms_redis_prefix}verify:code:{me}") == 0
    assert await db.fetchval("SELECT status FROM sms.ledger WHERE user_id = $1", me) == "suppressed"


async def test_a_message_whose_erasure_breaks_is_tried_again_later_and_the_others_are_erased(infra, sms_settings, sandbox, db, monkeypatch):
    from services.sms.providers.twilio import TwilioProvider

    real = TwilioProvider.erase
    broken: list[str] = []

    async def once_broken(self, sid, *, how):
        if not broken:
            broken.append(sid)
            raise RuntimeError("an answer the library could not read")
        return await real(self, sid, how=how)

    monkeypatch.setattr(TwilioProvider, "erase", once_broken)
    settings = sms_settings(twilio_erasure="delete", twilio_erasure_retry_seconds=0.3)
    me, phone = f"u-{uuid.uuid4().hex[:8]}", new_phone()
    sent = [dispatch(phone, user_id=me), dispatch(phone, user_id=me)]
    async with sms_app(settings):
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), sent)
        await statuses_of(infra, settings, {d.notification_id for d in sent}, final=2)
        erasure = Erasure(erasure_id=uuid.uuid4(), user_id=me, event_id="e-erase", requested_at=datetime.now(UTC))
        async with TopicReader(infra.kafka_bootstrap, settings.erasure_status_topic) as reports:
            await produce(infra.kafka_bootstrap, settings.erasure_topic, erasure.model_dump_json().encode(), key=me.encode())
            [report] = await reports.wait_for(1, timeout=30)
        erased = json.loads(report.value)["erased"]
        assert (erased["twilio_deleted"], erased["twilio_pending"]) == (1, 1)  # the erasure was reported, not dead-lettered

        async def all_gone():
            return await sandbox.messages(phone) == [] and not await db.fetchval("SELECT count(*) FROM sms.provider_erasures WHERE user_id = $1", me)

        await eventually(all_gone, timeout=30, what="the broken one erased on a later pass")
