"""The decision trace: what the router decided and what each sender then did, by event and by user."""

import asyncio
import uuid
from datetime import UTC, datetime

from services.router import repo
from shared import Channel, Dispatch, HeraldSettings, Ledger, PermanentError, Resources, SenderPipeline, TransientError, create_service

from ..support import STARTS, bearer, running, settings_for
from .conftest import by_channel, new_user


async def test_the_trace_shows_each_decision_and_what_the_senders_did(router, infra, namespace, ledger_schema):
    user = new_user()
    await router.put_recipient(user, email="a@example.com", phone="+14155550100")
    calls: list[str] = []

    async def flaky(dispatch: Dispatch, res: Resources) -> str:
        calls.append(dispatch.recipient.user_id)
        if calls.count(user) == 1 and dispatch.recipient.user_id == user:
            raise TransientError("http_503", "provider busy")
        return "inbox-1"

    sender_settings = settings_for(HeraldSettings, infra, namespace, service_name="test-inapp")
    pipeline = SenderPipeline(sender_settings, Channel.inapp, flaky, ledger=Ledger(ledger_schema), retry_base_seconds=0.05, retry_cap_seconds=0.2)
    async with running(create_service(sender_settings, title="inapp", kafka_routers=pipeline.routers())):
        event = await router.publish("booking.cancelled", {"booking_id": "b9", "student_id": user, "instructor_id": new_user(), "title": "Piano", "starts_at": STARTS.iso})
        items = await router.trace(event["id"], 8, until=lambda items: by_channel(items, user)["inapp"]["outcome"] == "sent")
    mine = by_channel(items, user)
    assert {c: (i["decision"], i["reason"]) for c, i in mine.items()} == {
        "email": ("routed", "routed"),
        "sms": ("suppressed", "phone_unverified"),
        "push": ("routed", "routed"),
        "inapp": ("routed", "routed"),
    }
    inapp = mine["inapp"]
    assert [(d["status"], d["attempt"], d["reason"]) for d in inapp["deliveries"]] == [("retrying", 1, "http_503"), ("sent", 2, None)]
    assert (inapp["outcome"], inapp["attempts"], inapp["deliveries"][-1]["provider_message_id"]) == ("sent", 2, "inbox-1")
    assert (mine["email"]["outcome"], mine["email"]["deliveries"]) == ("pending", [])  # no email sender in this test
    assert (mine["sms"]["outcome"], mine["sms"]["detail"]) == ("suppressed", "the phone number is not verified")
    assert all(i["event_type"] == "booking.cancelled" and i["event_source"] == "tests" for i in items)


async def test_a_failed_delivery_shows_why(router, infra, namespace, ledger_schema):
    user = new_user()

    async def refuse(dispatch: Dispatch, res: Resources) -> str:
        raise PermanentError("template_error", "missing variable")

    sender_settings = settings_for(HeraldSettings, infra, namespace, service_name="test-inapp")
    pipeline = SenderPipeline(sender_settings, Channel.inapp, refuse, ledger=Ledger(ledger_schema))
    async with running(create_service(sender_settings, title="inapp", kafka_routers=pipeline.routers())):
        event = await router.publish("content.learning_tip", {"user_id": user, "title": "Scales", "body": "Daily"})
        items = await router.trace(event["id"], 3, until=lambda items: by_channel(items)["inapp"]["outcome"] == "failed")
    assert by_channel(items)["inapp"]["deliveries"][0]["reason"] == "template_error"


async def test_a_users_trace_lists_their_notifications_since_a_time(router):
    user = new_user()
    first = await router.publish("payout.paid", {"user_id": user, "payout_id": "p1", "amount": 100, "currency": "EUR"})
    await router.trace(first["id"], 2)
    await asyncio.sleep(0.01)  # two events a measurable instant apart, so "since" can fall between them
    between = datetime.now(UTC)
    second = await router.publish("payment.failed", {"user_id": user, "amount": 100, "currency": "EUR"})
    await router.trace(second["id"], 3)

    everything = await router.client.get(f"/v1/users/{user}/trace", headers=router.key)
    assert everything.status_code == 200
    assert [(i["event_id"], i["channel"]) for i in everything.json()["items"]] == [
        *((first["id"], c) for c in ("email", "inapp")),
        *((second["id"], c) for c in ("email", "inapp", "sms")),
    ]
    recent = await router.client.get(f"/v1/users/{user}/trace", params={"since": between.isoformat()}, headers=router.key)
    assert {i["event_id"] for i in recent.json()["items"]} == {second["id"]}
    limited = await router.client.get(f"/v1/users/{user}/trace", params={"limit": 1}, headers=router.key)
    assert len(limited.json()["items"]) == 1
    pages = await all_pages(router, f"/v1/users/{user}/trace", limit=2)
    assert [len(p["items"]) for p in pages] == [2, 2, 1]
    assert [(i["event_id"], i["channel"]) for p in pages for i in p["items"]] == [(i["event_id"], i["channel"]) for i in everything.json()["items"]]


