"""PostgreSQL going away under the senders, on a PostgreSQL cluster of this module's own (never the machine's)."""

import asyncio
import shutil
import tempfile
import uuid
from pathlib import Path

import asyncpg
import pytest

from herald.cli import fresh_database
from herald.infra import PrivatePostgres
from shared import Channel, Dispatch, HeraldSettings, Ledger, Recipient, SenderPipeline, create_service

from ..support import TopicReader, eventually, make_topics, produce, running, settings_for


@pytest.fixture(scope="module")
def private_pg():
    # Its own directory under /tmp: the cluster runs as the postgres user, who cannot enter pytest's root-only tmp.
    workdir = Path(tempfile.mkdtemp(prefix="herald-outages-pg-"))
    cluster = PrivatePostgres(workdir)
    cluster.start()
    try:
        asyncio.run(fresh_database(cluster.url("herald_outages")))
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


class GatedProvider:
    """Accepts each send once ``gate`` opens; counts calls per notification."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls: list[uuid.UUID] = []

    async def __call__(self, dispatch: Dispatch, res) -> str:
        self.calls.append(dispatch.notification_id)
        await self.gate.wait()
        return f"msg-{len(self.calls)}"


def dispatch() -> Dispatch:
    return Dispatch(
        notification_id=uuid.uuid4(), event_id="e1", event_source="tests", event_type="booking.created", category="lesson_updates",
        channel=Channel.inapp, recipient=Recipient(user_id="u1"), template="t",
    )


def sender_app(infra, namespace, private_pg, provider):
    settings = settings_for(
        HeraldSettings, infra, namespace, service_name="outage-sender", database_url=private_pg.url("herald_outages"),
        outage_backoff_max_seconds=1.0, database_connect_timeout_seconds=2.0,
    )
    pipeline = SenderPipeline(settings, Channel.inapp, provider, ledger=Ledger("inapp"))
    return settings, create_service(settings, title="outage sender", kafka_routers=pipeline.routers())


async def ledger_row(private_pg, d):
    conn = await asyncpg.connect(private_pg.url("herald_outages"))
    try:
        return await conn.fetchrow("SELECT status, attempts FROM inapp.ledger WHERE notification_id = $1", d.notification_id)
    finally:
        await conn.close()


async def test_a_send_accepted_while_postgresql_is_down_is_recorded_when_it_returns_and_never_sent_again(infra, namespace, private_pg):
    provider = GatedProvider()
    settings, app = sender_app(infra, namespace, private_pg, provider)
    await make_topics(settings)
    d = dispatch()
    async with running(app):
        async with TopicReader(infra.kafka_bootstrap, settings.status_topic) as statuses:
            await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u1")
            await eventually(lambda: asyncio.sleep(0, result=provider.calls == [d.notification_id]), what="the send in flight")
            await asyncio.to_thread(private_pg.stop)  # PostgreSQL goes away while the provider holds the message
            provider.gate.set()  # the provider accepts it: only the ledger write is left
            await asyncio.sleep(3)
            await asyncio.to_thread(private_pg.start)
            [status] = await statuses.wait_for(1, timeout=60)
    assert provider.calls == [d.notification_id]  # one send, whatever the database did
    assert b'"status":"sent"' in status.value
    row = await ledger_row(private_pg, d)
    assert (row["status"], row["attempts"]) == ("sent", 1)


async def test_while_postgresql_is_down_nothing_is_charged_readiness_says_so_and_the_backlog_goes_out_after(infra, namespace, private_pg):
    provider = GatedProvider()
    provider.gate.set()
    settings, app = sender_app(infra, namespace, private_pg, provider)
    await make_topics(settings)
    batch = [dispatch() for _ in range(10)]
    async with running(app) as client:
        await asyncio.to_thread(private_pg.stop)
        try:
            for d in batch:
                await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u1")

            async def not_ready():
                answer = await client.get("/readyz")
                return answer.json() if answer.status_code == 503 and "inapp-delivery" in answer.json()["checks"] else None

            checks = (await eventually(not_ready, what="/readyz naming the outage"))["checks"]
            await asyncio.sleep(2)
            assert provider.calls == []  # nothing was claimed, so nothing was sent
        finally:
            await asyncio.to_thread(private_pg.start)
        async with TopicReader(infra.kafka_bootstrap, settings.status_topic) as statuses:
            await statuses.wait_for(10, timeout=60)
        ready = await eventually(lambda: _ready(client), what="/readyz green again without a restart")
    assert checks["postgres"] != "ok"
    assert sorted(provider.calls) == sorted(d.notification_id for d in batch)  # each once
    rows = [await ledger_row(private_pg, d) for d in batch]
    assert {(r["status"], r["attempts"]) for r in rows} == {("sent", 1)}
    assert ready["status"] == "ready"


async def _ready(client):
    answer = await client.get("/readyz")
    return answer.json() if answer.status_code == 200 else None
