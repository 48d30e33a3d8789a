"""The recipients directory: kept current by user.* events and by PUT /v1/recipients/{user_id}."""

from ..support import STARTS, Moment, bearer, eventually

VERIFIED = Moment(days=-1, hour=12)  # when the phone number was verified: yesterday
from .conftest import by_channel, new_user


async def test_user_created_fills_the_directory_and_welcomes_the_user(router, db):
    user = new_user()
    event = await router.publish("user.created", {"user_id": user, "email": "Ada@Example.com", "phone": "+1 (415) 555-0100", "locale": "fr", "timezone": "Europe/Paris"})
    items = by_channel(await router.trace(event["id"], 2))
    assert {c: i["decision"] for c, i in items.items()} == {"email": "routed", "inapp": "routed"}
    row = await db.fetchrow("SELECT email, phone, phone_verified_at, locale, timezone, deleted_at FROM router.recipients WHERE user_id = $1", user)
    assert dict(row) == {"email": "Ada@example.com", "phone": "+14155550100", "phone_verified_at": None, "locale": "fr", "timezone": "Europe/Paris", "deleted_at": None}


async def test_a_verified_phone_announced_by_user_updated_receives_sms_and_a_new_number_does_not(router):
    user = new_user()
    assert (await router.put_recipient(user, email="a@example.com", phone="+14155550100")).status_code == 200
    booking = {"booking_id": "b1", "student_id": user, "instructor_id": new_user(), "title": "Piano", "starts_at": STARTS.iso}

    first = await router.publish("booking.confirmed", booking)
    assert by_channel(await router.trace(first["id"], 6), user)["sms"]["reason"] == "phone_unverified"

    verified = await router.publish("user.updated", {"user_id": user, "phone": "+14155550100", "phone_verified_at": VERIFIED.iso})
    second = await router.publish("booking.confirmed", booking)
    sms = by_channel(await router.trace(second["id"], 6), user)["sms"]
    assert (sms["decision"], sms["reason"]) == ("routed", "routed")

    await router.publish("user.updated", {"user_id": user, "phone": "+14155550199"})
    third = await router.publish("booking.confirmed", booking)
    assert by_channel(await router.trace(third["id"], 6), user)["sms"]["reason"] == "phone_unverified"
    assert verified["id"]  # the user.updated event itself notifies nobody


async def test_a_deleted_user_gets_nothing_not_even_critical_and_is_not_brought_back(router, db):
    user = new_user()
    await router.put_recipient(user, email="a@example.com", phone="+14155550100", phone_verified_at=VERIFIED.iso, locale="de", timezone="Europe/Berlin")
    promo_off = {"preferences": [{"category": "promotional", "channel": "email", "enabled": False}]}
    assert (await router.client.patch("/v1/preferences", json=promo_off, headers=bearer(router.settings, user))).status_code == 200
    assert await db.fetchval("SELECT count(*) FROM router.preferences WHERE user_id = $1", user) == 1
    await router.publish("user.deleted", {"user_id": user})
    event = await router.publish("auth.password_changed", {"user_id": user})
    items = await router.trace(event["id"], 3)
    assert {(i["channel"], i["decision"], i["reason"]) for i in items} == {(c, "suppressed", "user_deleted") for c in ("email", "sms", "inapp")}
    row = await db.fetchrow("SELECT email, phone, locale, timezone, deleted_at FROM router.recipients WHERE user_id = $1", user)
    assert row["email"] is None and row["phone"] is None and row["deleted_at"] is not None
    assert (row["locale"], row["timezone"]) == ("en", "UTC")  # the tombstone keeps nothing of the user's
    assert await db.fetchval("SELECT count(*) FROM router.preferences WHERE user_id = $1", user) == 0
    for path, headers in (("/v1/preferences", bearer(router.settings, user)), (f"/v1/users/{user}/preferences", router.key)):
        refused = await router.client.patch(path, json=promo_off, headers=headers)
        assert refused.status_code == 410 and "deleted" in refused.json()["detail"], path
    assert await db.fetchval("SELECT count(*) FROM router.preferences WHERE user_id = $1", user) == 0
    response = await router.put_recipient(user, email="a@example.com")
    assert response.status_code == 409 and "deleted" in response.json()["detail"]
    late = await router.publish("user.updated", {"user_id": user, "email": "b@example.com"})
    after = await router.publish("auth.password_changed", {"user_id": user})
    assert {i["reason"] for i in await router.trace(after["id"], 3)} == {"user_deleted"}
    assert late["id"]


