"""Routing on the real broker: the priority lane, bad input, duplicates and broadcasts."""

import asyncio
import json

from services.router.settings import Settings
from shared import Channel, Dispatch, HeraldSettings, Ledger, Resources, SenderPipeline, create_service

from ..support import Moment, TopicReader, eventually, running, settings_for
from .conftest import by_channel, new_user


async def test_a_flood_of_promotional_mail_does_not_delay_a_password_change_alert(router, infra, namespace, ledger_schema):
    gate = asyncio.Event()
    delivered: list[Dispatch] = []

    async def deliver(dispatch: Dispatch, res: Resources) -> str:
        if not dispatch.critical:
            await gate.wait()  # the normal lane is stuck behind a slow provider
        delivered.append(dispatch)
        return "ok"

    sender_settings = settings_for(HeraldSettings, infra, namespace, service_name="test-email")
    sender = create_service(sender_settings, title="email", kafka_routers=SenderPipeline(sender_settings, Channel.email, deliver, ledger=Ledger(ledger_schema)).routers())
    users = [new_user() for _ in range(5)]
    for user in users:
        await router.put_recipient(user, email=f"{user}@example.com")
    async with running(sender):
        for i in range(200):
            await router.send("marketing.promotion", _event("marketing.promotion", {"user_id": users[i % 5], "campaign_id": "c", "title": "t", "body": "b"}))
        alert = await router.publish("auth.password_changed", {"user_id": users[0]})
        await eventually(lambda: asyncio.sleep(0, result=[d for d in delivered if d.event_id == alert["id"]]), timeout=30, what="the alert delivered")
        assert not [d for d in delivered if not d.critical]
        gate.set()
        await eventually(lambda: asyncio.sleep(0, result=len(delivered) == 201), timeout=60, what="the promotions delivered once the provider recovers")
    async with TopicReader(infra.kafka_bootstrap, router.settings.notify_topic("email", critical=True)) as critical:
        await critical.wait_for(1)
        assert [d["event_id"] for d in critical.json()] == [alert["id"]]


async def test_bad_input_is_dead_lettered_with_the_reason_and_routing_goes_on(router):
    user = new_user()
    bad = [
        (b"{not json", "invalid_json"),
        (b'{"hello": "world"}', "not_cloudevent"),
        (json.dumps(_event("booking.created", {"booking_id": "b"})).encode(), "invalid_data"),
        (json.dumps(_event("hall.alert", {"hall_id": "h", "hall_name": "H", "alert": "a", "admin_ids": []})).encode(), "invalid_data"),
        (json.dumps(_event("hall.alert", {"hall_id": "h", "hall_name": "H", "alert": "a", "admin_ids": ["u_1", 7]})).encode(), "invalid_data"),
        (json.dumps(_event("message.received", {"message_id": "m", "conversation_id": "c", "sender_id": "s", "sender_name": "S", "preview": "p"})).encode(), "invalid_data"),
        (json.dumps(_event("user.deleted", {"user_id": "u\u0000x"})).encode(), "invalid_data"),
        (json.dumps(_event("user.created", {"user_id": "u_9", "email": "a@example.com", "phone_verified_at": "not a time"})).encode(), "invalid_data"),
        (json.dumps(_event("review.received", {"review_id": "r", "instructor_id": "u\u0000x", "reviewer_id": "x", "reviewer_name": "X", "rating": 5})).encode(), "invalid_data"),
        (json.dumps({**_event("payout.paid", {}), "id": "e\u0000"}).encode(), "not_cloudevent"),
        # text no sender could store: refused here, before any sender sees it
        (json.dumps(_event("message.received", {"message_id": "m", "conversation_id": "c", "sender_id": "s", "sender_name": "S", "recipient_id": user, "preview": "a\u0000b"})).encode(), "invalid_data"),
        (json.dumps(_event("message.received", {"message_id": "m", "conversation_id": "c", "sender_id": "s", "sender_name": "S", "recipient_id": user, "preview": "x" * 70_000})).encode(), "invalid_data"),
    ]
    for value, _ in bad:
        await router.send("booking.created", value)
    await router.publish("booking.renamed", {"user_id": user})  # a type of a known area the catalogue does not know: skipped
    good = await router.publish("message.received", {"message_id": "m", "conversation_id": "c", "sender_id": "s", "sender_name": "S", "recipient_id": user, "preview": "hi"})
    assert len(await router.trace(good["id"], 3)) == 3
    async with TopicReader(router.infra.kafka_bootstrap, router.settings.dlq_topic) as dlq:
        dead = await dlq.wait_for(len(bad))
    assert [(r.value, dict(r.headers)["herald-reason"].decode()) for r in dead] == bad
    assert b"admin_ids" in dict(dead[3].headers)["herald-error"] and b"admin_ids.1" in dict(dead[4].headers)["herald-error"]
    assert b"recipient_id" in dict(dead[5].headers)["herald-error"]
    assert b"preview: contains a NUL character" in dict(dead[10].headers)["herald-error"]
    assert b"preview: text longer than 65536 characters" in dict(dead[11].headers)["herald-error"]
    [traced] = await router.trace(json.loads(bad[2][0])["id"])
    assert (traced["decision"], traced["reason"], traced["user_id"]) == ("dead_lettered", "invalid_data", None)
    metrics = (await router.client.get("/metrics/")).text
    assert 'herald_events_total{outcome="skipped",type="unknown"} 1.0' in metrics
    assert 'herald_dead_lettered_total{reason="invalid_data",stage="router"} 9.0' in metrics


