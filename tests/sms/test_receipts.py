"""Twilio delivery receipts: signature checks, ledger updates, status events, and the stand-in's own callbacks."""

from twilio.request_validator import RequestValidator

from herald.infra import free_port
from services.sms.app import create_app

from ..support import TopicReader, eventually, make_topics
from .conftest import ServerThread, dispatch, new_phone, produce_all, sms_app, statuses_of

PATH = "/v1/webhooks/twilio/status"


def signed(settings, params: dict[str, str], *, url: str | None = None) -> dict[str, str]:
    token = settings.twilio_auth_token.get_secret_value()
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url or settings.public_url + PATH, params)}


async def send_one(infra, settings, sandbox, phone):
    d = dispatch(phone)
    await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [d])
    await statuses_of(infra, settings, {d.notification_id}, final=1)
    [message] = await sandbox.messages(phone)
    return d, message["meta"]["sid"]


async def test_forged_or_missing_signatures_are_refused(sms_settings, sandbox, db):
    settings = sms_settings()
    params = {"MessageSid": "SMdeadbeef", "MessageStatus": "delivered"}
    async with sms_app(settings) as client:
        missing = await client.post(PATH, data=params)
        forged = await client.post(PATH, data=params, headers={"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"})
        other_token = RequestValidator("some-other-token").compute_signature(settings.public_url + PATH, params)
        wrong_key = await client.post(PATH, data=params, headers={"X-Twilio-Signature": other_token})
        tampered = await client.post(PATH, data={**params, "MessageStatus": "failed"}, headers=signed(settings, params))
        other_url = await client.post(PATH, data=params, headers=signed(settings, params, url="https://evil.example" + PATH))
    assert [r.status_code for r in (missing, forged, wrong_key, tampered, other_url)] == [403] * 5
    assert "X-Twilio-Signature" in missing.json()["detail"]


async def test_without_an_auth_token_every_callback_is_refused(sms_settings, sandbox):
    settings = sms_settings(twilio_auth_token="")
    params = {"MessageSid": "SMdeadbeef", "MessageStatus": "delivered"}
    signature = RequestValidator("").compute_signature(settings.public_url + PATH, params)
    async with sms_app(settings) as client:
        response = await client.post(PATH, data=params, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 403


async def test_a_delivered_receipt_updates_the_ledger_and_is_published_once(infra, sms_settings, sandbox, db):
    settings = sms_settings()
    phone = new_phone()
    async with sms_app(settings) as client:
        d, sid = await send_one(infra, settings, sandbox, phone)
        params = {"MessageSid": sid, "MessageStatus": "delivered", "To": phone, "AccountSid": settings.twilio_account_sid}
        first = await client.post(PATH, data=params, headers=signed(settings, params))
        again = await client.post(PATH, data=params, headers=signed(settings, params))
        progress = {"MessageSid": sid, "MessageStatus": "sent"}
        late = await client.post(PATH, data=progress, headers=signed(settings, progress))
        found = await statuses_of(infra, settings, {d.notification_id}, final=2)
        async with TopicReader(infra.kafka_bootstrap, settings.status_topic) as reader:
            await reader.wait_for(2)
            mine = [s for s in reader.json() if s["notification_id"] == str(d.notification_id)]
    assert [r.status_code for r in (first, again, late)] == [204, 204, 204]
    assert [s["status"] for s in found] == ["sent", "delivered"] and [s["status"] for s in mine] == ["sent", "delivered"]
    assert found[1]["provider_message_id"] == sid and found[1]["channel"] == "sms"
    row = await db.fetchrow("SELECT status, provider_status, delivered_at FROM sms.ledger WHERE notification_id = $1", d.notification_id)
    assert (row["status"], row["provider_status"]) == ("delivered", "delivered") and row["delivered_at"] is not None


async def test_an_undelivered_receipt_records_the_error_code(infra, sms_settings, sandbox, db):
    settings = sms_settings()
    phone = new_phone()
    async with sms_app(settings) as client:
        d, sid = await send_one(infra, settings, sandbox, phone)
        params = {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "30003"}
        assert (await client.post(PATH, data=params, headers=signed(settings, params))).status_code == 204
        found = await statuses_of(infra, settings, {d.notification_id}, final=2)
    assert (found[1]["status"], found[1]["reason"]) == ("failed", "undelivered:30003")
    row = await db.fetchrow("SELECT status, provider_status, error_code FROM sms.ledger WHERE notification_id = $1", d.notification_id)
    assert (row["status"], row["provider_status"], row["error_code"]) == ("failed", "undelivered", "30003")


async def test_a_receipt_for_an_unknown_message_is_accepted_and_changes_nothing(sms_settings, sandbox, db):
    settings = sms_settings()
    params = {"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"}
    async with sms_app(settings) as client:
        response = await client.post(PATH, data=params, headers=signed(settings, params))
        incomplete = await client.post(PATH, data={"MessageSid": "SMx"}, headers=signed(settings, {"MessageSid": "SMx"}))
    assert response.status_code == 204 and incomplete.status_code == 400
    assert await db.fetchval("SELECT count(*) FROM sms.ledger WHERE provider_message_id = $1", params["MessageSid"]) == 0


async def test_the_stand_ins_signed_callbacks_reach_the_service_and_mark_delivery(infra, sms_settings, sandbox, db):
    phone, unlucky = new_phone(), new_phone()
    await sandbox.receipt(unlucky, "undelivered", 30006)
    port = free_port()
    settings = sms_settings(twilio_status_callbacks=True, public_url=f"http://127.0.0.1:{port}")
    await make_topics(settings)
    server = ServerThread(create_app(settings), port)
    good, bad = dispatch(phone), dispatch(unlucky)
    with server:
        await produce_all(infra.kafka_bootstrap, settings.notify_topic("sms"), [good, bad])
        found = await statuses_of(infra, settings, {good.notification_id, bad.notification_id}, final=4)

        async def receipts_recorded():
            rows = await db.fetch("SELECT notification_id, status, error_code FROM sms.ledger WHERE notification_id = ANY($1)", [good.notification_id, bad.notification_id])
            return {r["notification_id"]: (r["status"], r["error_code"]) for r in rows if r["status"] in ("delivered", "failed")}

        recorded = await eventually(lambda: _both(receipts_recorded), what="both receipts in the ledger")
    assert recorded == {good.notification_id: ("delivered", None), bad.notification_id: ("failed", "30006")}
    assert sorted((s["notification_id"] == str(bad.notification_id), s["status"]) for s in found) == [
        (False, "delivered"), (False, "sent"), (True, "failed"), (True, "sent"),
    ]
    [message] = await eventually(lambda: _callbacks_done(sandbox, phone), what="the stand-in saw both callbacks answered")
    assert message["meta"]["status_callback"] == f"{server.url}{PATH}"
    assert message["meta"]["callbacks"] == ["callback sent: 204", "callback delivered: 204"]


async def _callbacks_done(sandbox, phone):
    found = await sandbox.messages(phone)
    return found if found and len(found[0]["meta"].get("callbacks", [])) == 2 else None


async def _both(probe):
    found = await probe()
    return found if len(found) == 2 else None
