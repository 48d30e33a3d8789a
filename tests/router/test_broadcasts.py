"""Broadcasts: walked in shards outside the consumer, resumed at their cursor, shared between instances."""

from __future__ import annotations

import json
import uuid

from services.router import repo
from services.router.app import create_app
from services.router.settings import Settings

from ..support import cloud_event, eventually, make_topics, running, settings_for
from .conftest import Harness, by_channel


async def broadcast_rows(db, settings: Settings, event_id: str) -> list[dict]:
    rows = await db.fetch(
        "SELECT shard, shards, routed, finished_at, lease_owner FROM router.broadcasts WHERE namespace = $1 AND event_id = $2 ORDER BY shard",
        settings.kafka_topic_namespace, event_id,
    )
    return [dict(r) for r in rows]


async def test_a_broadcast_is_walked_in_shards_and_reaches_every_user_once(infra, namespace, db):
    settings = settings_for(Settings, infra, namespace, broadcast_shards=3, broadcast_page=40)
    await make_topics(settings)
    prefix = f"bc_{uuid.uuid4().hex[:8]}"
    users = [f"{prefix}_{n}" for n in range(7)]
    await db.executemany("INSERT INTO router.recipients (user_id, email) VALUES ($1, $2)", [(u, f"{u}@example.com") for u in users])
    app = create_app(settings)
    async with running(app) as client:
        router = Harness(infra, settings, client, app)
        event = await router.publish("system.update", {"title": "Maintenance", "body": "Sunday"})

        async def finished() -> list[dict] | None:
            rows = await broadcast_rows(db, settings, event["id"])
            return rows if rows and all(r["finished_at"] for r in rows) else None

        rows = await eventually(finished, timeout=60, what="every shard walked")
        everyone = await db.fetchval("SELECT count(*) FROM router.recipients WHERE deleted_at IS NULL")
        items = await router.trace(event["id"], 2 * len(users), until=lambda items: all({"email", "inapp"} <= set(by_channel(items, u)) for u in users))
    assert [r["shard"] for r in rows] == [0, 1, 2] and {r["shards"] for r in rows} == {3}
    assert sum(r["routed"] for r in rows) == everyone  # each user in exactly one shard
    assert all(r["lease_owner"] is None for r in rows)
    mine = [i for i in items if i["user_id"] in users]
    assert sorted((i["user_id"], i["channel"]) for i in mine) == sorted((u, c) for u in users for c in ("email", "inapp"))


async def test_a_broadcast_resumes_at_its_cursor_when_its_walker_died(infra, namespace, db):
    settings = settings_for(Settings, infra, namespace, broadcast_page=2)
    await make_topics(settings)
    prefix = f"bd_{uuid.uuid4().hex[:8]}"
    users = [f"{prefix}_{n}" for n in range(1, 7)]
    await db.executemany("INSERT INTO router.recipients (user_id, email) VALUES ($1, $2)", [(u, f"{u}@example.com") for u in users])
    event = cloud_event("system.update", {"title": "Maintenance", "body": "Sunday"})
    # What a router that died after walking users 1-3 of this range left behind: its cursor and a lease that ran out.
    await db.execute(
        """
        INSERT INTO router.broadcasts (namespace, event_source, event_id, template, shard, shards, event, origin, after_user, upto_user, routed, lease_owner, lease_until)
        VALUES ($1, $2, $3, 'system_update', 0, 1, $4, 'domain.system/0@0', $5, $6, 3, 'router-dead', now() - interval '1 second')
        """,
        settings.kafka_topic_namespace, event["source"], event["id"], json.dumps(event).encode(), users[2], users[-1],
    )
    app = create_app(settings)
    async with running(app) as client:
        router = Harness(infra, settings, client, app)

        async def finished() -> list[dict] | None:
            rows = await broadcast_rows(db, settings, event["id"])
            return rows if rows and rows[0]["finished_at"] else None

        rows = await eventually(finished, timeout=60, what="the shard taken over and finished")
        items = await router.trace(event["id"], 6)
    assert rows[0]["routed"] == 3 + 3
    assert sorted({i["user_id"] for i in items}) == users[3:]  # from the cursor on, not from the first user


