"""Erasure through real processes: every service, the sandbox's providers, one broker, PostgreSQL and Redis.

A user gets notifications on every channel; the user is erased through the router's admin API; then
every schema, Redis and the erasure's status are read to prove that nothing personal is left, that a
dispatch replayed from dlq is suppressed, and that a later event reaches nobody.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from herald import infra as local
from herald.cli import dev_vapid_private_key
from herald.stack import SANDBOX, SERVICES, Stack
from shared import Channel, Dispatch, HeraldSettings, Recipient, create_topics

from ..support import Infra, TopicReader, api_key, bearer, cloud_event, eventually, new_namespace, produce

pytestmark = pytest.mark.slow

SCHEMAS = ("router", "ingress", "email", "sms", "push", "inapp")


@dataclass
class Platform:
    stack: Stack
    settings: HeraldSettings
    sandbox: str

    def url(self, name: str) -> str:
        return self.stack.url(next(s for s in SERVICES if s.name == name))


@pytest.fixture(scope="module")
def platform(infra: Infra, tmp_path_factory) -> Iterator[Platform]:
    """Every service and the sandbox as processes, the providers pointed at the sandbox."""
    import asyncio

    namespace = new_namespace()
    ports = {spec.name: local.free_port() for spec in (SANDBOX, *SERVICES)}
    smtp_port = local.free_port()
    sandbox = f"http://127.0.0.1:{ports['sandbox']}"
    env = {
        **os.environ,
        **infra.env(namespace),
        **{spec.port_variable: str(ports[spec.name]) for spec in (SANDBOX, *SERVICES)},
        "HERALD_EMAIL_PROVIDER": "smtp",
        "HERALD_SMTP_HOST": "127.0.0.1",
        "HERALD_SMTP_PORT": str(smtp_port),
        "HERALD_SANDBOX_SMTP_PORT": str(smtp_port),
        "HERALD_TWILIO_API_BASE": sandbox,
        "HERALD_TWILIO_STATUS_CALLBACKS": "false",
        "HERALD_PUSH_DEV_HOSTS": f"127.0.0.1:{ports['sandbox']}",
        "HERALD_VAPID_PRIVATE_KEY": dev_vapid_private_key(),
        "HERALD_EXPORT_SERVICES": ",".join(f"{s.name}=http://127.0.0.1:{ports[s.name]}" for s in SERVICES if s.name != "router"),
    }
    settings = HeraldSettings(**{k.removeprefix("HERALD_").lower(): v for k, v in infra.env(namespace).items()})
    asyncio.run(create_topics(settings))
    stack = Stack(env=env, log_dir=tmp_path_factory.mktemp("erasure") / "logs")
    try:
        stack.start_all((SANDBOX, *SERVICES), timeout=120)
        yield Platform(stack, settings, sandbox)
    finally:
        stack.stop_all()


async def sandbox_messages(platform: Platform, provider: str, to: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=platform.sandbox, timeout=10) as http:
        return [m for m in (await http.get("/api/messages", params={"provider": provider})).json() if to in m["to"]]


async def rows_mentioning(db: asyncpg.Connection, needle: str) -> dict[str, int]:
    """Every table of Herald's schemas with rows whose text (every column) contains ``needle``."""
    tables = await db.fetch("SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema = ANY($1::text[]) AND table_type = 'BASE TABLE'", list(SCHEMAS))
    found = {}
    for t in tables:
        name = f'{t["table_schema"]}.{t["table_name"]}'
        count = await db.fetchval(f"SELECT count(*) FROM {name} AS r WHERE strpos(r::text, $1) > 0", needle)
        if count:
            found[name] = count
    return found


async def redis_mentioning(redis: Redis, *needles: str) -> list[str]:
    """Keys whose name or value contains one of ``needles``."""
    hits = []
    async for key in redis.scan_iter(count=1000):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            values = [await redis.get(key) or b""]
        elif kind == "hash":
            values = [v for pair in (await redis.hgetall(key)).items() for v in pair]
        elif kind == "zset":
            values = await redis.zrange(key, 0, -1)
        elif kind == "set":
            values = list(await redis.smembers(key))
        elif kind == "list":
            values = await redis.lrange(key, 0, -1)
        else:
            values = []
        text = b" ".join([key, *values]).decode(errors="replace")
        if any(n in text for n in needles):
            hits.append(key.decode(errors="replace"))
    return hits


