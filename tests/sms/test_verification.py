"""Phone verification: codes through the SMS path, request limits, tries, expiry, and the verified-number event."""

import re
import uuid

from shared import CloudEvent

from ..support import TopicReader, bearer, eventually
from .conftest import new_phone, sms_app

START, CHECK = "/v1/verifications", "/v1/verifications/check"


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


async def code_sent_to(sandbox, phone: str, *, count: int = 1) -> str:
    messages = await sandbox.messages(phone)
    assert len(messages) == count
    return re.search(r"\b(\d{6})\b", messages[-1]["text"]).group(1)


async def test_a_correct_code_verifies_the_number_and_announces_it(infra, sms_settings, sandbox, db, redis_client):
    settings = sms_settings()
    me, phone = user(), new_phone()
    async with sms_app(settings) as client:
        sent = await client.post(START, json={"phone": phone}, headers=bearer(settings, me))
        code = await code_sent_to(sandbox, phone)
        stored = await redis_client.hgetall(f"{settings.sms_redis_prefix}verify:code:{me}")
        wrong = await client.post(CHECK, json={"code": f"{(int(code) + 1) % 1_000_000:06d}"}, headers=bearer(settings, me))
        ok = await client.post(CHECK, json={"code": code, "phone": phone}, headers=bearer(settings, me))
        reused = await client.post(CHECK, json={"code": code}, headers=bearer(settings, me))
        async with TopicReader(infra.kafka_bootstrap, settings.domain_topic("user.updated")) as reader:
            [record] = await reader.wait_for(1)
    assert sent.status_code == 202 and sent.json() == {"status": "sent", "phone": sent.json()["phone"], "expires_in": 600, "resend_after": 60}
    assert phone not in sent.text
    assert code.encode() not in b"".join(stored.values()) and stored[b"phone"] == phone.encode()
    assert (wrong.status_code, wrong.json()["tries_left"]) == (400, 4)
    assert ok.status_code == 200 and ok.json()["verified"] is True and ok.json()["phone"] == phone
    assert reused.status_code == 410
    event = CloudEvent.model_validate_json(record.value)
    assert event.type == "user.updated" and record.key == me.encode()
    assert event.data == {"user_id": me, "phone": phone, "phone_verified_at": event.data["phone_verified_at"]}
    assert event.data["phone_verified_at"].startswith(ok.json()["phone_verified_at"][:19])
    row = await db.fetchrow("SELECT status, critical, event_type FROM sms.ledger WHERE user_id = $1", me)
    assert dict(row) == {"status": "sent", "critical": True, "event_type": "phone.verification"}