async def test_an_unknown_user_gets_push_and_inapp_but_no_email_or_sms(router):
    user = new_user()
    event = await router.publish("booking.confirmed", {"booking_id": "b1", "student_id": user, "instructor_id": new_user(), "title": "Piano", "starts_at": STARTS.iso})
    items = by_channel(await router.trace(event["id"], 6), user)
    assert {c: (i["decision"], i["reason"]) for c, i in items.items()} == {
        "email": ("suppressed", "no_address"),
        "sms": ("suppressed", "no_address"),
        "push": ("routed", "routed"),
        "inapp": ("routed", "routed"),
    }
    assert items["email"]["detail"] == "user not in the recipients directory"


async def test_put_recipient_validates_and_normalises(router):
    user = new_user()
    ok = await router.put_recipient(user, email="ada@example.com", phone="+44 20 7946 0958", locale="en-GB", timezone="Europe/London")
    assert ok.status_code == 200 and ok.json()["phone"] == "+442079460958"
    for body, word in [
        ({"phone": "12345"}, "phone"),
        ({"phone": "+1 555"}, "phone"),
        ({"email": "nope"}, "email"),
        ({"timezone": "Mars/Base"}, "timezone"),
        ({"colour": "blue"}, "colour"),
    ]:
        response = await router.put_recipient(user, **body)
        assert response.status_code == 422, body
        assert word in response.text
    assert (await router.client.put(f"/v1/recipients/{user}", json={})).status_code == 401
    assert (await router.client.put(f"/v1/recipients/{user}", json={}, headers=bearer(router.settings, user))).status_code == 401


async def test_an_invalid_phone_in_a_user_event_is_dead_lettered(router, db):
    from ..support import TopicReader

    user = new_user()
    await router.publish("user.created", {"user_id": user, "email": "a@example.com", "phone": "555"})
    async with TopicReader(router.infra.kafka_bootstrap, router.settings.dlq_topic) as dlq:
        [dead] = await dlq.wait_for(1)
    assert dict(dead.headers)["herald-reason"] == b"invalid_data"
    assert await db.fetchval("SELECT count(*) FROM router.recipients WHERE user_id = $1", user) == 0


async def test_a_user_update_older_than_the_directory_row_does_not_overwrite_it(router, db):
    import datetime as dt

    user = new_user()
    now = dt.datetime.now(dt.UTC)

    async def email_of() -> str | None:
        return await db.fetchval("SELECT email FROM router.recipients WHERE user_id = $1", user)

    async def published(event_type: str, email: str, at: dt.datetime) -> None:
        event = await router.publish(event_type, {"user_id": user, "email": email}, time=at.isoformat())
        await router.trace(event["id"], 1) if event_type == "user.created" else None

    await router.publish("user.updated", {"user_id": user, "email": "new@example.com"}, time=now.isoformat())
    await eventually(lambda: _equals(email_of, "new@example.com"), what="the newer address applied")
    # Older events arriving after it (a producer's retry, another partition): applied in event time, so ignored.
    await router.publish("user.updated", {"user_id": user, "email": "old@example.com"}, time=(now - dt.timedelta(hours=1)).isoformat())
    await published("user.created", "first@example.com", now - dt.timedelta(days=1))
    newest = await router.publish("user.updated", {"user_id": user, "locale": "de"}, time=(now + dt.timedelta(seconds=1)).isoformat())
    await eventually(lambda: _equals(lambda: db.fetchval("SELECT locale FROM router.recipients WHERE user_id = $1", user), "de"), what="the newest change applied")
    assert await email_of() == "new@example.com"
    assert newest["id"]
    # An API PUT is a change as of now, newer than every event so far.
    assert (await router.put_recipient(user, email="put@example.com")).status_code == 200
    assert await email_of() == "put@example.com"


async def _equals(probe, expected) -> bool:
    return await probe() == expected