async def test_walkers_take_different_shards_and_a_lease_that_ran_out_is_taken_over(db):
    namespace = f"ns{uuid.uuid4().hex[:8]}."
    created = await repo.create_broadcast(
        conn=db, namespace=namespace, event_source="tests", event_id="e1", template="system_update", generation="", event=b"{}", origin="t/0@0",
        bounds=[(None, "m"), ("m", None)],
    )
    again = await repo.create_broadcast(
        conn=db, namespace=namespace, event_source="tests", event_id="e1", template="system_update", generation="", event=b"{}", origin="t/0@0",
        bounds=[(None, None)],
    )
    replayed = await repo.create_broadcast(
        conn=db, namespace=namespace, event_source="tests", event_id="e1", template="system_update", generation="0@7", event=b"{}", origin="t/0@0",
        bounds=[(None, None)],
    )
    assert (created, again, replayed) == (True, False, True)  # a redelivery is not walked again; a replay from dlq is
    await db.execute("DELETE FROM router.broadcasts WHERE namespace = $1 AND generation = '0@7'", namespace)
    a = await repo.claim_shard(conn=db, namespace=namespace, owner="a", lease_seconds=60)
    b = await repo.claim_shard(conn=db, namespace=namespace, owner="b", lease_seconds=60)
    assert a is not None and b is not None and {a["shard"], b["shard"]} == {0, 1}
    assert await repo.claim_shard(conn=db, namespace=namespace, owner="c", lease_seconds=60) is None
    assert await repo.claim_shard(conn=db, namespace="other.", owner="c", lease_seconds=60) is None  # another deployment's are not seen
    await db.execute("UPDATE router.broadcasts SET lease_until = now() - interval '1 second' WHERE namespace = $1 AND lease_owner = 'a'", namespace)
    c = await repo.claim_shard(conn=db, namespace=namespace, owner="c", lease_seconds=60)
    assert c is not None and c["shard"] == a["shard"]
    assert not await repo.advance_shard(conn=db, shard=a["id"], owner="a", after="k", routed=5, finished=False, lease_seconds=60)  # a lost it
    assert await repo.advance_shard(conn=db, shard=c["id"], owner="c", after="k", routed=5, finished=True, lease_seconds=60)
    row = await db.fetchrow("SELECT after_user, routed, finished_at, lease_owner FROM router.broadcasts WHERE id = $1", c["id"])
    assert (row["after_user"], row["routed"], row["finished_at"] is not None, row["lease_owner"]) == ("k", 5, True, None)
    await repo.release_shard(conn=db, shard=b["id"], owner="b")
    assert (await repo.claim_shard(conn=db, namespace=namespace, owner="d", lease_seconds=60))["shard"] == b["shard"]
    await db.execute("DELETE FROM router.broadcasts WHERE namespace = $1", namespace)


async def test_the_consumer_only_writes_a_broadcast_down_and_goes_on(infra, namespace, db, monkeypatch):
    from services.router.broadcasts import Broadcasts

    monkeypatch.setattr(Broadcasts, "run", lambda self, res: None)  # no walker in this instance
    settings = settings_for(Settings, infra, namespace)
    await make_topics(settings)
    user = f"bw_{uuid.uuid4().hex[:8]}"
    await db.execute("INSERT INTO router.recipients (user_id, email) VALUES ($1, $2)", user, f"{user}@example.com")
    app = create_app(settings)
    async with running(app) as client:
        router = Harness(infra, settings, client, app)
        broadcast = await router.publish("system.update", {"title": "Maintenance", "body": "Sunday"})
        targeted = await router.publish("system.update", {"user_ids": [user], "title": "Hi", "body": "Only you"})
        assert {i["user_id"] for i in await router.trace(targeted["id"], 2)} == {user}  # the event after it was routed
        rows = await eventually(lambda: broadcast_rows(db, settings, broadcast["id"]), what="the broadcast's shards")
    assert len(rows) == settings.broadcast_shards
    assert [(r["routed"], r["finished_at"], r["lease_owner"]) for r in rows] == [(0, None, None)] * len(rows)  # left to the walkers


async def test_a_broadcast_replayed_from_dlq_is_walked_again_and_a_redelivery_is_not(infra, namespace, db):
    from aiokafka import AIOKafkaProducer

    from herald.dlq import replay

    settings = settings_for(Settings, infra, namespace)
    await make_topics(settings)
    app = create_app(settings)
    async with running(app) as client:
        router = Harness(infra, settings, client, app)
        event = await router.publish("system.update", {"title": "Maintenance", "body": "Sunday"})

        async def walked(generations: int):
            rows = await db.fetch(
                "SELECT generation, finished_at FROM router.broadcasts WHERE namespace = $1 AND event_id = $2", settings.kafka_topic_namespace, event["id"]
            )
            done = {r["generation"] for r in rows if r["finished_at"]}
            return done if len(done) == generations and all(r["finished_at"] for r in rows) else None

        assert await eventually(lambda: walked(1), timeout=60, what="the broadcast walked") == {""}
        await router.publish("system.update", event["data"], id=event["id"], source=event["source"])  # a redelivery: same event
        # The same event as a router dead letter (as dispatch_too_large writes it), then replayed.
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            headers = [("herald-stage", b"router"), ("herald-reason", b"dispatch_too_large"), ("herald-original-topic", settings.domain_topic("system.update").encode())]
            await producer.send_and_wait(settings.dlq_topic, json.dumps(event).encode(), key=b"k", headers=headers)
        finally:
            await producer.stop()
        assert await replay(settings, stage="router") == 1
        generations = await eventually(lambda: walked(2), timeout=60, what="the replay walked")
    assert "" in generations and any("@" in g for g in generations)