async def test_the_fourth_request_in_ten_minutes_is_refused(sms_settings, sandbox):
    settings = sms_settings(verify_cooldown_seconds=0)
    me, phone = user(), new_phone()
    async with sms_app(settings) as client:
        answers = [await client.post(START, json={"phone": phone}, headers=bearer(settings, me)) for _ in range(4)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert 0 < int(answers[3].headers["Retry-After"]) <= 600 and answers[3].json()["retry_after"] == int(answers[3].headers["Retry-After"])
    assert len(await sandbox.messages(phone)) == 3


async def test_a_number_gets_at_most_three_codes_whoever_asks(sms_settings, sandbox):
    settings = sms_settings(verify_cooldown_seconds=0)
    phone = new_phone()
    async with sms_app(settings) as client:
        answers = [await client.post(START, json={"phone": phone}, headers=bearer(settings, user())) for _ in range(4)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429]


async def test_a_resend_within_the_cooldown_says_how_long_to_wait(sms_settings, sandbox):
    settings = sms_settings()
    me = user()
    async with sms_app(settings) as client:
        first = await client.post(START, json={"phone": new_phone()}, headers=bearer(settings, me))
        second = await client.post(START, json={"phone": new_phone()}, headers=bearer(settings, me))
    assert first.status_code == 202 and second.status_code == 429
    assert 30 <= second.json()["retry_after"] <= 60 and "wait" in second.json()["detail"]


async def test_five_wrong_tries_invalidate_the_code_and_the_sixth_is_refused(sms_settings, sandbox):
    settings = sms_settings()
    me, phone = user(), new_phone()
    async with sms_app(settings) as client:
        await client.post(START, json={"phone": phone}, headers=bearer(settings, me))
        code = await code_sent_to(sandbox, phone)
        wrong = f"{(int(code) + 7) % 1_000_000:06d}"
        tries = [await client.post(CHECK, json={"code": wrong}, headers=bearer(settings, me)) for _ in range(5)]
        sixth = await client.post(CHECK, json={"code": code}, headers=bearer(settings, me))
    assert [t.status_code for t in tries] == [400] * 5
    assert [t.json()["tries_left"] for t in tries] == [4, 3, 2, 1, 0]
    assert sixth.status_code == 410


async def test_an_expired_code_is_refused(sms_settings, sandbox, redis_client):
    settings = sms_settings(verify_code_ttl_seconds=1)
    me, phone = user(), new_phone()
    async with sms_app(settings) as client:
        await client.post(START, json={"phone": phone}, headers=bearer(settings, me))
        code = await code_sent_to(sandbox, phone)
        key = f"{settings.sms_redis_prefix}verify:code:{me}"
        await eventually(lambda: _gone(redis_client, key), timeout=20, what="the code's TTL to run out")
        late = await client.post(CHECK, json={"code": code}, headers=bearer(settings, me))
    assert late.status_code == 410 and "request a new one" in late.json()["detail"]


async def _gone(redis_client, key):
    return not await redis_client.exists(key)


async def test_a_code_for_another_number_does_not_verify_it(sms_settings, sandbox):
    settings = sms_settings()
    me, phone = user(), new_phone()
    async with sms_app(settings) as client:
        await client.post(START, json={"phone": phone}, headers=bearer(settings, me))
        code = await code_sent_to(sandbox, phone)
        other = await client.post(CHECK, json={"code": code, "phone": new_phone()}, headers=bearer(settings, me))
        someone_else = await client.post(CHECK, json={"code": code}, headers=bearer(settings, user()))
    assert other.status_code == 400 and someone_else.status_code == 410


async def test_when_the_provider_does_not_take_the_code_the_answer_is_503_and_nothing_is_kept(sms_settings, sandbox):
    settings = sms_settings()
    me, phone = user(), new_phone()
    await sandbox.fail(500)
    async with sms_app(settings) as client:
        failed = await client.post(START, json={"phone": phone}, headers=bearer(settings, me))
        check = await client.post(CHECK, json={"code": "000000"}, headers=bearer(settings, me))
        retried = await client.post(START, json={"phone": phone}, headers=bearer(settings, me))
    assert failed.status_code == 503 and "did not take the code" in failed.json()["detail"]
    assert check.status_code == 410
    assert retried.status_code == 202, "the failed send gave its request and cooldown slots back"
    assert len(await sandbox.messages(phone)) == 1


async def test_bad_requests_get_clear_4xx_answers(sms_settings, sandbox):
    settings = sms_settings(sms_allowed_countries="US")
    async with sms_app(settings) as client:
        anonymous = await client.post(START, json={"phone": new_phone()})
        invalid = await client.post(START, json={"phone": "+1415555"}, headers=bearer(settings, user()))
        abroad = await client.post(START, json={"phone": "+33612345678"}, headers=bearer(settings, user()))
        refused = await client.post(START, json={"phone": "+15005550009"}, headers=bearer(settings, user()))
        no_body = await client.post(CHECK, json={}, headers=bearer(settings, user()))
    assert anonymous.status_code == 401
    assert invalid.status_code == 422 and "phone" in invalid.json()["detail"]
    assert abroad.status_code == 422 and "FR" in abroad.json()["detail"]
    assert refused.status_code == 422 and "not_sms_capable" in refused.json()["detail"]
    assert no_body.status_code == 422
    assert await sandbox.messages() == []


async def test_wrong_codes_across_several_codes_lock_the_number(sms_settings, sandbox):
    """Five wrong tries per code would give a guesser unlimited codes; the number locks after ten across them."""
    settings = sms_settings(verify_cooldown_seconds=0, verify_max_requests=10, verify_max_tries=5, verify_lock_failures=7)
    guesser, phone = user(), new_phone()
    async with sms_app(settings) as client:

        async def wrong_tries(count: int) -> list:
            code = await code_sent_to(sandbox, phone, count=len(await sandbox.messages(phone)))
            wrong = f"{(int(code) + 1) % 1_000_000:06d}"
            return [await client.post(CHECK, json={"code": wrong}, headers=bearer(settings, guesser)) for _ in range(count)]

        assert (await client.post(START, json={"phone": phone}, headers=bearer(settings, guesser))).status_code == 202
        first = await wrong_tries(5)
        assert [a.status_code for a in first] == [400] * 5  # the first code is spent
        assert (await client.post(START, json={"phone": phone}, headers=bearer(settings, guesser))).status_code == 202
        second = await wrong_tries(2)
        assert [a.status_code for a in second] == [400, 429]  # the seventh wrong try across codes locks the number
        assert int(second[1].headers["Retry-After"]) == settings.verify_lock_seconds
        again = await client.post(START, json={"phone": phone}, headers=bearer(settings, guesser))
        someone_else = await client.post(START, json={"phone": phone}, headers=bearer(settings, user()))
        other_number = await client.post(START, json={"phone": new_phone()}, headers=bearer(settings, guesser))
    assert again.status_code == someone_else.status_code == 429 and "locked" in again.json()["detail"]
    assert 0 < int(again.headers["Retry-After"]) <= settings.verify_lock_seconds
    assert other_number.status_code == 202  # the lock is the number's
    assert len(await sandbox.messages(phone)) == 2  # no code went out while locked


async def test_premium_rate_and_other_costly_numbers_are_refused_unless_allowed(sms_settings, sandbox):
    settings = sms_settings()
    allowing = sms_settings(sms_allowed_costly_types="premium_rate")
    assert "premium_rate" not in settings.sms_allowed_costly_types
    me = user()
    async with sms_app(settings) as client:
        premium = await client.post(START, json={"phone": "+19005550123"}, headers=bearer(settings, me))
    assert premium.status_code == 422 and premium.json()["detail"] == "phone: SMS to premium rate numbers is not available"
    assert await sandbox.messages("+19005550123") == []
    async with sms_app(allowing) as client:
        assert (await client.post(START, json={"phone": "+19005550123"}, headers=bearer(allowing, me))).status_code == 202
