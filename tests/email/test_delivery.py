"""The email sender through the real broker, PostgreSQL and the sandbox's SMTP server and Resend stand-in."""

import asyncio
from datetime import datetime

import httpx

from herald.dlq import replay
from shared import Dispatch

from ..support import TopicReader, eventually, produce
from .conftest import email_dispatch


async def send(settings, dispatch: Dispatch, *, times: int = 1) -> None:
    for _ in range(times):
        await produce(settings.kafka_bootstrap, settings.notify_topic("email", critical=dispatch.critical), dispatch.model_dump_json().encode(), key=b"u_1")


async def statuses(settings, count: int, *, timeout: float = 30.0) -> list[dict]:
    async with TopicReader(settings.kafka_bootstrap, settings.status_topic) as reader:
        await reader.wait_for(count, timeout=timeout)
        return reader.json()


async def ledger(db, dispatch: Dispatch):
    return await db.fetchrow("SELECT status, attempts, provider_message_id, error FROM email.ledger WHERE notification_id = $1", dispatch.notification_id)


def header(message: dict, name: str) -> list[str]:
    return [value for key, value in message["meta"]["headers"] if key.lower() == name.lower()]


async def test_a_dispatch_consumed_twice_is_emailed_once(email_service, sandbox, db):
    d = email_dispatch()
    async with await email_service() as (settings, _):
        await send(settings, d, times=2)
        found = await statuses(settings, 2)
        [message] = await sandbox.messages("smtp")
    assert sorted((s["status"], s["replayed"]) for s in found) == [("sent", False), ("sent", True)]  # the second copy repeats the outcome
    assert message["to"] == "ada@example.com" and message["subject"] == "Booking confirmed: Piano lesson"
    assert "Piano lesson" in message["text"] and 'style="' in message["html"]
    row = await ledger(db, d)
    assert (row["status"], row["attempts"]) == ("sent", 1) and row["provider_message_id"] == header(message, "Message-ID")[0]


async def test_a_relay_failing_twice_then_accepting_sends_one_email_after_three_attempts(email_service, sandbox, db):
    sandbox.fault("smtp", 451, count=2)
    d = email_dispatch()
    async with await email_service() as (settings, _):
        await send(settings, d)
        found = await statuses(settings, 3)
        async with TopicReader(settings.kafka_bootstrap, settings.retry_topics("email")) as retries:
            await retries.wait_for(2)
            assert [r["attempt"] for r in retries.json()] == [2, 3]
        messages = await sandbox.messages("smtp")
    assert [s["status"] for s in found] == ["retrying", "retrying", "sent"]
    assert [s["reason"] for s in found[:2]] == ["smtp_451", "smtp_451"]
    assert len(messages) == 1
    row = await ledger(db, d)
    assert (row["status"], row["attempts"]) == ("sent", 3)


async def test_a_permanent_failure_is_not_retried(email_service, sandbox, db):
    sandbox.fault("smtp", 550, count=5)
    d = email_dispatch()
    async with await email_service() as (settings, client):
        await send(settings, d)
        [status] = await statuses(settings, 1)
        later = email_dispatch()
        await send(settings, later)
        await statuses(settings, 2)
        async with TopicReader(settings.kafka_bootstrap, settings.retry_topics("email")) as retries:
            assert await retries.poll() == []
        metrics = (await client.get("/metrics/")).text
    assert (status["status"], status["reason"]) == ("failed", "smtp_550")
    row = await ledger(db, d)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert await sandbox.messages("smtp") == []
    assert 'herald_deliveries_total{channel="email",reason="smtp_550",status="failed",type="booking.confirmed"} 2.0' in metrics