async def test_an_erased_user_leaves_nothing_personal_behind_and_gets_nothing_more(platform, infra, db):
    me, other = f"erase-{uuid.uuid4().hex[:8]}", f"keep-{uuid.uuid4().hex[:8]}"
    email, phone = f"{me}@example.com", f"+1415555{random.randint(1000, 9999)}"
    preview, name = f"secret words {uuid.uuid4().hex[:6]}", f"Ada{uuid.uuid4().hex[:6]}"
    settings = platform.settings
    async with httpx.AsyncClient(timeout=20) as http:
        events = [
            cloud_event("user.created", {"user_id": me, "email": email, "phone": phone, "name": name}, subject=me),
            cloud_event("user.created", {"user_id": other, "email": f"{other}@example.com"}, subject=other),
        ]
        assert (await http.post(f"{platform.url('ingress')}/v1/events", json=events, headers=api_key(settings))).status_code == 202
        async with httpx.AsyncClient(base_url=platform.sandbox, timeout=30) as sandbox:
            for user in (me, other):
                answer = await sandbox.post(
                    "/webpush/subscriptions",
                    json={"label": f"browser of {user}", "herald": {"herald_url": platform.url("push"), "authorization": bearer(settings, user)["Authorization"]}},
                )
                assert answer.status_code == 201 and answer.json()["registered"]["status"] == 201, answer.text
        message = {"message_id": "m1", "conversation_id": "c1", "sender_id": other, "sender_name": "Grace", "recipient_id": me, "preview": preview}
        events = [
            cloud_event("auth.password_changed", {"user_id": me, "at": datetime.now(UTC).isoformat()}, subject=me),  # email, sms, inapp
            cloud_event("message.received", message, subject=me),  # email, push, inapp
            # the other user's own notification (a message the erased user sent them) is theirs, and stays
            cloud_event("message.received", {**message, "recipient_id": other, "sender_id": me, "preview": "see you"}, subject=other),
        ]
        await eventually(lambda: sandbox_messages(platform, "smtp", email), timeout=60, what="the welcome email")
        assert (await http.post(f"{platform.url('ingress')}/v1/events", json=events, headers=api_key(settings))).status_code == 202

        async def delivered_everywhere():
            inbox = (await http.get(f"{platform.url('inapp')}/v1/inbox", headers=bearer(settings, me))).json()["items"]
            sms = await sandbox_messages(platform, "twilio", phone)
            push = await sandbox_messages(platform, "webpush", f"browser of {me}")
            mails = await sandbox_messages(platform, "smtp", email)
            return len(inbox) >= 3 and sms and push and len(mails) >= 3

        await eventually(delivered_everywhere, timeout=90, what="the user's notifications on every channel")
        # What the checks after the erasure look for is there now (so their finding nothing means something).
        for needle in (email, phone, preview, name):  # the name: in the welcome notification of the inbox
            assert await rows_mentioning(db, needle), needle
        redis = Redis.from_url(infra.redis_url)
        try:
            held = await redis_mentioning(redis, me)
            assert [k for k in held if ":cap:" in k] and await redis_mentioning(redis, email, phone)  # SMS caps; the cached profile
        finally:
            await redis.aclose()
        mails_before = len(await sandbox_messages(platform, "smtp", email))

        # The export gathers every service's part into one document.
        router = platform.url("router")
        exported = await http.get(f"{router}/v1/recipients/{me}/export", headers=api_key(settings))
        assert exported.status_code == 200, exported.text
        parts = exported.json()["services"]
        assert set(parts) == {spec.name for spec in SERVICES}
        assert parts["router"]["recipient"]["email"] == email and parts["router"]["recipient"]["phone"] == phone
        assert {d["channel"] for d in parts["router"]["decisions"]} >= {"email", "sms", "push", "inapp"}
        assert len(parts["inapp"]["notifications"]) >= 3 and preview in str(parts["inapp"]["notifications"])
        assert [s["user_agent"] for s in parts["push"]["subscriptions"]] and "auth" not in parts["push"]["subscriptions"][0]
        assert [r["status"] for r in parts["sms"]["ledger"]] == ["sent"] and parts["sms"]["ledger"][0]["segments"] >= 1
        assert len(parts["email"]["ledger"]) >= 3 and parts["ingress"] == {}
        assert {r["user_id"] for s in ("email", "sms", "push", "inapp") for r in parts[s]["ledger"]} == {me}
        assert (await http.get(f"{router}/v1/recipients/{me}/export", headers=bearer(settings, me))).status_code == 401

        # The erasure, through the admin API; each service reports.
        accepted = await http.delete(f"{router}/v1/recipients/{me}", headers=api_key(settings))
        assert accepted.status_code == 202, accepted.text

        async def erased_everywhere():
            found = await http.get(f"{router}{accepted.json()['status_url']}", headers=api_key(settings))
            return found.json() if found.status_code == 200 and found.json()["complete"] else None

        state = await eventually(erased_everywhere, timeout=60, what="every service's erasure report")
        assert set(state["services"]) == {spec.name for spec in SERVICES}
        assert state["services"]["inapp"]["erased"]["notifications"] >= 3
        assert state["services"]["push"]["erased"]["subscriptions"] == 1
        assert state["services"]["router"]["erased"]["trace_decisions"] >= 6

        # Nothing personal is left: no address, number or content in any schema or in Redis.
        for needle in (email, phone, preview, name):
            assert await rows_mentioning(db, needle) == {}, needle
        redis = Redis.from_url(infra.redis_url)
        try:
            assert await redis_mentioning(redis, email, phone, preview) == []
            assert [k for k in await redis_mentioning(redis, me) if ":cap:" in k or ":verify:" in k] == []
        finally:
            await redis.aclose()
        assert await db.fetchval("SELECT count(*) FROM inapp.notifications WHERE user_id = $1", me) == 0
        assert await db.fetchval("SELECT count(*) FROM push.subscriptions WHERE user_id = $1", me) == 0
        assert await db.fetchval("SELECT count(*) FROM router.decisions WHERE user_id = $1", me) == 0
        for schema in ("email", "sms", "push", "inapp"):
            assert await db.fetchval(f"SELECT count(*) FROM {schema}.erasures WHERE user_id = $1", me) == 1
            assert await db.fetchval(f"SELECT count(*) FROM {schema}.ledger WHERE user_id = $1 AND error IS NOT NULL", me) == 0
        # The other user keeps everything.
        assert await db.fetchval("SELECT count(*) FROM inapp.notifications WHERE user_id = $1", other) >= 2
        assert await db.fetchval("SELECT count(*) FROM push.subscriptions WHERE user_id = $1", other) == 1
        # ... and the export says so: nothing personal, the ledgers without error texts, the erasure itself.
        after = (await http.get(f"{router}/v1/recipients/{me}/export", headers=api_key(settings))).json()["services"]
        for needle in (email, phone, preview, name):
            assert needle not in str(after), needle
        assert after["inapp"]["notifications"] == [] and after["push"]["subscriptions"] == [] and after["router"]["decisions"] == []
        assert after["router"]["erasure"]["erasure_id"] == state["erasure_id"]
        assert all(after[s]["erasure"]["erasure_id"] == state["erasure_id"] for s in ("email", "sms", "push", "inapp"))

        # The user's own endpoints cannot bring anything back.
        as_me = bearer(settings, me)
        code = await http.post(f"{platform.url('sms')}/v1/verifications", json={"phone": phone}, headers=as_me)
        prefs = await http.patch(
            f"{router}/v1/preferences", json={"preferences": [{"category": "promotional", "channel": "email", "enabled": False}]}, headers=as_me
        )
        assert (code.status_code, prefs.status_code) == (410, 410), (code.text, prefs.text)
        assert await rows_mentioning(db, phone) == {} and len(await sandbox_messages(platform, "twilio", phone)) == 1

        # A dispatch replayed from dlq after the erasure (address inside) is suppressed, not sent.
        replayed = Dispatch(
            notification_id=uuid.uuid4(), event_id="old", event_source="tests", event_type="auth.password_changed", category="security",
            critical=True, channel=Channel.email, recipient=Recipient(user_id=me, email=email), template="password_changed",
            created_at=datetime.now(UTC), retry_from=datetime.now(UTC),
        )
        async with TopicReader(infra.kafka_bootstrap, settings.status_topic) as statuses:
            await produce(infra.kafka_bootstrap, settings.notify_topic("email", critical=True), replayed.model_dump_json().encode(), key=me.encode())

            async def outcome():
                await statuses.poll()
                return [(s["status"], s["reason"]) for s in statuses.json() if s["notification_id"] == str(replayed.notification_id)]

            assert await eventually(outcome, timeout=60, what="the replayed dispatch's outcome") == [("suppressed", "user_deleted")]

        # A later event for the user reaches nobody.
        later = cloud_event("auth.password_changed", {"user_id": me, "at": datetime.now(UTC).isoformat()}, subject=me)
        assert (await http.post(f"{platform.url('ingress')}/v1/events", json=later, headers=api_key(settings))).status_code == 202

        async def refused():
            rows = await db.fetch("SELECT reason FROM router.decisions WHERE event_id = $1", later["id"])
            return [r["reason"] for r in rows]

        assert set(await eventually(refused, timeout=60, what="the later event's decisions")) == {"user_deleted"}
        assert len(await sandbox_messages(platform, "smtp", email)) == mails_before
        assert await db.fetchval("SELECT count(*) FROM inapp.notifications WHERE user_id = $1", me) == 0
