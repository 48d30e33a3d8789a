"""The sms service's part of an erasure: the user's Redis keys go, the ledger keeps its cost record without
error texts, and, as configured, the user's messages are deleted or redacted at Twilio (the sandbox)."""

import json
import uuid
from datetime import UTC, datetime

import pytest

from shared import Erasure

from ..support import TopicReader, bearer, produce
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
