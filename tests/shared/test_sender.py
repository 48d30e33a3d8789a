"""The shared delivery pipeline against real Kafka and PostgreSQL, with a scripted provider."""

import asyncio
import uuid

import pytest

from shared import (
    Channel,
    DeliveryState,
    Dispatch,
    HeraldSettings,
    Ledger,
    PermanentError,
    Recipient,
    SenderPipeline,
    TransientError,
    create_service,
)

from ..support import TopicReader, eventually, make_topics, produce, running, settings_for


class ScriptedProvider:
    """Fails as told, then accepts; records every call."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls: list[uuid.UUID] = []

    async def __call__(self, dispatch: Dispatch, res) -> str:
        self.calls.append(dispatch.notification_id)
        if self.failures:
            raise self.failures.pop(0)
        return f"msg-{len(self.calls)}"


@pytest.fixture
async def ledger_schema(db):
    schema = f"s{uuid.uuid4().hex[:8]}"
    ddl = (open("services/inapp/migrations/001_inapp.sql").read().split("CREATE TABLE inapp.ledger")[1]).replace("inapp.", f"{schema}.")
    await db.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.ledger {ddl}")
    yield schema
    await db.execute(f"DROP SCHEMA {schema} CASCADE")


def dispatch(**overrides) -> Dispatch:
    values = dict(
        notification_id=uuid.uuid4(), event_id="e1", event_source="tests", event_type="booking.created",
        category="lesson_updates", channel=Channel.inapp, recipient=Recipient(user_id="u1"), template="t",
    )
    values.update(overrides)
    return Dispatch(**values)


@pytest.fixture
def sender(infra, namespace, ledger_schema):
    async def start(provider: ScriptedProvider, **pipeline_options):
        settings = settings_for(HeraldSettings, infra, namespace, service_name="test-sender")
        await make_topics(settings)
        pipeline = SenderPipeline(settings, Channel.inapp, provider, ledger=Ledger(ledger_schema), **pipeline_options)
        app = create_service(settings, title="test sender", kafka_routers=pipeline.routers())
        return settings, running(app)

    return start


async def statuses(infra, settings, count):
    async with TopicReader(infra.kafka_bootstrap, settings.status_topic) as reader:
        await reader.wait_for(count)
        return reader.json()


async def test_a_dispatch_consumed_twice_is_delivered_once(infra, sender, db, ledger_schema):
    provider = ScriptedProvider()
    settings, app = await sender(provider)
    d = dispatch()
    async with app:
        for _ in range(2):
            await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u1")
        found = await statuses(infra, settings, 2)
    assert provider.calls == [d.notification_id]
    assert sorted(s["status"] for s in found) == ["duplicate", "sent"]
    row = await db.fetchrow(f"SELECT status, attempts, provider_message_id FROM {ledger_schema}.ledger WHERE notification_id = $1", d.notification_id)
    assert (row["status"], row["attempts"], row["provider_message_id"]) == ("sent", 1, "msg-1")


async def test_transient_failures_are_retried_through_the_retry_topic_until_sent(infra, sender, db, ledger_schema):
    provider = ScriptedProvider(TransientError("http_503"), TransientError("timeout"))
    settings, app = await sender(provider, retry_base_seconds=0.05, retry_cap_seconds=0.2)
    d = dispatch()
    async with app:
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode())
        found = await statuses(infra, settings, 3)
        async with TopicReader(infra.kafka_bootstrap, settings.retry_topic("inapp")) as retries:
            assert [r["attempt"] for r in (await retries.wait_for(2)) and retries.json()] == [2, 3]
    assert [s["status"] for s in found] == ["retrying", "retrying", "sent"]
    assert len(provider.calls) == 3
    row = await db.fetchrow(f"SELECT status, attempts FROM {ledger_schema}.ledger WHERE notification_id = $1", d.notification_id)
    assert (row["status"], row["attempts"]) == ("sent", 3)


async def test_permanent_failure_is_not_retried(infra, sender, db, ledger_schema):
    provider = ScriptedProvider(PermanentError("invalid_address", "no such mailbox"))
    settings, app = await sender(provider)
    d = dispatch()
    async with app:
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode())
        found = await statuses(infra, settings, 1)
        await asyncio.sleep(0.5)
    assert found[0]["status"] == "failed" and found[0]["reason"] == "invalid_address"
    assert len(provider.calls) == 1
    assert await db.fetchval(f"SELECT status FROM {ledger_schema}.ledger WHERE notification_id = $1", d.notification_id) == "failed"


async def test_exhausted_retries_go_to_the_dead_letter_topic(infra, sender, db, ledger_schema):
    provider = ScriptedProvider(*[TransientError("http_500")] * 10)
    settings, app = await sender(provider, max_attempts=3, retry_base_seconds=0.05, retry_cap_seconds=0.1)
    d = dispatch()
    async with app:
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode())
        async with TopicReader(infra.kafka_bootstrap, settings.dlq_topic) as dlq:
            [dead] = await dlq.wait_for(1)
    headers = dict(dead.headers)
    assert headers["herald-reason"] == b"retries_exhausted" and headers["herald-stage"] == b"inapp"
    assert Dispatch.model_validate_json(dead.value).notification_id == d.notification_id
    assert len(provider.calls) == 3
    assert await db.fetchval(f"SELECT status FROM {ledger_schema}.ledger WHERE notification_id = $1", d.notification_id) == DeliveryState.dead_lettered


async def test_a_malformed_dispatch_is_dead_lettered_and_consumption_goes_on(infra, sender):
    provider = ScriptedProvider()
    settings, app = await sender(provider)
    good = dispatch()
    async with app:
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), b"{not json", key=b"u1")
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), good.model_dump_json().encode(), key=b"u1")
        async with TopicReader(infra.kafka_bootstrap, settings.dlq_topic) as dlq:
            [dead] = await dlq.wait_for(1)
        await eventually(lambda: asyncio.sleep(0, result=provider.calls == [good.notification_id]), what="the good dispatch sent")
    assert dead.value == b"{not json"
    assert dict(dead.headers)["herald-reason"] == b"invalid_dispatch"


async def test_a_delivery_claimed_by_a_process_that_died_is_sent_after_its_lease(infra, sender, db, ledger_schema):
    provider = ScriptedProvider()
    settings, app = await sender(provider)
    d = dispatch()
    # A previous consumer claimed it, then died before recording the outcome; its offset was never committed.
    await db.execute(
        f"INSERT INTO {ledger_schema}.ledger (notification_id, event_id, event_type, user_id, status, claimed_at) "
        "VALUES ($1, 'e1', 'booking.created', 'u1', 'claimed', now() - interval '59 seconds')",
        d.notification_id,
    )
    async with app:
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode())
        found = await statuses(infra, settings, 1)
    assert found[0]["status"] == "sent"
    assert provider.calls == [d.notification_id]
    assert await db.fetchval(f"SELECT attempts FROM {ledger_schema}.ledger WHERE notification_id = $1", d.notification_id) == 2