async def test_a_duplicate_event_yields_identical_notification_ids_and_one_trace(router):
    user = new_user()
    await router.put_recipient(user, email="a@example.com")
    event = _event("review.received", {"review_id": "r", "instructor_id": user, "reviewer_id": "x", "reviewer_name": "X", "rating": 5})
    await router.send("review.received", event)
    await router.send("review.received", event)
    async with TopicReader(router.infra.kafka_bootstrap, router.settings.notify_topic("inapp")) as inapp:
        first, second = await inapp.wait_for(2)
    assert Dispatch.model_validate_json(first.value).notification_id == Dispatch.model_validate_json(second.value).notification_id
    assert first.key == user.encode()
    items = await router.trace(event["id"], 3)
    assert sorted(i["channel"] for i in items) == ["email", "inapp", "push"]
    assert by_channel(items)["inapp"]["notification_id"] == str(Dispatch.model_validate_json(first.value).notification_id)


async def test_a_system_update_without_users_goes_to_every_user_not_deleted(router):
    alive, gone = new_user(), new_user()
    await router.put_recipient(alive, email="a@example.com")
    await router.put_recipient(gone, email="b@example.com")
    await router.publish("user.deleted", {"user_id": gone})
    named = await router.publish("system.update", {"user_ids": [alive], "title": "Hi", "body": "Only you"})
    assert {i["user_id"] for i in await router.trace(named["id"], 2)} == {alive}
    event = await router.publish("system.update", {"title": "Maintenance", "body": "Sunday"})

    def has_alive(items):
        return {"email", "inapp"} <= set(by_channel(items, alive))

    items = await router.trace(event["id"], 2, until=has_alive)
    assert gone not in {i["user_id"] for i in items}
    assert by_channel(items, alive)["email"]["decision"] == "routed"


async def test_domain_events_delivery_statuses_and_erasures_are_consumed_in_groups_of_their_own(router):
    assert isinstance(router.settings, Settings)
    groups = {s.group_id for s in router.app.state.resources.broker.subscribers}
    names = ("router", "router-status", "router-erasure", "router-erasure-status")
    assert groups == {router.settings.group_id(name) for name in names}


def _event(event_type: str, data: dict) -> dict:
    from ..support import cloud_event

    return cloud_event(event_type, data)


async def test_a_users_dispatches_keep_the_order_of_their_events_across_chunks(infra, namespace):
    from aiokafka import AIOKafkaProducer

    from services.router.app import create_app

    from ..support import cloud_event, make_topics

    settings = settings_for(Settings, infra, namespace, route_chunk=1, route_pipeline_depth=4)
    await make_topics(settings)
    user = new_user()
    events = [cloud_event("message.received", {"message_id": f"m{i}", "conversation_id": "c", "sender_id": "s", "sender_name": "S", "recipient_id": user, "preview": str(i)}) for i in range(40)]
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all", linger_ms=50)
    await producer.start()
    try:
        for event in events:
            await producer.send(settings.domain_topic("message.received"), json.dumps(event).encode(), key=user.encode())
        await producer.flush()
    finally:
        await producer.stop()
    async with running(create_app(settings)):
        async with TopicReader(infra.kafka_bootstrap, settings.notify_topic("inapp")) as inapp:
            await inapp.wait_for(len(events))
    assert [d["event_id"] for d in inapp.json()] == [e["id"] for e in events]


