"""Scheduled sends on the real broker and PostgreSQL: held until their time (a clock the test moves), released
once by any number of schedulers, reminders planned from the catalogue, cancelled by key or event, expired
when released too late, and refused beyond a source's quota."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.router.app import create_app
from services.router.schedules import RELEASED_HEADER
from services.router.settings import Settings

from ..support import TopicReader, cloud_event, eventually, make_topics, running, settings_for
from .conftest import Harness, by_channel, new_user


class Clock:
    """The router's clock in these tests: it stands still until moved."""

    def __init__(self) -> None:
        # A little ahead of the real clock, as a router's clock is of the events it reads (their times are earlier).
        self.now = (datetime.now(UTC) + timedelta(minutes=5)).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def move(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture
async def db_clean(db):
    """Schedules are in the shared test database: each test's are removed after it, so no other test releases them."""
    sources: list[str] = []
    yield sources
    await db.execute("DELETE FROM router.schedules WHERE source = ANY($1::text[])", sources)
    await db.execute("DELETE FROM router.schedule_cancellations WHERE source = ANY($1::text[])", sources)


@contextlib.asynccontextmanager
async def router_at(infra, namespace, clock: Clock, **overrides):
    settings = settings_for(Settings, infra, namespace, schedule_poll_seconds=0.2, **overrides)
    await make_topics(settings)
    app = create_app(settings, clock=clock)
    async with running(app) as client:
        yield Harness(infra, settings, client, app)


def source_of(db_clean: list[str]) -> str:
    source = f"tests/schedules/{uuid.uuid4().hex[:8]}"
    db_clean.append(source)
    return source


async def decisions(db, event_id: str) -> list[tuple[str | None, str, str]]:
    rows = await db.fetch("SELECT channel, decision, reason FROM router.decisions WHERE event_id = $1 ORDER BY channel NULLS FIRST", event_id)
    return [(r["channel"], r["decision"], r["reason"]) for r in rows]


async def test_an_event_with_sendat_is_routed_at_its_time_not_before_and_survives_a_restart(infra, namespace, db, db_clean):
    clock, source, user = Clock(), source_of(db_clean), new_user()
    event = cloud_event("auth.password_changed", {"user_id": user}, source=source, sendat=iso(clock.now + timedelta(minutes=30)))
    async with router_at(infra, namespace, clock) as router:
        await router.put_recipient(user, email=f"{user}@example.com")
        await router.send("auth.password_changed", event)

        async def scheduled():
            return await decisions(db, event["id"]) == [(None, "scheduled", "sendat")]

        await eventually(scheduled, what="the event scheduled")
        clock.move(minutes=29)
        await asyncio.sleep(1.0)  # a few scheduler passes: nothing is due yet
        assert await db.fetchval("SELECT status FROM router.schedules WHERE event_id = $1", event["id"]) == "pending"
    # The router stops; another starts after the time: the schedule was kept and is released now.
    clock.move(minutes=2)
    async with router_at(infra, namespace, clock) as router:
        items = await router.trace(event["id"], 4)
    assert {(i["channel"], i["decision"]) for i in items if i["channel"]} == {("email", "routed"), ("sms", "suppressed"), ("inapp", "routed")}
    row = await db.fetchrow("SELECT status, finished_at FROM router.schedules WHERE event_id = $1", event["id"])
    assert row["status"] == "released" and row["finished_at"] == clock.now


async def test_two_schedulers_release_each_schedule_exactly_once(infra, namespace, db, db_clean):
    clock, source = Clock(), source_of(db_clean)
    count = 150
    events = [
        cloud_event("auth.password_changed", {"user_id": new_user()}, source=source, sendat=iso(clock.now + timedelta(minutes=5))) for _ in range(count)
    ]
    async with router_at(infra, namespace, clock, schedule_release_batch=20) as first, router_at(infra, namespace, clock, schedule_release_batch=20):
        for event in events:
            await first.send("auth.password_changed", event)

        async def all_scheduled():
            return await db.fetchval("SELECT count(*) FROM router.schedules WHERE source = $1 AND status = 'pending'", source) == count

        await eventually(all_scheduled, timeout=60, what="every event scheduled")
        async with TopicReader(infra.kafka_bootstrap, first.settings.domain_topic("auth.password_changed")) as topic:
            clock.move(minutes=6)  # both schedulers find all of them due at once

            async def released():
                await topic.poll()
                found = [r for r in topic.records if any(k == RELEASED_HEADER for k, _ in r.headers or ())]
                done = await db.fetchval("SELECT count(*) FROM router.schedules WHERE source = $1 AND status = 'released'", source)
                return found if done == count and len(found) >= count else None

            found = await eventually(released, timeout=60, what="every schedule released")
            await asyncio.sleep(1.0)
            await topic.poll()
    ids = [json.loads(r.value)["id"] for r in topic.records if any(k == RELEASED_HEADER for k, _ in r.headers or ())]
    assert sorted(ids) == sorted(e["id"] for e in events)  # each once, none twice
    assert len(found) == count


async def test_a_booking_plans_its_reminders_and_a_cancellation_stops_the_rest(infra, namespace, db, db_clean):
    clock, source = Clock(), source_of(db_clean)
    student, instructor = new_user(), new_user()
    starts = clock.now + timedelta(days=2)
    booking = {"booking_id": f"b-{uuid.uuid4().hex[:6]}", "student_id": student, "instructor_id": instructor, "title": "Piano", "starts_at": iso(starts)}
    created = cloud_event("booking.created", booking, source=source)
    async with router_at(infra, namespace, clock) as router:
        await router.send("booking.created", created)

        async def planned():
            rows = await db.fetch("SELECT event_id, due_at, cancel_key FROM router.schedules WHERE source = $1 AND kind = 'reminder' ORDER BY due_at", source)
            return rows if len(rows) == 2 else None

        day, hour = await eventually(planned, what="two reminders planned")
        assert (day["due_at"], hour["due_at"]) == (starts - timedelta(hours=24), starts - timedelta(hours=1))
        assert day["cancel_key"] == f"booking:{booking['booking_id']}"

        clock.move(days=1, seconds=1)  # the 24-hour reminder is due
        items = await router.trace(day["event_id"], 6, until=lambda items: any(i["channel"] for i in items))
        routed = by_channel(items, student)
        assert routed["inapp"]["decision"] == "routed" and routed["inapp"]["template"] == "lesson_reminder"

        await router.send("booking.cancelled", cloud_event("booking.cancelled", booking, source=source))

        async def cancelled():
            return await db.fetchval("SELECT status FROM router.schedules WHERE event_id = $1", hour["event_id"]) == "cancelled"

        await eventually(cancelled, what="the 1-hour reminder cancelled")
        clock.move(days=1)  # past the 1-hour reminder's time: it is never released
        await asyncio.sleep(1.0)
        assert await decisions(db, hour["event_id"]) == [(None, "suppressed", "schedule_cancelled")]
        # A booking.created of the same booking older than the cancellation, arriving late, plans nothing (its
        # reminders would still be ahead), while one newer than the cancellation does.
        ahead = {**booking, "starts_at": iso(clock.now + timedelta(days=3))}
        stale = cloud_event("booking.created", ahead, source=source, time=iso(datetime.fromisoformat(created["time"]) - timedelta(minutes=1)))
        await router.send("booking.created", stale)
        await asyncio.sleep(1.5)
        assert await db.fetchval("SELECT count(*) FROM router.schedules WHERE source = $1 AND status = 'pending'", source) == 0
        await router.send("booking.created", cloud_event("booking.created", ahead, source=source, time=iso(clock.now)))

        async def replanned():
            return await db.fetchval("SELECT count(*) FROM router.schedules WHERE source = $1 AND status = 'pending'", source) == 2

        await eventually(replanned, what="a newer booking's reminders planned")


async def test_a_reschedule_moves_the_pending_reminders(infra, namespace, db, db_clean):
    clock, source = Clock(), source_of(db_clean)
    booking = {"booking_id": f"b-{uuid.uuid4().hex[:6]}", "student_id": new_user(), "instructor_id": new_user(), "title": "Piano", "starts_at": iso(clock.now + timedelta(days=2))}
    later = clock.now + timedelta(days=5)
    async with router_at(infra, namespace, clock) as router:
        await router.send("booking.created", cloud_event("booking.created", booking, source=source))

        async def pending():
            rows = await db.fetch("SELECT due_at FROM router.schedules WHERE source = $1 AND status = 'pending' ORDER BY due_at", source)
            return [r["due_at"] for r in rows]

        await eventually(pending, what="the reminders planned")
        moved = {**booking, "starts_at": iso(later), "previous_starts_at": booking["starts_at"]}
        event = cloud_event("booking.rescheduled", moved, source=source, time=iso(clock.now + timedelta(seconds=1)))
        await router.send("booking.rescheduled", event)

        async def moved_reminders():
            due = await pending()
            return due if due == [later - timedelta(hours=24), later - timedelta(hours=1)] else None

        await eventually(moved_reminders, what="the reminders moved to the new start")
        assert await db.fetchval("SELECT count(*) FROM router.schedules WHERE source = $1 AND status = 'cancelled'", source) == 2
        # The same booking.rescheduled delivered again (a batch handed back) does not cancel its own new reminders.
        await router.send("booking.rescheduled", event)
        await asyncio.sleep(1.5)
        assert await pending() == [later - timedelta(hours=24), later - timedelta(hours=1)]
        items = await router.trace(event["id"], 6)
        assert {i["template"] for i in items if i["decision"] == "routed"} == {"booking_rescheduled"}


async def test_schedules_are_listed_and_cancelled_by_key_with_a_key_that_may_publish_from_the_source(infra, namespace, db, db_clean):
    clock, source, other = Clock(), source_of(db_clean), source_of(db_clean)
    keys = "app:publish=app-key-0123456789abcdef,ops:admin=ops-key-0123456789abcdef,other:publish=other-key-0123456789abcdef"
    bound = f"app={source},other={other}"
    async with router_at(infra, namespace, clock, api_keys=keys, api_key_sources=bound) as router:
        event = cloud_event("auth.password_changed", {"user_id": new_user()}, source=source, subject="account-7", sendat=iso(clock.now + timedelta(hours=1)))
        await router.send("auth.password_changed", event)

        async def listed():
            answer = await router.client.get("/v1/schedules/account-7", params={"source": source}, headers={"Authorization": "ApiKey app-key-0123456789abcdef"})
            return answer.json()["items"] if answer.status_code == 200 and answer.json()["items"] else None

        [item] = await eventually(listed, what="the schedule listed")
        assert (item["event_id"], item["kind"]) == (event["id"], "sendat")
        foreign = await router.client.delete("/v1/schedules/account-7", params={"source": source}, headers={"Authorization": "ApiKey other-key-0123456789abcdef"})
        assert foreign.status_code == 403 and source in foreign.json()["detail"]
        assert (await router.client.delete("/v1/schedules/account-7", params={"source": source})).status_code == 401
        done = await router.client.delete("/v1/schedules/account-7", params={"source": source}, headers={"Authorization": "ApiKey app-key-0123456789abcdef"})
        assert done.status_code == 200 and done.json()["cancelled"] == 1
        again = await router.client.delete("/v1/schedules/account-7", params={"source": source}, headers={"Authorization": "ApiKey ops-key-0123456789abcdef"})
        assert again.json()["cancelled"] == 0  # nothing pending any more (an admin key acts for any source)
        clock.move(hours=2)
        await asyncio.sleep(1.0)
        assert await db.fetchval("SELECT status FROM router.schedules WHERE event_id = $1", event["id"]) == "cancelled"
        assert await decisions(db, event["id"]) == [(None, "suppressed", "schedule_cancelled")]


async def test_a_schedule_past_its_expiry_is_not_released_and_a_source_over_quota_is_refused(infra, namespace, db, db_clean):
    clock, source = Clock(), source_of(db_clean)
    starts = clock.now + timedelta(hours=2)
    reminder = {"booking_id": "b-exp", "student_id": new_user(), "instructor_id": new_user(), "title": "Piano", "starts_at": iso(starts), "minutes_before": 60}
    late = cloud_event("lesson.reminder", reminder, source=source, sendat=iso(clock.now + timedelta(hours=1)))
    async with router_at(infra, namespace, clock, schedule_quota_per_source=2) as router:
        await router.send("lesson.reminder", late)

        async def held():
            return await db.fetchval("SELECT status FROM router.schedules WHERE event_id = $1", late["id"]) == "pending"

        await eventually(held, what="the reminder held")  # one of the two pending the quota allows
        others = [cloud_event("auth.password_changed", {"user_id": new_user()}, source=source, sendat=iso(clock.now + timedelta(days=1))) for _ in range(2)]
        async with TopicReader(infra.kafka_bootstrap, router.settings.dlq_topic) as dlq:
            for event in others:
                await router.send("auth.password_changed", event)
            [dead] = await dlq.wait_for(1, timeout=30)
        assert dict(dead.headers)["herald-reason"] == b"schedule_quota" and json.loads(dead.value)["id"] == others[1]["id"]
        clock.move(hours=3)  # no router ran while it was due; now the lesson has started

        async def expired():
            return await db.fetchval("SELECT status FROM router.schedules WHERE event_id = $1", late["id"]) == "expired"

        await eventually(expired, what="the reminder expired")
        assert await decisions(db, late["id"]) == [(None, "suppressed", "schedule_expired")]


async def test_an_invalid_sendat_is_refused_by_the_router_as_a_dead_letter(router):
    async with TopicReader(router.infra.kafka_bootstrap, router.settings.dlq_topic) as dlq:
        await router.send("auth.password_changed", cloud_event("auth.password_changed", {"user_id": new_user()}, sendat="next tuesday"))
        [dead] = await dlq.wait_for(1, timeout=30)
    assert b"sendat" in dict(dead.headers)["herald-error"]



async def test_an_erasure_removes_the_users_own_schedules_and_keeps_the_pending_ones_of_others(infra, namespace, db, db_clean):
    from services.router import schedules

    clock, source = Clock(), source_of(db_clean)
    me, other = new_user(), new_user()
    mine = cloud_event("auth.password_changed", {"user_id": me}, source=source, sendat=iso(clock.now + timedelta(hours=1)))
    shared_booking = {"booking_id": "b-er", "student_id": me, "instructor_id": other, "title": "Piano", "starts_at": iso(clock.now + timedelta(days=3))}
    async with router_at(infra, namespace, clock) as router:
        await router.send("auth.password_changed", mine)
        await router.send("booking.created", cloud_event("booking.created", shared_booking, source=source))

        async def planned():
            return await db.fetchval("SELECT count(*) FROM router.schedules WHERE source = $1", source) == 3

        await eventually(planned, what="three schedules")
    assert await schedules.erase_user(db, user_id=me) == 1  # only the one naming just the user
    left = await db.fetch("SELECT kind, user_ids FROM router.schedules WHERE source = $1", source)
    assert sorted((r["kind"], sorted(r["user_ids"])) for r in left) == [("reminder", sorted([me, other]))] * 2


async def test_a_batch_whose_schedules_cannot_be_written_dead_letters_the_events_that_asked_and_routes_the_rest(infra, namespace, db, db_clean, monkeypatch):
    from services.router.schedules import Schedules

    async def broken(self, ops, res):
        raise ValueError("no schedules today")

    monkeypatch.setattr(Schedules, "apply", broken)
    clock, source = Clock(), source_of(db_clean)
    asking = cloud_event("auth.password_changed", {"user_id": new_user()}, source=source, sendat=iso(clock.now + timedelta(hours=1)))
    plain = cloud_event("auth.password_changed", {"user_id": new_user()}, source=source)
    async with router_at(infra, namespace, clock) as router, TopicReader(infra.kafka_bootstrap, router.settings.dlq_topic) as dlq:
        await router.send("auth.password_changed", asking)
        await router.send("auth.password_changed", plain)
        [dead] = await dlq.wait_for(1, timeout=30)
        assert dict(dead.headers)["herald-reason"] == b"schedule_failed" and json.loads(dead.value)["id"] == asking["id"]
        assert {i["decision"] for i in await router.trace(plain["id"], 3)} <= {"routed", "suppressed"}


async def test_quiet_hours_hold_email_and_push_across_a_dst_change_and_never_in_app_or_security(infra, namespace, db, db_clean):
    from ..support import bearer

    clock = Clock()
    clock.now = datetime(2026, 3, 28, 22, 30, tzinfo=UTC)  # 23:30 in Berlin; the clocks go forward at 02:00
    user, source = new_user(), source_of(db_clean)
    async with router_at(infra, namespace, clock) as router:
        await router.put_recipient(user, email=f"{user}@example.com", timezone="Europe/Berlin")
        me = bearer(router.settings, user)
        assert (await router.client.put("/v1/quiet-hours", json={"start": "22:00", "end": "22:00"}, headers=me)).status_code == 422
        set_ = await router.client.put("/v1/quiet-hours", json={"start": "22:00", "end": "07:00"}, headers=me)
        assert set_.status_code == 200 and set_.json() == {"user_id": user, "quiet_hours": {"start": "22:00", "end": "07:00"}, "timezone": "Europe/Berlin"}
        message = cloud_event(
            "message.received", {"message_id": "m", "conversation_id": "c", "sender_id": "s", "sender_name": "S", "recipient_id": user, "preview": "hi"},
            source=source,
        )
        alert = cloud_event("auth.password_changed", {"user_id": user}, source=source)
        async with TopicReader(infra.kafka_bootstrap, [router.settings.notify_topic("email"), router.settings.notify_topic("email", critical=True)]) as email:
            await router.send("message.received", message)
            await router.send("auth.password_changed", alert)
            items = by_channel(await router.trace(message["id"], 3))
            assert (items["email"]["decision"], items["email"]["reason"]) == ("held", "quiet_hours")
            assert "2026-03-29T05:00:00+00:00" in items["email"]["detail"]  # 07:00 in Berlin, already summer time
            assert items["push"]["decision"] == "held" and items["inapp"]["decision"] == "routed"
            assert by_channel(await router.trace(alert["id"], 3))["email"]["decision"] == "routed"  # security never waits
            [sent_now] = await email.wait_for(1)
            assert json.loads(sent_now.value)["event_type"] == "auth.password_changed"
            clock.now = datetime(2026, 3, 29, 4, 59, tzinfo=UTC)
            await asyncio.sleep(1.0)
            assert len(await email.poll()) == 1  # 06:59 in Berlin: still quiet
            clock.now = datetime(2026, 3, 29, 5, 0, 1, tzinfo=UTC)
            released = await email.wait_for(2)
        assert json.loads(released[1].value)["notification_id"] == items["email"]["notification_id"]
        assert "released" in by_channel(await router.trace(message["id"], 3))["email"]["detail"]
        removed = await router.client.delete("/v1/quiet-hours", headers=me)
        assert removed.status_code == 200 and removed.json()["quiet_hours"] is None


async def test_odd_times_in_one_event_dead_letter_that_event_and_the_rest_of_the_batch_is_planned(infra, namespace, db, db_clean):
    clock, source = Clock(), source_of(db_clean)
    naive = {"booking_id": "b-naive", "student_id": new_user(), "instructor_id": new_user(), "title": "Piano",
             "starts_at": (clock.now + timedelta(days=2)).replace(tzinfo=None).isoformat()}  # no offset: read as UTC
    ancient = {**naive, "booking_id": "b-ancient", "starts_at": "0001-01-01T00:30:00+01:00"}  # UTC cannot hold it
    async with router_at(infra, namespace, clock) as router, TopicReader(infra.kafka_bootstrap, router.settings.dlq_topic) as dlq:
        await router.send("booking.created", cloud_event("booking.created", ancient, source=source))
        await router.send("booking.created", cloud_event("booking.created", naive, source=source))

        async def planned():
            rows = await db.fetch("SELECT due_at FROM router.schedules WHERE source = $1 ORDER BY due_at", source)
            return [r["due_at"] for r in rows] if len(rows) == 2 else None

        due = await eventually(planned, what="the naive booking's reminders")
        assert due == [clock.now + timedelta(days=1), clock.now + timedelta(days=2, hours=-1)]
        [dead] = await dlq.wait_for(1, timeout=30)
        assert json.loads(dead.value)["data"]["booking_id"] == "b-ancient" and dict(dead.headers)["herald-reason"] == b"schedule_failed"
