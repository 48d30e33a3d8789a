"""Erasure in the shared parts, against real Kafka and PostgreSQL: a sender never delivers to an erased
user, and a service applies an erasure once, reports it, and dead-letters what it cannot apply."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared import Channel, Erasure, HeraldSettings, Ledger, SenderPipeline, create_service, erasure_router

from ..support import TopicReader, eventually, make_topics, produce, running, settings_for
from .test_sender import GatedProvider, ScriptedProvider, dispatch, statuses


def erasure_of(user_id: str) -> Erasure:
    return Erasure(erasure_id=uuid.uuid4(), user_id=user_id, event_id=uuid.uuid4().hex, requested_at=datetime.now(UTC))


async def test_a_dispatch_to_an_erased_user_is_suppressed_wherever_it_comes_from_and_never_reaches_the_provider(infra, namespace, db, ledger_schema):
    await db.execute(f"INSERT INTO {ledger_schema}.erasures (user_id, erasure_id, requested_at) VALUES ('gone', $1, now())", uuid.uuid4())
    settings = settings_for(HeraldSettings, infra, namespace, service_name="test-sender")
    await make_topics(settings)
    provider = ScriptedProvider()
    app = create_service(settings, title="sender", kafka_routers=SenderPipeline(settings, Channel.inapp, provider, ledger=Ledger(ledger_schema)).routers())
    kept = dispatch(recipient={"user_id": "kept"})
    # One routed before the erasure, one waiting in a retry topic, one replayed from dlq (as `herald dlq replay` writes it).
    fresh = dispatch(recipient={"user_id": "gone"})
    retried = dispatch(recipient={"user_id": "gone"}, attempt=2, not_before=datetime.now(UTC) - timedelta(seconds=1))
    replayed = dispatch(recipient={"user_id": "gone"}, created_at=datetime.now(UTC) - timedelta(hours=1), retry_from=datetime.now(UTC))
    async with running(app):
        for d in (kept, fresh, replayed):
            await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=d.recipient.user_id.encode())
        retry_topic = settings.retry_topic("inapp", tier=settings.retry_tiers_seconds[0])
        await produce(infra.kafka_bootstrap, retry_topic, retried.model_dump_json().encode(), key=b"gone")
        found = await statuses(infra, settings, 4, final=True)
    assert provider.calls == [kept.notification_id]
    outcome = {s["notification_id"]: (s["status"], s["reason"]) for s in found}
    assert outcome[str(kept.notification_id)] == ("sent", None)
    for d in (fresh, retried, replayed):
        assert outcome[str(d.notification_id)] == ("suppressed", "user_deleted")
    rows = await db.fetch(f"SELECT status FROM {ledger_schema}.ledger WHERE user_id = 'gone'")
    assert sorted(r["status"] for r in rows) == ["suppressed"] * 3


async def test_an_erasure_waits_for_a_send_under_way_and_nothing_is_sent_to_the_user_after_it(infra, namespace, db, ledger_schema):
    """A batch under way when the erasure comes: the send already claimed finishes (and is recorded) before the
    service erases anything, and a dispatch claimed after the tombstone never reaches the provider."""
    settings = settings_for(HeraldSettings, infra, namespace, service_name="test-sender")
    await make_topics(settings)
    provider = GatedProvider()
    seen: list[tuple[list, str | None]] = []

    async def erase(erasure, res) -> dict[str, int]:
        async with res.pool.acquire() as conn:
            status = await conn.fetchval(f"SELECT status FROM {ledger_schema}.ledger WHERE notification_id = $1", before.notification_id)
        seen.append((list(provider.finished), status))
        return {}

    pipeline = SenderPipeline(settings, Channel.inapp, provider, ledger=Ledger(ledger_schema))
    app = create_service(settings, title="sender", kafka_routers=[*pipeline.routers(), erasure_router(settings, "test", erase, tombstones=ledger_schema)])
    before, after = dispatch(recipient={"user_id": "late"}), dispatch(recipient={"user_id": "late"})
    async with running(app), TopicReader(infra.kafka_bootstrap, settings.erasure_status_topic) as reports:
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), before.model_dump_json().encode(), key=b"late")
        async def under_way():
            return provider.started

        await eventually(under_way, timeout=30, what="the send under way")
        await produce(infra.kafka_bootstrap, settings.erasure_topic, erasure_of("late").model_dump_json().encode(), key=b"late")
        await eventually(
            lambda: db.fetchval(f"SELECT true FROM {ledger_schema}.erasures WHERE user_id = 'late'"), timeout=30, what="the tombstone"
        )
        await asyncio.sleep(1.0)
        assert seen == []  # the erasure waits while the send is claimed
        provider.gate.set()
        await reports.wait_for(1, timeout=30)
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), after.model_dump_json().encode(), key=b"late")
        found = await statuses(infra, settings, 2, final=True)
    assert seen == [([before.notification_id], "sent")]  # it ran once the send was finished and recorded
    assert provider.started == [before.notification_id]
    outcome = {s["notification_id"]: (s["status"], s["reason"]) for s in found}
    assert outcome[str(after.notification_id)] == ("suppressed", "user_deleted")


async def test_a_recipient_id_postgresql_cannot_hold_is_dead_lettered_alone_and_the_batch_goes_on(infra, namespace, ledger_schema):
    settings = settings_for(HeraldSettings, infra, namespace, service_name="test-sender")
    await make_topics(settings)
    provider = ScriptedProvider()
    app = create_service(settings, title="sender", kafka_routers=SenderPipeline(settings, Channel.inapp, provider, ledger=Ledger(ledger_schema)).routers())
    poison, fine = dispatch(recipient={"user_id": "nul\x00id"}), dispatch(recipient={"user_id": "fine"})
    async with running(app), TopicReader(infra.kafka_bootstrap, settings.dlq_topic) as dlq:
        for d in (poison, fine):  # one key: one partition, one batch
            await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"same")
        found = await statuses(infra, settings, 2, final=True)
        [dead] = await dlq.wait_for(1, timeout=30)
    assert provider.calls == [fine.notification_id]
    assert {s["notification_id"]: s["status"] for s in found}[str(fine.notification_id)] == "sent"
    assert dict(dead.headers)["herald-reason"] == b"unclaimable"


@pytest.fixture
def eraser(infra, namespace, ledger_schema):
    async def start(erase):
        settings = settings_for(HeraldSettings, infra, namespace, service_name="test-eraser")
        await make_topics(settings)
        app = create_service(settings, title="eraser", kafka_routers=[erasure_router(settings, "test", erase, tombstones=ledger_schema)])
        return settings, running(app)

    return start


async def test_an_erasure_is_recorded_applied_and_reported_each_time_it_comes(infra, eraser, db, ledger_schema):
    calls: list[str] = []

    async def erase(erasure, res) -> dict[str, int]:
        calls.append(erasure.user_id)
        async with res.pool.acquire() as conn:  # the tombstone is in before the service's own erasure runs
            assert await conn.fetchval(f"SELECT count(*) FROM {ledger_schema}.erasures WHERE user_id = $1", erasure.user_id) == 1
        return {"things": 2 if len(calls) == 1 else 0}

    settings, app = await eraser(erase)
    first = erasure_of("u-1")
    again = first.model_copy(update={"requested_at": first.requested_at + timedelta(minutes=5)})
    async with app, TopicReader(infra.kafka_bootstrap, settings.erasure_status_topic) as reports:
        for e in (first, again):
            await produce(infra.kafka_bootstrap, settings.erasure_topic, e.model_dump_json().encode(), key=b"u-1")
        await reports.wait_for(2, timeout=30)
    assert calls == ["u-1", "u-1"]
    assert [(r["service"], r["user_id"], r["erasure_id"], r["erased"]) for r in reports.json()] == [
        ("test", "u-1", str(first.erasure_id), {"things": 2}),
        ("test", "u-1", str(first.erasure_id), {"things": 0}),
    ]
    row = await db.fetchrow(f"SELECT erasure_id, requested_at FROM {ledger_schema}.erasures WHERE user_id = 'u-1'")
    assert (row["erasure_id"], row["requested_at"]) == (first.erasure_id, first.requested_at)  # the first request is kept


async def test_an_erasure_that_cannot_be_read_or_applied_goes_to_dlq_and_the_next_one_is_applied(infra, eraser):
    async def erase(erasure, res) -> dict[str, int]:
        if erasure.user_id == "bad":
            raise ValueError("cannot erase this one")
        return {}

    settings, app = await eraser(erase)
    good = erasure_of("good")
    async with app, TopicReader(infra.kafka_bootstrap, settings.dlq_topic) as dlq, TopicReader(infra.kafka_bootstrap, settings.erasure_status_topic) as reports:
        await produce(infra.kafka_bootstrap, settings.erasure_topic, b'{"user_id": "x"}', key=b"x")
        await produce(infra.kafka_bootstrap, settings.erasure_topic, erasure_of("bad").model_dump_json().encode(), key=b"bad")
        await produce(infra.kafka_bootstrap, settings.erasure_topic, good.model_dump_json().encode(), key=b"good")
        dead = await dlq.wait_for(2, timeout=30)
        [report] = await reports.wait_for(1, timeout=30)
    reasons = sorted(dict(r.headers)["herald-reason"].decode() for r in dead)
    assert reasons == ["erasure_failed", "invalid_erasure"]
    assert report.key == b"good"


class HeldProvider:
    """Holds the sends of the ids in ``gates`` until each gate is set; records every call."""

    def __init__(self, *held: uuid.UUID) -> None:
        self.gates = {nid: asyncio.Event() for nid in held}
        self.started: list[uuid.UUID] = []

    async def __call__(self, dispatch, res) -> str:
        self.started.append(dispatch.notification_id)
        gate = self.gates.get(dispatch.notification_id)
        if gate is not None:
            await gate.wait()
        return f"msg-{len(self.started)}"


async def test_a_dispatch_claimed_with_its_chunk_before_an_erasure_and_sent_after_it_is_suppressed(infra, namespace, db, ledger_schema):
    """Two delivery slots; one batch P, A, B, C (C for the erased user X, claimed with B while the slots are busy).
    The erasure comes while C waits for a slot: its claim said "not erased", but its send starts after the
    tombstone, so it reads the tombstones again and is suppressed. A and B were under way: they finish."""
    settings = settings_for(HeraldSettings, infra, namespace, service_name="test-sender", concurrency=2)
    await make_topics(settings)
    p, a, b, c = dispatch(recipient={"user_id": "other"}), dispatch(recipient={"user_id": "x"}), dispatch(recipient={"user_id": "x"}), dispatch(recipient={"user_id": "x"})
    provider = HeldProvider(p.notification_id, a.notification_id, b.notification_id)

    async def erase(erasure, res) -> dict[str, int]:
        return {}

    pipeline = SenderPipeline(settings, Channel.inapp, provider, ledger=Ledger(ledger_schema))
    for d in (p, a, b, c):  # one key, one partition: one batch, in this order
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"same")
    app = create_service(settings, title="sender", kafka_routers=[*pipeline.routers(), erasure_router(settings, "test", erase, tombstones=ledger_schema)])

    async def started(*ids):
        async def probe():
            return all(i in provider.started for i in ids)

        await eventually(probe, timeout=30, what=f"{len(ids)} sends started")

    async with running(app), TopicReader(infra.kafka_bootstrap, settings.erasure_status_topic) as reports:
        await started(p.notification_id, a.notification_id)
        provider.gates[p.notification_id].set()  # a slot frees: B takes it, claiming B and C together
        await started(b.notification_id)
        assert await db.fetchval(f"SELECT status FROM {ledger_schema}.ledger WHERE notification_id = $1", c.notification_id) == "claimed"
        await produce(infra.kafka_bootstrap, settings.erasure_topic, erasure_of("x").model_dump_json().encode(), key=b"x")
        await eventually(lambda: db.fetchval(f"SELECT true FROM {ledger_schema}.erasures WHERE user_id = 'x'"), timeout=30, what="the tombstone")
        await asyncio.sleep(0.8)  # C's claim is older than the re-read interval
        provider.gates[a.notification_id].set()  # C gets A's slot
        provider.gates[b.notification_id].set()
        found = await statuses(infra, settings, 4, final=True)
        await reports.wait_for(1, timeout=30)
    outcome = {s["notification_id"]: (s["status"], s["reason"]) for s in found}
    assert c.notification_id not in provider.started
    assert outcome[str(c.notification_id)] == ("suppressed", "user_deleted")
    assert [outcome[str(d.notification_id)][0] for d in (p, a, b)] == ["sent"] * 3