async def test_an_event_whose_dispatch_would_exceed_the_largest_record_is_dead_lettered_and_routing_goes_on(infra, namespace):
    from services.router.app import create_app

    from ..support import make_topics
    from .conftest import Harness

    settings = settings_for(Settings, infra, namespace, kafka_max_message_bytes=1000)
    await make_topics(settings)
    app = create_app(settings)
    user = new_user()
    async with running(app) as client:
        router = Harness(infra, settings, client, app)
        big = await router.publish("message.received", {"message_id": "m1", "conversation_id": "c", "sender_id": "s", "sender_name": "S", "recipient_id": user, "preview": "p" * 500})
        small = await router.publish("message.received", {"message_id": "m2", "conversation_id": "c", "sender_id": "s", "sender_name": "S", "recipient_id": user, "preview": "hi"})
        routed = await router.trace(small["id"], 2)
        traced = await router.trace(big["id"], 3)
        async with TopicReader(infra.kafka_bootstrap, settings.dlq_topic) as dlq:
            [dead] = await dlq.wait_for(1)
        async with TopicReader(infra.kafka_bootstrap, settings.notify_topic("inapp")) as inapp:
            await inapp.wait_for(1)
            await asyncio.sleep(1)  # nothing more arrives
            dispatched = [d["event_id"] for d in inapp.json()]
        metrics = (await client.get("/metrics/")).text
    assert by_channel(routed)["inapp"]["decision"] == "routed" and "dispatch_too_large" not in {i["reason"] for i in routed}
    assert by_channel(traced)["inapp"]["reason"] == by_channel(traced)["push"]["reason"] == "dispatch_too_large"
    assert [i["reason"] for i in traced if i["decision"] == "dead_lettered"] == ["dispatch_too_large"]
    assert json.loads(dead.value)["id"] == big["id"] and dict(dead.headers)["herald-reason"] == b"dispatch_too_large"
    assert b"HERALD_KAFKA_MAX_MESSAGE_BYTES" in dict(dead.headers)["herald-error"]
    assert dispatched == [small["id"]]
    assert 'herald_dead_lettered_total{reason="dispatch_too_large",stage="router"} 1.0' in metrics


async def test_a_link_to_a_foreign_host_dead_letters_the_event_and_allowed_ones_are_encoded(infra, namespace):
    from services.router.app import create_app
    from services.router.settings import Settings

    from ..support import make_topics, running, settings_for
    from .conftest import Harness

    settings = settings_for(Settings, infra, namespace, frontend_url="https://app.example.com", link_hosts="*.example.org")
    await make_topics(settings)
    user = new_user()
    async with running(create_app(settings)) as client:
        router = Harness(infra, settings, client, None)  # type: ignore[arg-type]
        tip = {"user_id": user, "title": "Scales", "body": "Daily"}
        foreign = await router.publish("content.learning_tip", {**tip, "path": "https://evil.example.net/login"})
        sneaky = await router.publish("content.learning_tip", {**tip, "path": "javascript:alert(1)"})
        allowed = await router.publish("content.learning_tip", {**tip, "path": "https://cdn.example.org/tips/scales"})
        relative = await router.publish("content.learning_tip", {**tip, "path": "/tips/scales and arpeggios?level=2"})
        booking = await router.publish("booking.confirmed", {"booking_id": "b 1/../admin", "student_id": user, "instructor_id": new_user(), "title": "Piano", "starts_at": Moment().iso})
        async with TopicReader(infra.kafka_bootstrap, settings.dlq_topic) as dlq:
            dead = await dlq.wait_for(2)
        assert {json.loads(r.value)["id"]: dict(r.headers)["herald-reason"] for r in dead} == {foreign["id"]: b"link_not_allowed", sneaky["id"]: b"link_not_allowed"}
        assert b"evil.example.net" in dict(dead[0].headers)["herald-error"] or b"evil.example.net" in dict(dead[1].headers)["herald-error"]
        async with TopicReader(infra.kafka_bootstrap, settings.notify_topic("inapp")) as inapp:
            sent = {d["event_id"]: d["url"] for d in (json.loads(r.value) for r in await inapp.wait_for(4))}
    assert sent[allowed["id"]] == "https://cdn.example.org/tips/scales"
    assert sent[relative["id"]] == "https://app.example.com/tips/scales%20and%20arpeggios?level=2"
    assert sent[booking["id"]] == "https://app.example.com/bookings/b%201%2F..%2Fadmin"  # a value never walks the path