async def test_exhausted_retries_go_to_dlq_and_replay_delivers_once_the_cause_is_fixed(email_service, sandbox, db):
    sandbox.fault("smtp", 421, count=3)
    d = email_dispatch()
    async with await email_service(email_max_attempts=3) as (settings, _):
        await send(settings, d)
        async with TopicReader(settings.kafka_bootstrap, settings.dlq_topic) as dlq:
            [dead] = await dlq.wait_for(1)
        assert dict(dead.headers)["herald-stage"] == b"email" and dict(dead.headers)["herald-reason"] == b"retries_exhausted"
        assert Dispatch.model_validate_json(dead.value).notification_id == d.notification_id
        assert (await ledger(db, d))["status"] == "dead_lettered"
        assert await sandbox.messages("smtp") == []

        assert await replay(settings, stage="email") == 1
        [message] = await eventually(lambda: sandbox.messages("smtp"), what="the replayed email")
        await eventually(lambda: _status_is(db, d, "sent"), what="the ledger says sent")
        assert await replay(settings, stage="email") == 0
    assert message["to"] == "ada@example.com"
    assert (await ledger(db, d))["attempts"] == 4


async def _status_is(db, d, status):
    row = await ledger(db, d)
    return row is not None and row["status"] == status


async def test_a_subject_or_address_cannot_inject_a_header(email_service, sandbox, db):
    evil_title = email_dispatch(
        "promotion", event_type="marketing.promotion", category="promotional",
        data={"user_id": "u_1", "campaign_id": "c", "title": "Sale\r\nBcc: evil@example.com", "body": "Now."},
    )
    evil_address = email_dispatch(email="ada@example.com\r\nBcc: evil@example.com")
    async with await email_service() as (settings, _):
        await send(settings, evil_title)
        await send(settings, evil_address)
        found = await statuses(settings, 2)
        [message] = await sandbox.messages("smtp")
    assert message["meta"]["rcpt_tos"] == ["ada@example.com"]
    assert header(message, "Bcc") == [] and header(message, "Subject") == ["Sale Bcc: evil@example.com"]
    by_id = {s["notification_id"]: s for s in found}
    assert by_id[str(evil_address.notification_id)]["status"] == "failed"
    assert by_id[str(evil_address.notification_id)]["reason"] == "invalid_address"


