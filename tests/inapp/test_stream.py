"""Real-time delivery on real uvicorn servers: Kafka → PostgreSQL → Redis pub/sub → SSE, across instances, with resume."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.inapp import api as inbox_api
from services.inapp import logic
from services.inapp.app import TEMPLATES, create_app
from services.inapp.handlers import store_notification
from services.inapp.settings import Settings
from services.inapp.stream import StreamHub
from shared import MessageTemplates, Metrics, Resources

from ..support import bearer, eventually, make_topics, new_namespace, produce, settings_for
from .helpers import SSE, Server, TcpProxy, dispatch, sse


async def stream_token(url: str, settings: Settings, user: str) -> str:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{url}/v1/inbox/stream-token", headers=bearer(settings, user))
        assert response.status_code == 200, response.text
        return response.json()["token"]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples matching ``labels`` in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(rf"^{re.escape(name)}(\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


async def metrics_of(url: str) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{url}/metrics/")).text


async def rows_of(pool, user: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM inapp.notifications WHERE user_id = $1", user)


@pytest.fixture
async def stream_settings(infra, namespace) -> Settings:
    settings = settings_for(Settings, infra, namespace, stream_ping_seconds=0.5)
    await make_topics(settings)
    return settings


async def test_a_dispatch_from_kafka_is_stored_once_and_pushed_to_the_open_stream(infra, stream_settings, pool, user):
    async with Server(create_app(stream_settings)) as server:
        token = await stream_token(server.url, stream_settings, user)
        async with sse(f"{server.url}/v1/inbox/stream", params={"token": token}) as stream:
            ready = await stream.next("ready")
            assert ready.json() == {"unread": 0, "last_event_id": 0} and ready.id == "0"
            d = dispatch(user, data={"title": "Scheduled maintenance", "body": "Tonight."})
            for _ in range(2):  # the same dispatch twice: one row, one event
                await produce(infra.kafka_bootstrap, stream_settings.notify_topic("inapp"), d.model_dump_json().encode(), key=user.encode())
            event = await stream.next("notification")
            item = event.json()
            assert item["id"] == str(d.notification_id) and item["title"] == "Scheduled maintenance" and item["read"] is False
            assert event.id == "1"
            assert (await stream.next("unread")).json() == {"count": 1}
            text = await metrics_of(server.url)
            assert metric(text, "herald_sse_streams_open") == 1
            assert metric(text, "herald_sse_fanout_latency_seconds_count") >= 1
            assert metric(text, "herald_inbox_operations_total", operation="stored") == 1
            await eventually(lambda: _deliveries(server.url, "duplicate"), what="the second copy counted as a duplicate")
            assert stream.events.empty(), "the duplicate must not be streamed again"
        assert await rows_of(pool, user) == 1
        await eventually(lambda: _streams_open(server.url, 0), what="the closed stream no longer counted")


async def _deliveries(url: str, status: str) -> bool:
    return metric(await metrics_of(url), "herald_deliveries_total", channel="inapp", status=status) >= 1


async def _streams_open(url: str, expected: int) -> bool:
    return metric(await metrics_of(url), "herald_sse_streams_open") == expected


async def test_heartbeats_keep_an_idle_stream_alive(stream_settings, user):
    async with Server(create_app(stream_settings)) as server:
        async with sse(f"{server.url}/v1/inbox/stream", headers=bearer(stream_settings, user)) as stream:
            await stream.next("ready")
            await eventually(lambda: _at_least(stream.comments, 2), timeout=20, what="two heartbeat comments")


async def _at_least(items: list, count: int) -> bool:
    return len(items) >= count


async def test_the_stream_accepts_a_stream_token_or_a_bearer_jwt_and_nothing_else(stream_settings, user):
    async with Server(create_app(stream_settings)) as server, httpx.AsyncClient(timeout=10) as client:
        url = f"{server.url}/v1/inbox/stream"
        jwt_token = bearer(stream_settings, user)["Authorization"].split()[1]
        assert (await client.get(url)).status_code == 401
        assert (await client.get(url, params={"token": "made-up"})).status_code == 401
        assert (await client.get(url, params={"token": jwt_token})).status_code == 401, "the JWT is never accepted in a URL"
        token = await stream_token(server.url, stream_settings, user)
        stolen = await client.get(f"{server.url}/v1/inbox", headers={"Authorization": f"Bearer {token}"})
        assert stolen.status_code == 401, "a stream token opens the stream only"
        bad_resume = await client.get(url, params={"token": token}, headers={"Last-Event-ID": "x1"})
        assert bad_resume.status_code == 400 and bad_resume.json()["detail"]
        async with sse(url, params={"token": token}) as stream:
            await stream.next("ready")


async def test_a_stream_token_expires(infra, namespace, user):
    settings = settings_for(Settings, infra, namespace, stream_token_ttl_seconds=5)
    await make_topics(settings)
    async with Server(create_app(settings)) as server, httpx.AsyncClient(timeout=10) as client:
        token = await stream_token(server.url, settings, user)
        async with sse(f"{server.url}/v1/inbox/stream", params={"token": token}) as stream:
            await stream.next("ready")

        async def refused() -> bool:
            async with client.stream("GET", f"{server.url}/v1/inbox/stream", params={"token": token}) as response:
                return response.status_code == 401

        await eventually(refused, timeout=20, interval=0.5, what="the expired token refused")


async def test_last_event_id_resumes_without_loss(infra, stream_settings, pool, user):
    topic = stream_settings.notify_topic("inapp")

    async def send(title: str) -> None:
        d = dispatch(user, data={"title": title, "body": "."})
        await produce(infra.kafka_bootstrap, topic, d.model_dump_json().encode(), key=user.encode())

    async with Server(create_app(stream_settings)) as server:
        url = f"{server.url}/v1/inbox/stream"
        async with sse(url, headers=bearer(stream_settings, user)) as stream:
            await stream.next("ready")
            await send("one")
            first = await stream.next("notification")
            assert first.json()["title"] == "one"
            last_seen = stream.last_event_id
        for title in ("two", "three"):  # while disconnected
            await send(title)
        await eventually(lambda: _rows_at_least(pool, user, 3), what="the missed notifications stored")
        token = await stream_token(server.url, stream_settings, user)
        async with sse(url, params={"token": token}, headers={"Last-Event-ID": last_seen}) as stream:
            await stream.next("ready")
            missed = await stream.notifications(2)
            assert [e.json()["title"] for e in missed] == ["two", "three"]
            assert [int(e.id) for e in missed] == [int(last_seen) + 1, int(last_seen) + 2]
            await send("four")
            assert (await stream.next("notification")).json()["title"] == "four"
        # a new EventSource (no header) resumes with the query parameter instead
        async with sse(url, params={"token": token, "last_event_id": last_seen}) as stream:
            await stream.next("ready")
            assert [e.json()["title"] for e in await stream.notifications(3)] == ["two", "three", "four"]


async def _rows_at_least(pool, user: str, count: int) -> bool:
    return await rows_of(pool, user) >= count


async def test_a_new_stream_starts_after_what_already_exists(stream_settings, seed, user):
    await seed(user, title="old")
    await seed(user, title="older")
    async with Server(create_app(stream_settings)) as server:
        async with sse(f"{server.url}/v1/inbox/stream", headers=bearer(stream_settings, user)) as stream:
            ready = await stream.next("ready")
            assert ready.json() == {"unread": 2, "last_event_id": 2} and ready.id == "2"
            assert stream.events.empty()


async def test_read_state_changes_reach_the_stream(stream_settings, seed, user):
    item = await seed(user)
    await seed(user)
    async with Server(create_app(stream_settings)) as server, httpx.AsyncClient() as client:
        async with sse(f"{server.url}/v1/inbox/stream", headers=bearer(stream_settings, user)) as stream:
            await stream.next("ready")
            await client.post(f"{server.url}/v1/inbox/{item['id']}/read", headers=bearer(stream_settings, user))
            change = await stream.next("change")
            assert change.json() == {"op": "read", "ids": [str(item["id"])]}
            assert (await stream.next("unread")).json() == {"count": 1}
            await client.delete(f"{server.url}/v1/inbox", headers=bearer(stream_settings, user))
            assert (await stream.next("change")).json() == {"op": "cleared", "ids": []}
            assert (await stream.next("unread")).json() == {"count": 0}


async def test_a_dispatch_handled_by_one_instance_reaches_a_stream_on_the_other(infra, stream_settings, pool):
    users = [f"x-{i}-{stream_settings.kafka_topic_namespace}" for i in range(4)]
    async with Server(create_app(stream_settings)) as a, Server(create_app(stream_settings)) as b:
        instances = {"A": a, "B": b}
        async with streams_on(instances, users, stream_settings) as streams:
            for user in users:
                d = dispatch(user, data={"title": f"for {user}", "body": "."})
                await produce(infra.kafka_bootstrap, stream_settings.notify_topic("inapp"), d.model_dump_json().encode(), key=user.encode())
            for user in users:
                for name in instances:
                    event = await streams[name, user].next("notification")
                    assert event.json()["title"] == f"for {user}"
            # Each notification was stored by exactly one instance, so the other instance's stream had it through Redis.
            handled = {name: metric(await metrics_of(s.url), "herald_inbox_operations_total", operation="stored") for name, s in instances.items()}
            assert sum(handled.values()) == len(users), handled
            assert all([await rows_of(pool, user) == 1 for user in users])
            fanout = {name: metric(await metrics_of(s.url), "herald_sse_fanout_latency_seconds_count") for name, s in instances.items()}
            assert fanout == {"A": len(users), "B": len(users)}


async def test_a_dispatch_consumed_by_instance_a_reaches_the_client_of_instance_b(infra, stream_settings, pool, user):
    # B shares A's Redis namespace but consumes other topics, so only A can store the dispatch.
    b_settings = settings_for(Settings, infra, new_namespace(), inbox_redis_namespace=stream_settings.kafka_topic_namespace)
    await make_topics(b_settings)
    async with Server(create_app(stream_settings)) as a, Server(create_app(b_settings)) as b:
        async with sse(f"{b.url}/v1/inbox/stream", params={"token": await stream_token(b.url, b_settings, user)}) as stream:
            await stream.next("ready")
            d = dispatch(user, data={"title": "from A", "body": "."})
            await produce(infra.kafka_bootstrap, stream_settings.notify_topic("inapp"), d.model_dump_json().encode(), key=user.encode())
            event = await stream.next("notification")
            assert event.json()["id"] == str(d.notification_id) and event.json()["title"] == "from A"
        assert metric(await metrics_of(a.url), "herald_inbox_operations_total", operation="stored") == 1
        assert metric(await metrics_of(b.url), "herald_inbox_operations_total", operation="stored") == 0
        assert metric(await metrics_of(b.url), "herald_sse_fanout_latency_seconds_count") == 1


@contextlib.asynccontextmanager
async def streams_on(instances: dict[str, Server], users: list[str], settings: Settings) -> AsyncIterator[dict[tuple[str, str], SSE]]:
    """One open stream per (instance, user)."""
    async with contextlib.AsyncExitStack() as stack:
        streams = {}
        for name, server in instances.items():
            for user in users:
                stream = await stack.enter_async_context(sse(f"{server.url}/v1/inbox/stream", headers=bearer(settings, user)))
                await stream.next("ready")
                streams[name, user] = stream
        yield streams


async def test_an_overflowing_stream_stays_bounded_and_catches_up_from_the_table(infra, namespace, pool, redis_client, user):
    settings = settings_for(Settings, infra, namespace, stream_queue_size=2)
    hub = StreamHub(redis_client, settings.inbox_redis_prefix, queue_size=settings.stream_queue_size)
    await hub.start()
    res = Resources(settings=settings, broker=None, metrics=Metrics(CollectorRegistry()), pool=pool, redis=redis_client, extra={"hub": hub})  # type: ignore[arg-type]
    templates = MessageTemplates(TEMPLATES)
    events = inbox_api._events(res, user, None)
    try:
        ready = await anext(events)
        assert ready.event == "ready"
        await store_notification(dispatch(user, data={"title": "first", "body": "."}), res, templates=templates, settings=settings)
        assert json.loads((await asyncio.wait_for(anext(events), 20)).data)["title"] == "first"  # now fed by pub/sub
        # The generator is suspended (a client not reading): ten notifications arrive meanwhile.
        for i in range(10):
            await store_notification(dispatch(user, data={"title": f"n{i}", "body": "."}), res, templates=templates, settings=settings)
        (subscriber,) = hub._subscribers[logic.channel_of(settings.inbox_redis_prefix, user)]
        await eventually(lambda: _true(subscriber.overflowed), what="the bounded queue to overflow")
        assert subscriber.queue.qsize() == 2
        received = []
        while len(received) < 10:
            event = await asyncio.wait_for(anext(events), 20)
            if event.event == "notification":
                received.append(event)
        assert [json.loads(e.data)["title"] for e in received] == [f"n{i}" for i in range(10)]
        assert [int(e.id) for e in received] == list(range(2, 12))
    finally:
        await events.aclose()
        await hub.stop()
    assert hub.open_streams == 0


async def _true(value: bool) -> bool:
    return value


async def test_a_stream_ends_after_its_maximum_lifetime(infra, namespace, user):
    settings = settings_for(Settings, infra, namespace, stream_max_seconds=1)
    await make_topics(settings)
    async with Server(create_app(settings)) as server:
        async with sse(f"{server.url}/v1/inbox/stream", headers=bearer(settings, user)) as stream:
            await stream.next("ready")
            await asyncio.wait_for(stream.ended.wait(), 20)


async def test_streams_catch_up_after_the_pubsub_connection_is_lost(infra, namespace, pool, redis_client, user):
    settings = settings_for(Settings, infra, namespace)
    target = urlsplit(infra.redis_url)
    proxy = TcpProxy(target.hostname, target.port or 6379)
    await proxy.start()
    hub_redis = Redis.from_url(f"redis://127.0.0.1:{proxy.port}{target.path}")
    hub = StreamHub(hub_redis, settings.inbox_redis_prefix, queue_size=settings.stream_queue_size)
    await hub.start()
    # The hub reads through the proxy; storing and publishing go straight to Redis.
    res = Resources(settings=settings, broker=None, metrics=Metrics(CollectorRegistry()), pool=pool, redis=redis_client, extra={"hub": hub})  # type: ignore[arg-type]
    templates = MessageTemplates(TEMPLATES)
    events = inbox_api._events(res, user, None)
    try:
        assert (await anext(events)).event == "ready"
        await store_notification(dispatch(user, data={"title": "before", "body": "."}), res, templates=templates, settings=settings)
        assert json.loads((await asyncio.wait_for(anext(events), 20)).data)["title"] == "before"  # now waiting on pub/sub
        assert hub.connected
        await proxy.cut()
        await eventually(lambda: _true(not hub.connected), what="the hub noticing the lost connection")
        for i in range(3):  # published while no instance listens: lost on pub/sub
            await store_notification(dispatch(user, data={"title": f"n{i}", "body": "."}), res, templates=templates, settings=settings)
        await proxy.start()
        received = []
        while len(received) < 3:
            event = await asyncio.wait_for(anext(events), 30)
            if event.event == "notification":
                received.append(json.loads(event.data)["title"])
        assert received == ["n0", "n1", "n2"]
        assert hub.connected
        await store_notification(dispatch(user, data={"title": "after", "body": "."}), res, templates=templates, settings=settings)
        while (event := await asyncio.wait_for(anext(events), 20)).event != "notification":
            pass
        assert json.loads(event.data)["title"] == "after"
    finally:
        await events.aclose()
        await hub.stop()
        await hub_redis.aclose()
        await proxy.stop()


async def test_one_user_cannot_open_unbounded_streams(infra, namespace, user):
    settings = settings_for(Settings, infra, namespace, stream_max_per_user=2)
    await make_topics(settings)
    async with Server(create_app(settings)) as server:
        url = f"{server.url}/v1/inbox/stream"
        async with sse(url, headers=bearer(settings, user)) as one, sse(url, headers=bearer(settings, user)) as two:
            await one.next("ready")
            await two.next("ready")
            async with httpx.AsyncClient(timeout=10) as client:
                third = await client.get(url, headers=bearer(settings, user))
                assert third.status_code == 429 and third.json()["detail"]
            async with sse(url, headers=bearer(settings, f"{user}-other")) as someone_else:
                await someone_else.next("ready")


async def test_concurrent_connects_cannot_pass_the_per_instance_cap(infra, namespace, user):
    """Fifty connects at once, cap 3: exactly three streams open, the rest 429; closing one frees its place."""
    settings = settings_for(Settings, infra, namespace, stream_max_per_user=3)
    await make_topics(settings)
    async with Server(create_app(settings)) as server:
        url = f"{server.url}/v1/inbox/stream"
        async with contextlib.AsyncExitStack() as stack:

            async def connect() -> SSE | int:
                try:
                    stream = await stack.enter_async_context(sse(url, headers=bearer(settings, user)))
                except AssertionError as refused:  # sse() asserts a 200
                    return int(re.search(r"\b4\d\d\b", str(refused)).group())
                await stream.next("ready")
                return stream

            results = await asyncio.gather(*(connect() for _ in range(50)))
            opened = [r for r in results if not isinstance(r, int)]
            assert len(opened) == 3 and sorted({r for r in results if isinstance(r, int)}) == [429]
            await eventually(lambda: _streams_open(server.url, 3), what="three streams counted")
        # every stream closed: their places are free again
        async with sse(url, headers=bearer(settings, user)) as again:
            await again.next("ready")


async def test_an_optional_cap_across_instances_is_kept_in_redis(infra, namespace, user, redis_client):
    settings = settings_for(Settings, infra, namespace, stream_max_per_user=5, stream_max_per_user_total=3)
    await make_topics(settings)
    async with Server(create_app(settings)) as a, Server(create_app(settings)) as b:
        headers = bearer(settings, user)
        async with sse(f"{a.url}/v1/inbox/stream", headers=headers) as a1, sse(f"{a.url}/v1/inbox/stream", headers=headers) as a2:
            async with sse(f"{b.url}/v1/inbox/stream", headers=headers) as b1:
                for stream in (a1, a2, b1):
                    await stream.next("ready")
                async with httpx.AsyncClient(timeout=10) as client:
                    refused = await client.get(f"{b.url}/v1/inbox/stream", headers=headers)
                assert refused.status_code == 429 and "across instances" in refused.json()["detail"]
                assert await redis_client.zcard(f"{settings.inbox_redis_prefix}streams:{user}") == 3
            async with sse(f"{b.url}/v1/inbox/stream", headers=headers) as b2:  # b1 closed: its place is free
                await b2.next("ready")
    assert await eventually(lambda: _zcard_is(redis_client, f"{settings.inbox_redis_prefix}streams:{user}", 0), what="every place given back")


async def _zcard_is(redis_client, key: str, count: int) -> bool:
    return await redis_client.zcard(key) == count


async def test_stream_connects_are_limited_per_user_and_per_address(infra, namespace, user):
    settings = settings_for(Settings, infra, namespace, public_rate_limits="stream=5", public_user_rate_limits="stream=2")
    await make_topics(settings)
    async with Server(create_app(settings)) as server, httpx.AsyncClient(timeout=10) as client:
        url = f"{server.url}/v1/inbox/stream"

        async def connect(who: str) -> httpx.Response:
            async with client.stream("GET", url, headers=bearer(settings, who)) as response:
                await response.aread() if response.status_code != 200 else None
                return response

        mine = [(await connect(user)).status_code for _ in range(3)]
        others = [(await connect(f"{user}-{i}")).status_code for i in range(3)]
        unauthenticated = await client.get(url)
    assert mine == [200, 200, 429]  # two connects a minute for one user
    assert others == [200, 200, 429]  # five a minute from this address, whoever the user (3 + 2)
    assert unauthenticated.status_code == 429  # the address limit comes before authentication