async def all_pages(router, path: str, *, limit: int) -> list[dict]:
    pages, after = [], None
    while True:
        response = await router.client.get(path, params={"limit": limit, **({"after": after} if after else {})}, headers=router.key)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        after = pages[-1]["next"]
        if after is None:
            return pages
        assert len(pages) < 100


async def test_an_events_trace_comes_in_pages_that_resume_after_a_cursor(router):
    student, instructor = new_user(), new_user()
    event = await router.publish("booking.cancelled", {"booking_id": "b1", "student_id": student, "instructor_id": instructor, "title": "Piano", "starts_at": STARTS.iso})
    whole = await router.trace(event["id"], 8)
    assert len(whole) == 8
    pages = await all_pages(router, f"/v1/events/{event['id']}/trace", limit=3)
    assert [len(p["items"]) for p in pages] == [3, 3, 2] and pages[-1]["next"] is None
    paged = [i["notification_id"] for p in pages for i in p["items"]]
    assert sorted(paged) == sorted(i["notification_id"] for i in whole) and len(set(paged)) == 8  # each once, none skipped
    other = await router.publish("payout.paid", {"user_id": student, "payout_id": "p1", "amount": 100, "currency": "EUR"})
    [foreign, *_] = await router.trace(other["id"], 1)
    for after in (foreign["notification_id"], "00000000-0000-4000-8000-000000000000"):
        wrong = await router.client.get(f"/v1/events/{event['id']}/trace", params={"after": after}, headers=router.key)
        assert wrong.status_code == 400 and "not an item of this trace" in wrong.json()["detail"]
    assert (await router.client.get(f"/v1/events/{event['id']}/trace", params={"after": "page-2"}, headers=router.key)).status_code == 422
    assert (await router.client.get(f"/v1/events/{event['id']}/trace", params={"limit": 5000}, headers=router.key)).status_code == 422


async def test_the_trace_is_for_services_only_and_says_when_there_is_none(router):
    user = new_user()
    assert (await router.client.get(f"/v1/users/{user}/trace", headers=bearer(router.settings, user))).status_code == 401
    assert (await router.client.get("/v1/events/e/trace", headers=bearer(router.settings, user))).status_code == 401
    missing = await router.client.get("/v1/events/never-seen/trace", headers=router.key)
    assert missing.status_code == 404 and "never-seen" in missing.json()["detail"]
    assert (await router.client.get(f"/v1/users/{user}/trace", params={"since": "yesterday"}, headers=router.key)).status_code == 422


async def test_erasing_the_trace_removes_delivery_rows_whose_decision_retention_already_removed(router, db):
    user, other = new_user(), new_user()
    kept_decision, orphan, refusal, theirs = (uuid.uuid4() for _ in range(4))
    await db.execute(
        "INSERT INTO router.decisions (notification_id, event_id, event_source, event_type, user_id, channel, decision, reason) "
        "VALUES ($1, 'e1', 'tests', 'booking.created', $2, 'email', 'routed', 'routed'), ($3, 'e2', 'tests', 'booking.created', $2, 'email', 'suppressed', 'user_deleted')",
        kept_decision, user, refusal,
    )
    deliveries = [(kept_decision, "sent", None, user), (orphan, "sent", None, user), (refusal, "suppressed", "user_deleted", user), (theirs, "sent", None, other)]
    await db.executemany(
        "INSERT INTO router.deliveries (notification_id, status, attempt, reason, event_id, user_id, channel, at) VALUES ($1, $2, 1, $3, 'e', $4, 'email', now())",
        deliveries,
    )
    erased = await repo.erase_trace(conn=db, user_id=user)
    assert erased == {"trace_decisions": 1, "trace_deliveries": 2}  # the orphan (its decision pruned) goes too
    left = {r["notification_id"] for r in await db.fetch("SELECT notification_id FROM router.deliveries WHERE user_id = ANY($1::text[])", [user, other])}
    assert left == {refusal, theirs}  # the refusal after the erasure stays, with its decision; the other user's row stays