async def test_promotional_mail_carries_one_click_unsubscribe_and_security_mail_does_not(email_service, sandbox):
    promo = email_dispatch("promotion", event_type="marketing.promotion", category="promotional")
    security = email_dispatch("password_changed", event_type="auth.password_changed", category="security", critical=True)
    async with await email_service() as (settings, _):
        await send(settings, promo)
        await send(settings, security)
        await statuses(settings, 2)
        messages = {m["subject"]: m for m in await sandbox.messages("smtp")}
    promo_mail, security_mail = messages["20% off winter lessons"], messages["Your Herald password was changed"]
    [link] = header(promo_mail, "List-Unsubscribe")
    assert link.startswith(f"<{settings.unsubscribe_url}?token=") and header(promo_mail, "List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert link[1:-1] in promo_mail["text"]
    assert header(security_mail, "List-Unsubscribe") == []


async def test_a_recipient_without_an_address_is_suppressed(email_service, sandbox, db):
    d = email_dispatch(email=None)
    async with await email_service() as (settings, _):
        await send(settings, d)
        [status] = await statuses(settings, 1)
    assert (status["status"], status["reason"]) == ("suppressed", "no_address")
    assert (await ledger(db, d))["status"] == "suppressed"


async def test_resend_gets_the_notification_id_as_idempotency_key_and_its_429_is_retried_after_retry_after(email_service, sandbox, db):
    sandbox.fault("resend", 429, retry_after=1)
    d = email_dispatch("new_message", event_type="message.received", category="messages", locale="de")
    async with await email_service(email_provider="resend", email_retry_cap_seconds=5) as (settings, client):
        await send(settings, d)
        found = await statuses(settings, 2)
        async with TopicReader(settings.kafka_bootstrap, settings.retry_topics("email")) as retries:
            [retry] = await retries.wait_for(1)
        metrics = (await client.get("/metrics/")).text
        [message] = await sandbox.messages("resend")
    assert [s["status"] for s in found] == ["retrying", "sent"] and found[0]["reason"] == "http_429"
    failed_at = datetime.fromisoformat(found[0]["at"])
    assert (Dispatch.model_validate_json(retry.value).not_before - failed_at).total_seconds() >= 0.9
    assert message["meta"]["idempotency_key"] == str(d.notification_id)
    assert message["subject"] == "Neue Nachricht von Grace" and message["to"] == "ada@example.com"
    row = await ledger(db, d)
    assert (row["status"], row["attempts"], row["provider_message_id"]) == ("sent", 2, message["meta"]["id"])
    assert 'herald_provider_latency_seconds_count{channel="email",provider="resend"} 2.0' in metrics


async def test_a_resend_timeout_is_retried(email_service, sandbox, db):
    sandbox.fault("resend", 0)
    d = email_dispatch()
    async with await email_service(email_provider="resend", resend_timeout_seconds=0.5) as (settings, _):
        await send(settings, d)
        found = await statuses(settings, 2)
    assert [(s["status"], s["reason"]) for s in found] == [("retrying", "timeout"), ("sent", None)]
    assert len(await sandbox.messages("resend")) == 1


async def test_a_resend_send_accepted_after_the_timeout_is_not_sent_again(email_service, sandbox, db):
    """Resend takes the mail after Herald stopped waiting; every retry carries the same key, so one mail."""
    httpx.put(f"{sandbox.url}/api/resend/delay", json={"ms": 1500}).raise_for_status()
    d = email_dispatch()
    key = str(d.notification_id)
    async with await email_service(email_provider="resend", resend_timeout_seconds=0.3) as (settings, _):
        await send(settings, d)
        [first] = await statuses(settings, 1)
        httpx.put(f"{sandbox.url}/api/resend/delay", json={"ms": 0}).raise_for_status()
        found = [first]
        while found[-1]["status"] == "retrying" and len(found) < 6:  # a retry already on its way also times out
            found = await statuses(settings, len(found) + 1)
        requests = len(found)

        async def every_request_answered() -> bool:
            return httpx.get(f"{sandbox.url}/api/resend/replays").json()["keys"].get(key) == requests - 1

        await eventually(every_request_answered, timeout=10, what=f"{requests - 1} request(s) answered from the idempotency key")
        messages = [m for m in await sandbox.messages("resend") if m["meta"]["idempotency_key"] == key]
    assert (first["status"], first["reason"]) == ("retrying", "timeout")
    assert [s["status"] for s in found] == ["retrying"] * (requests - 1) + ["sent"]
    assert len(messages) == 1
    row = await ledger(db, d)
    assert (row["status"], row["provider_message_id"]) == ("sent", messages[0]["meta"]["id"])


async def test_a_resend_client_error_is_permanent(email_service, sandbox, db):
    sandbox.fault("resend", 422)
    d = email_dispatch()
    async with await email_service(email_provider="resend") as (settings, _):
        await send(settings, d)
        [status] = await statuses(settings, 1)
    assert (status["status"], status["reason"]) == ("failed", "http_422")
    assert (await ledger(db, d))["attempts"] == 1


async def test_critical_mail_is_taken_from_the_priority_lane(email_service, sandbox):
    d = email_dispatch("new_device_login", event_type="auth.new_device_login", category="security", critical=True)
    async with await email_service() as (settings, _):
        await send(settings, d)
        [status] = await statuses(settings, 1)
        [message] = await sandbox.messages("smtp")
    assert status["status"] == "sent" and status["critical"] is True
    assert message["subject"] == "New sign-in to your Herald account"


async def test_the_sandbox_page_shows_what_was_sent(email_service, sandbox):
    async with await email_service() as (settings, _):
        await send(settings, email_dispatch())
        await statuses(settings, 1)
    async with httpx.AsyncClient() as client:
        page = (await client.get(f"{sandbox.url}/")).text
    assert "Booking confirmed: Piano lesson" in page and "ada@example.com" in page and "<iframe" in page
    await asyncio.sleep(0)


async def test_an_smtp_relay_that_hangs_is_given_up_on_and_retried(email_service, sandbox, db):
    sandbox.fault("smtp", 0)
    d = email_dispatch()
    async with await email_service(smtp_timeout_seconds=0.5) as (settings, _):
        await send(settings, d)
        found = await statuses(settings, 2)
        [message] = await sandbox.messages("smtp")
    assert [(s["status"], s["reason"]) for s in found] == [("retrying", "timeout"), ("sent", None)]
    assert message["to"] == "ada@example.com"
    assert (await ledger(db, d))["attempts"] == 2
