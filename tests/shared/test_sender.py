"""The shared delivery pipeline against real Kafka and PostgreSQL, with a scripted provider."""

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from shared import (
    Channel,
    DeliveryState,
    Dispatch,
    HeraldSettings,
    Ledger,
    Misconfigured,
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


class GatedProvider:
    """Holds every send until ``gate`` is set; records when each call started and ended."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started: list[uuid.UUID] = []
        self.finished: list[uuid.UUID] = []

    async def __call__(self, dispatch: Dispatch, res) -> str:
        self.started.append(dispatch.notification_id)
        await self.gate.wait()
        self.finished.append(dispatch.notification_id)
        return f"msg-{len(self.finished)}"


def dispatch(**overrides) -> Dispatch:
    values = dict(
        notification_id=uuid.uuid4(), event_id="e1", event_source="tests", event_type="booking.created",
        category="lesson_updates", channel=Channel.inapp, recipient=Recipient(user_id="u1"), template="t",
    )
    values.update(overrides)
    return Dispatch(**values)


@pytest.fixture
def sender(infra, namespace, ledger_schema):
    async def start(provider, *, ledger: Ledger | None = None, settings_overrides: dict | None = None, hooks=(), **pipeline_options):
        settings = settings_for(HeraldSettings, infra, namespace, service_name="test-sender", **(settings_overrides or {}))
        await make_topics(settings)
        pipeline = SenderPipeline(settings, Channel.inapp, provider, ledger=ledger or Ledger(ledger_schema), **pipeline_options)
        app = create_service(settings, title="test sender", kafka_routers=pipeline.routers(), hooks=hooks)
        return settings, running(app)

    return start


async def statuses(infra, settings, count, *, final: bool = False):
    """The first ``count`` statuses, or with ``final`` every status until ``count`` notifications have a final one."""
    async with TopicReader(infra.kafka_bootstrap, settings.status_topic) as reader:
        if not final:
            await reader.wait_for(count)
            return reader.json()

        async def finished():
            await reader.poll()
            done = {s["notification_id"] for s in reader.json() if s["status"] in ("sent", "failed", "suppressed", "expired", "dead_lettered")}
            return reader.json() if len(done) >= count else None

        return await eventually(finished, timeout=60, what=f"{count} final statuses")


async def test_a_dispatch_consumed_twice_is_delivered_once(infra, sender, db, ledger_schema):
    provider = ScriptedProvider()
    settings, app = await sender(provider)
    d = dispatch()
    async with app:
        for _ in range(2):
            await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u1")
        found = await statuses(infra, settings, 2)
    assert provider.calls == [d.notification_id]
    assert sorted((s["status"], s["replayed"]) for s in found) == [("sent", False), ("sent", True)]  # the second copy repeats the outcome
    row = await db.fetchrow(f"SELECT status, attempts, provider_message_id FROM {ledger_schema}.ledger WHERE notification_id = $1", d.notification_id)
    assert (row["status"], row["attempts"], row["provider_message_id"]) == ("sent", 1, "msg-1")


async def test_a_delivery_logs_nothing_of_its_own_at_info_and_one_line_at_debug(infra, sender, caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="shared._sender")
    settings, app = await sender(ScriptedProvider())
    logging.getLogger().addHandler(caplog.handler)  # the service took over the root logger's handlers
    sent = [dispatch(recipient=Recipient(user_id=f"u-quiet-{i}")) for i in range(3)]
    try:
        async with app:
            for d in sent:
                await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=d.recipient.user_id.encode())
            await statuses(infra, settings, 3)
    finally:
        logging.getLogger().removeHandler(caplog.handler)
    about = [r for r in caplog.records if "u-quiet-" in r.getMessage() or any(str(d.notification_id) in r.getMessage() for d in sent)]
    assert [r for r in about if r.levelno >= logging.INFO] == []  # no per-notification work at the default level
    assert sorted(r.getMessage() for r in about if r.levelno == logging.DEBUG) == [f"sent inapp booking.created to user u-quiet-{i}" for i in range(3)]


class CountingLedger(Ledger):
    """The real ledger, counting its claims: how many went together, how many alone; refuses the first ``refuse`` batches."""

    def __init__(self, schema: str, *, refuse: int = 0) -> None:
        super().__init__(schema)
        self.batches: list[int] = []
        self.alone = 0
        self.refuse = refuse
        self.renewed: list[tuple[uuid.UUID, bool]] = []

    async def renew(self, *, conn, notification_id, claimed_at):
        renewed = await super().renew(conn=conn, notification_id=notification_id, claimed_at=claimed_at)
        self.renewed.append((notification_id, renewed))
        return renewed

    async def claim_many(self, *, conn, dispatches):
        self.batches.append(len(dispatches))
        if self.refuse:
            self.refuse -= 1
            raise ValueError("a text the ledger cannot store")
        return await super().claim_many(conn=conn, dispatches=dispatches)

    async def claim(self, *, conn, dispatch, target=""):
        self.alone += 1
        return await super().claim(conn=conn, dispatch=dispatch, target=target)


async def test_a_batch_is_claimed_a_chunk_at_a_time_and_a_second_copy_in_it_repeats_the_first_ones_outcome(infra, sender, db, ledger_schema):
    provider = ScriptedProvider()
    ledger = CountingLedger(ledger_schema)
    settings, app = await sender(provider, ledger=ledger, settings_overrides={"concurrency": 4})
    sent = [dispatch(recipient=Recipient(user_id=f"u{i}")) for i in range(10)]
    for d in [*sent[:3], sent[2], *sent[3:]]:  # written before the sender starts: they come in one batch or few
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u")
    async with app:
        found = await statuses(infra, settings, 11)
    assert sorted(provider.calls) == sorted(d.notification_id for d in sent)
    assert sorted((s["status"], s["replayed"]) for s in found) == [("sent", False)] * 10 + [("sent", True)]
    # Every first copy in a batch is claimed with its chunk; the second copy of sent[2] is a first copy too if it came in a later batch.
    assert sum(ledger.batches) in (10, 11) and max(ledger.batches) <= 4 and len(ledger.batches) < 10 and ledger.alone <= 1
    attempts = await db.fetch(f"SELECT attempts FROM {ledger_schema}.ledger WHERE notification_id = ANY($1::uuid[])", [d.notification_id for d in sent])
    assert [r["attempts"] for r in attempts] == [1] * 10


async def test_a_chunk_the_ledger_refuses_as_a_whole_is_claimed_one_by_one(infra, sender, db, ledger_schema):
    provider = ScriptedProvider()
    ledger = CountingLedger(ledger_schema, refuse=1)
    settings, app = await sender(provider, ledger=ledger, settings_overrides={"concurrency": 4})
    sent = [dispatch(recipient=Recipient(user_id=f"u{i}")) for i in range(4)]
    for d in sent:
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u")
    async with app:
        found = await statuses(infra, settings, 4)
    assert sorted(provider.calls) == sorted(d.notification_id for d in sent) and [s["status"] for s in found] == ["sent"] * 4
    assert ledger.batches[0] >= 1 and ledger.alone >= ledger.batches[0]  # the refused chunk's dispatches, each alone


class SleepyProvider:
    """Accepts every send, taking ``slow`` seconds over the ones in ``slow_ids``; records when each call started."""

    def __init__(self, slow_ids, slow: float) -> None:
        self.slow_ids, self.slow = set(slow_ids), slow
        self.calls: list[tuple[uuid.UUID, float]] = []

    async def __call__(self, dispatch: Dispatch, res) -> str:
        self.calls.append((dispatch.notification_id, time.monotonic()))
        if dispatch.notification_id in self.slow_ids:
            await asyncio.sleep(self.slow)
        return f"msg-{len(self.calls)}"


@pytest.mark.parametrize("taken_over", [False, True])
async def test_a_claim_that_waited_long_for_its_slot_is_renewed_or_given_up_if_another_delivery_took_it_over(infra, sender, db, ledger_schema, taken_over):
    # Chunks of two: [a, b] then [c, d]. b and c take 2.2 s, so d, claimed with c, waits for b's slot:
    # more than half its lease (3 s) has gone when it gets one.
    a, b, c, d = (dispatch(recipient=Recipient(user_id=f"u{i}")) for i in range(4))
    provider = SleepyProvider({b.notification_id, c.notification_id}, slow=2.2)
    ledger = CountingLedger(ledger_schema)
    settings, app = await sender(provider, ledger=ledger, settings_overrides={"concurrency": 2, "delivery_lease_seconds": 3.0})
    for x in (a, b, c, d):
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), x.model_dump_json().encode(), key=b"u")
    sql = f"SELECT status FROM {ledger_schema}.ledger WHERE notification_id = $1"
    async with app:
        await eventually(lambda: db.fetchval(sql, d.notification_id), what="d claimed with its chunk")
        took_over = time.monotonic()
        if taken_over:  # as another instance would once the lease ran out
            await db.execute(f"UPDATE {ledger_schema}.ledger SET claimed_at = now(), attempts = attempts + 1 WHERE notification_id = $1", d.notification_id)
        found = await statuses(infra, settings, 4, final=True)
    sends = [at for nid, at in provider.calls if nid == d.notification_id]
    assert len(sends) == 1 and [s["status"] for s in found if s["notification_id"] == str(d.notification_id)] == ["sent"]
    assert ledger.renewed == [(d.notification_id, not taken_over)]
    attempts = await db.fetchval(f"SELECT attempts FROM {ledger_schema}.ledger WHERE notification_id = $1", d.notification_id)
    if taken_over:  # not sent under the lost claim (at about 2.2 s), but once the other delivery's lease ran out
        assert sends[0] >= took_over + 3.0 - 0.2 and attempts == 3
    else:
        assert attempts == 1


async def test_claims_no_record_took_are_given_back_when_the_batch_ends(infra, db, ledger_schema):
    import asyncpg

    from shared._sender import BatchClaim, BatchClaims

    pool = await asyncpg.create_pool(infra.database_url, min_size=1, max_size=2)
    try:
        pipeline = SimpleNamespace(_running={}, ledger=Ledger(ledger_schema))
        first, second, third = (dispatch(recipient=Recipient(user_id=f"u{i}")) for i in range(3))
        claims = BatchClaims(pipeline, SimpleNamespace(pool=pool), [first, second, third], size=2)
        taken = await claims.take(first)  # claims the chunk [first, second]; second's record never comes (its batch was cancelled)
        await claims.close()
    finally:
        await pool.close()
    assert isinstance(taken, BatchClaim) and taken.attempts == 1
    rows = {r["notification_id"]: (r["status"], r["attempts"]) for r in await db.fetch(f"SELECT notification_id, status, attempts FROM {ledger_schema}.ledger")}
    assert rows == {first.notification_id: ("claimed", 1), second.notification_id: ("retrying", 0)}  # third's chunk was never claimed


async def test_each_hop_of_a_delivery_is_timed_and_a_retry_or_replay_is_not_counted_as_queueing(infra, sender, db, ledger_schema):
    from prometheus_client.parser import text_string_to_metric_families

    provider = ScriptedProvider()
    settings, app = await sender(provider)
    fresh = dispatch(created_at=datetime.now(UTC) - timedelta(seconds=2))
    retried = dispatch(created_at=datetime.now(UTC) - timedelta(hours=1), attempt=2, not_before=datetime.now(UTC) - timedelta(seconds=1))
    replayed = dispatch(created_at=datetime.now(UTC) - timedelta(hours=1), retry_from=datetime.now(UTC))  # as `herald dlq replay` writes it
    async with app as client:
        for d in (fresh, retried, replayed):
            await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u1")
        await statuses(infra, settings, 3, final=True)

        async def hops() -> dict[tuple[str, str], float]:
            text = (await client.get("/metrics")).text
            found = {
                (sample.labels["hop"], sample.name.rsplit("_", 1)[1]): sample.value
                for family in text_string_to_metric_families(text)
                if family.name == "herald_hop_latency_seconds"
                for sample in family.samples
                if sample.name.endswith(("_count", "_sum")) and sample.labels["channel"] == "inapp"
            }
            return found if found.get(("publish", "count"), 0) >= 1 else {}

        timed = await eventually(hops, what="the publish hop observed")
    assert timed[("queue", "count")] == 1 and 2.0 <= timed[("queue", "sum")] < 600  # the fresh one only, from its decision
    assert timed[("claim", "count")] == 3 and timed[("record", "count")] == 3


async def test_transient_failures_are_retried_through_the_retry_topic_until_sent(infra, sender, db, ledger_schema):
    provider = ScriptedProvider(TransientError("http_503"), TransientError("timeout"))
    settings, app = await sender(provider, retry_base_seconds=0.05, retry_cap_seconds=0.2)
    d = dispatch()
    async with app:
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode())
        found = await statuses(infra, settings, 3)
        async with TopicReader(infra.kafka_bootstrap, settings.retry_topics("inapp")) as retries:
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


# Every record gets one decided outcome --------------------------------------------------------


class PoisonProvider(ScriptedProvider):
    """Raises an unexpected exception for the dispatches it is told are poison, accepts the others."""

    def __init__(self, poison: set[uuid.UUID]) -> None:
        super().__init__()
        self.poison = poison

    async def __call__(self, dispatch: Dispatch, res) -> str:
        self.calls.append(dispatch.notification_id)
        if dispatch.notification_id in self.poison:
            raise RuntimeError(f"cannot handle the text for ada@example.com, call +14155550100 ({dispatch.notification_id})")
        return f"msg-{len(self.calls)}"


async def test_an_unexpected_error_is_an_attempt_of_its_own_record_and_ends_in_dlq_with_its_reason(infra, sender, db, ledger_schema):
    poison = dispatch()
    good = [dispatch() for _ in range(5)]
    provider = PoisonProvider({poison.notification_id})
    settings, app = await sender(provider, max_attempts=2, retry_base_seconds=0.05, retry_cap_seconds=0.1)
    async with app:
        for d in [good[0], good[1], poison, *good[2:]]:  # one partition (one key): the poison sits inside the batch
            await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u1")
        async with TopicReader(infra.kafka_bootstrap, settings.dlq_topic) as dlq:
            [dead] = await dlq.wait_for(1)
        found = await statuses(infra, settings, 5 + 2)
    # The good ones were sent once each, beside it; the poison was tried twice (two attempts) and no more.
    assert sorted(str(c) for c in provider.calls if c != poison.notification_id) == sorted(str(d.notification_id) for d in good)
    assert provider.calls.count(poison.notification_id) == 2
    by_id = {}
    for status in found:
        by_id.setdefault(status["notification_id"], []).append(status["status"])
    assert by_id[str(poison.notification_id)] == ["retrying", "dead_lettered"]
    assert all(by_id[str(d.notification_id)] == ["sent"] for d in good)
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers["herald-reason"] == "retries_exhausted"
    assert "unexpected_error: RuntimeError" in headers["herald-error"] and "test_sender.py" in headers["herald-error"]
    assert "ada@example.com" not in headers["herald-error"] and "+14155550100" not in headers["herald-error"]  # masked
    row = await db.fetchrow(f"SELECT status, attempts FROM {ledger_schema}.ledger WHERE notification_id = $1", poison.notification_id)
    assert (row["status"], row["attempts"]) == ("dead_lettered", 2)


async def test_a_second_copy_waits_for_the_first_copys_outcome_and_repeats_it(infra, sender, db, ledger_schema):
    provider = GatedProvider()
    settings, app = await sender(provider)
    d = dispatch()
    async with app:
        async with TopicReader(infra.kafka_bootstrap, settings.status_topic) as reader:
            for _ in range(2):
                await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u1")
            await eventually(lambda: asyncio.sleep(0, result=provider.started == [d.notification_id]), what="the first copy at the provider")
            await asyncio.sleep(1.0)  # the second copy has been read by now (same batch or the next)
            assert await reader.poll() == []  # neither copy answered before the outcome was recorded
            provider.gate.set()
            await reader.wait_for(2)
            found = reader.json()
    assert provider.started == [d.notification_id]
    assert [(s["status"], s["replayed"]) for s in found] == [("sent", False), ("sent", True)]
    assert await db.fetchval(f"SELECT status FROM {ledger_schema}.ledger WHERE notification_id = $1", d.notification_id) == "sent"


async def test_a_redelivered_copy_of_a_finished_notification_republishes_its_recorded_outcome(infra, sender, db, ledger_schema):
    provider = ScriptedProvider()
    settings, app = await sender(provider)
    d = dispatch()
    # Sent before, but its status never reached notify.status (the process died between the two).
    await db.execute(
        f"INSERT INTO {ledger_schema}.ledger (notification_id, event_id, event_type, user_id, status, provider_message_id, sent_at) "
        "VALUES ($1, 'e1', 'booking.created', 'u1', 'sent', 'msg-earlier', now())",
        d.notification_id,
    )
    async with app:
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u1")
        [status] = await statuses(infra, settings, 1)
    assert provider.calls == []
    assert (status["status"], status["provider_message_id"], status["replayed"]) == ("sent", "msg-earlier", True)


# Retries over a time window, through delay topics --------------------------------------------


async def test_retries_go_on_until_the_window_closes_then_to_dlq(infra, sender, db, ledger_schema):
    provider = ScriptedProvider(*[TransientError("http_503")] * 1000)
    settings, app = await sender(provider, retry_base_seconds=0.05, retry_cap_seconds=0.2, settings_overrides={"retry_window_seconds": 6.0})
    async with app:
        d = dispatch()  # routed now: its window starts here (long enough for the retry lane's consumer to join first)
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode())
        async with TopicReader(infra.kafka_bootstrap, settings.dlq_topic) as dlq:
            [dead] = await dlq.wait_for(1, timeout=30)
    assert len(provider.calls) >= 3  # several attempts, not a fixed count: the window decides
    assert dict(dead.headers)["herald-reason"] == b"retries_exhausted"
    row = await db.fetchrow(f"SELECT status, attempts FROM {ledger_schema}.ledger WHERE notification_id = $1", d.notification_id)
    assert (row["status"], row["attempts"]) == ("dead_lettered", len(provider.calls))


async def test_retry_after_is_honoured_in_full_and_a_critical_retry_has_its_own_lane(infra, sender):
    provider = ScriptedProvider(TransientError("http_429", retry_after=75.0))
    settings, app = await sender(provider, retry_base_seconds=0.05, retry_cap_seconds=0.2, settings_overrides={"retry_tiers": "10,60,600,3600"})
    d = dispatch(critical=True, category="security")
    async with app:
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp", critical=True), d.model_dump_json().encode())
        async with TopicReader(infra.kafka_bootstrap, settings.retry_topics("inapp")) as retries:
            [held] = await retries.wait_for(1)
    waiting = Dispatch.model_validate_json(held.value)
    assert held.topic == settings.retry_topic("inapp", critical=True, tier=60)  # 75 s waits in the 60 s tier of the critical lane
    assert 74 <= (waiting.not_before - waiting.created_at).total_seconds() <= 90  # not cut to the 0.2 s backoff cap
    assert float(dict(held.headers)["herald-not-before"]) == pytest.approx(waiting.not_before.timestamp(), abs=0.01)


async def test_a_retry_not_yet_due_pauses_its_partition_instead_of_blocking_the_lane(infra, sender):
    provider = ScriptedProvider()
    settings, app = await sender(provider)
    later, now = dispatch(), dispatch()
    later = later.model_copy(update={"not_before": datetime.now(UTC) + timedelta(seconds=3), "attempt": 2})
    now = now.model_copy(update={"not_before": datetime.now(UTC), "attempt": 2})
    topic = settings.retry_topic("inapp", tier=settings.retry_tiers_seconds[0])
    async with app:
        await produce(infra.kafka_bootstrap, topic, later.model_dump_json().encode(), key=b"a")
        await produce(infra.kafka_bootstrap, topic, now.model_dump_json().encode(), key=b"b")
        await eventually(lambda: asyncio.sleep(0, result=now.notification_id in provider.calls), what="the due retry sent")
        sent_due_at = datetime.now(UTC)
        await eventually(lambda: asyncio.sleep(0, result=later.notification_id in provider.calls), what="the held retry sent once due", timeout=30)
        sent_later_at = datetime.now(UTC)
    assert sent_later_at >= later.not_before
    if provider.calls.index(now.notification_id) == 0:
        assert sent_due_at < later.not_before  # whatever partition each took, the due one did not wait for the held one


def test_hold_back_passes_due_records_and_pauses_each_partition_at_its_first_record_not_due():
    from aiokafka import ConsumerRecord, TopicPartition

    settings = HeraldSettings(environment="test")
    now = datetime(2030, 1, 1, tzinfo=UTC)
    pipeline = SenderPipeline(settings, Channel.inapp, ScriptedProvider(), ledger=Ledger("x"), clock=lambda: now)

    def record(partition: int, offset: int, due_in: float) -> ConsumerRecord:
        at = f"{(now + timedelta(seconds=due_in)).timestamp():.3f}".encode()
        return ConsumerRecord("retry.inapp.10s", partition, offset, 0, 0, None, b"{}", None, 0, 0, [("herald-not-before", at)])

    class Consumer:
        def __init__(self) -> None:
            self.seeks, self.paused = {}, set()

        def seek(self, tp, offset):
            self.seeks[tp] = offset

        def pause(self, *tps):
            self.paused.update(tps)

        def resume(self, *tps):
            self.paused.difference_update(tps)

    consumer = Consumer()

    async def scenario():
        records = [record(0, 5, -1), record(0, 6, 30), record(0, 7, -1), record(1, 9, -5), record(2, 3, 0.05)]
        due = pipeline.hold_back(records, consumer)
        assert [(r.partition, r.offset) for r in due] == [(0, 5), (1, 9)]  # offset 7 waits behind 6: order is kept
        assert consumer.seeks == {TopicPartition("retry.inapp.10s", 0): 6, TopicPartition("retry.inapp.10s", 2): 3}
        assert consumer.paused == set(consumer.seeks)
        await asyncio.sleep(0.2)  # partition 2's record falls due: resumed; partition 0's is 30 s away
        assert consumer.paused == {TopicPartition("retry.inapp.10s", 0)}
        for handle in pipeline._resume_handles.values():
            handle.cancel()

    asyncio.run(scenario())


def test_backoff_is_exponential_with_full_jitter_and_the_tier_fits_the_wait():
    import random

    from shared._sender import delay_tier, retry_delay

    rng = random.Random(7)
    delays = [retry_delay(5, base=1.0, cap=600.0, rng=rng) for _ in range(2000)]
    assert 0 <= min(delays) < 1.0 and 15.0 < max(delays) <= 16.0  # uniform over [0, base * 2**4]
    assert max(retry_delay(30, base=1.0, cap=600.0, rng=rng) for _ in range(200)) <= 600.0
    assert retry_delay(1, base=1.0, cap=2.0, retry_after=3600.0) == 3600.0
    assert [delay_tier(d, [10, 60, 600, 3600]) for d in (0.5, 10, 59, 60, 700, 9000)] == [10, 10, 10, 60, 600, 3600]


# Never resend what a provider accepted; outages are waited out ------------------------------------


class FlakyLedger(Ledger):
    """The real ledger, but the first writes of chosen kinds fail as if PostgreSQL had gone away."""

    def __init__(self, schema: str, *, claims: int = 0, finishes: int = 0) -> None:
        super().__init__(schema)
        self.claim_failures, self.finish_failures = claims, finishes

    async def claim(self, **kwargs):
        if self.claim_failures:
            self.claim_failures -= 1
            raise ConnectionResetError("connection to PostgreSQL lost")
        return await super().claim(**kwargs)

    async def claim_many(self, **kwargs):
        if self.claim_failures:
            self.claim_failures -= 1
            raise ConnectionResetError("connection to PostgreSQL lost")
        return await super().claim_many(**kwargs)

    async def finish(self, **kwargs):
        if self.finish_failures:
            self.finish_failures -= 1
            raise ConnectionResetError("connection to PostgreSQL lost")
        return await super().finish(**kwargs)


async def test_an_accepted_send_is_recorded_through_a_database_outage_and_never_sent_again(infra, sender, db, ledger_schema):
    provider = ScriptedProvider()
    ledger = FlakyLedger(ledger_schema, finishes=4)
    settings, app = await sender(provider, ledger=ledger)
    d = dispatch()
    async with app:
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u1")
        [status] = await statuses(infra, settings, 1)
        await asyncio.sleep(1.0)
    assert provider.calls == [d.notification_id]
    assert ledger.finish_failures == 0 and status["status"] == "sent"
    assert await db.fetchval(f"SELECT status FROM {ledger_schema}.ledger WHERE notification_id = $1", d.notification_id) == "sent"


async def test_an_outage_at_the_claim_is_waited_out_charges_no_attempt_and_shows_in_readiness(infra, sender, db, ledger_schema):
    provider = ScriptedProvider()
    ledger = FlakyLedger(ledger_schema, claims=3)
    settings, app = await sender(provider, ledger=ledger, settings_overrides={"outage_backoff_max_seconds": 2.0})
    d = dispatch()
    async with app as client:
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u1")

        async def not_ready():
            answer = await client.get("/readyz")
            return answer if answer.status_code == 503 else None

        during = await eventually(not_ready, what="readiness to report the outage")
        [status] = await statuses(infra, settings, 1)
        after = await eventually(lambda: _ready(client), what="readiness back once the outage is over")
    assert during.json()["checks"]["inapp-delivery"] == "failing"  # the exception itself only in the logs and metrics
    assert after.json()["status"] == "ready"
    assert status["status"] == "sent" and provider.calls == [d.notification_id]
    assert await db.fetchval(f"SELECT attempts FROM {ledger_schema}.ledger WHERE notification_id = $1", d.notification_id) == 1


async def _ready(client):
    answer = await client.get("/readyz")
    return answer if answer.status_code == 200 else None


# Expiry ---------------------------------------------------------------------------------------------


async def test_a_dispatch_past_its_expiry_is_finished_as_expired_and_never_sent(infra, sender, db, ledger_schema):
    provider = ScriptedProvider(TransientError("http_503", retry_after=300.0))
    settings, app = await sender(provider)
    stale = dispatch(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    # sent once (its consumer may take a while to join on a busy machine), and its retry would come after it expires
    soon = dispatch(expires_at=datetime.now(UTC) + timedelta(seconds=60))
    async with app:
        for d in (stale, soon):
            await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u1")
        found = {s["notification_id"]: s for s in await statuses(infra, settings, 2)}
    assert provider.calls == [soon.notification_id]
    assert (found[str(stale.notification_id)]["status"], found[str(stale.notification_id)]["reason"]) == ("expired", "expired")
    assert found[str(soon.notification_id)]["status"] == "expired"
    rows = await db.fetch(f"SELECT status FROM {ledger_schema}.ledger WHERE notification_id = ANY($1::uuid[])", [stale.notification_id, soon.notification_id])
    assert [r["status"] for r in rows] == ["expired", "expired"]


# Graceful shutdown ------------------------------------------------------------------------------------


async def test_stopping_drains_the_sends_in_flight_before_the_providers_close(infra, sender, db, ledger_schema):
    import contextlib

    provider = GatedProvider()
    closed_while_sending: list[bool] = []

    @contextlib.asynccontextmanager
    async def provider_hook(res):
        res.extra["closed"] = False
        yield
        closed_while_sending.append(len(provider.finished) < len(provider.started))
        res.extra["closed"] = True

    settings, app = await sender(provider, hooks=[provider_hook])
    batch = [dispatch() for _ in range(3)]
    # Written before the sender starts, so its first fetch takes all three in one batch: records of
    # one partition arriving one by one would wait behind the first, held at the gate.
    for d in batch:
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u1")
    async with app:
        await eventually(lambda: asyncio.sleep(0, result=len(provider.started) == 3), what="three sends in flight", timeout=60)
        asyncio.get_running_loop().call_later(0.5, provider.gate.set)  # they finish while the app is stopping
    assert closed_while_sending == [False]
    assert sorted(provider.finished) == sorted(d.notification_id for d in batch)
    rows = await db.fetch(f"SELECT status FROM {ledger_schema}.ledger WHERE notification_id = ANY($1::uuid[])", [d.notification_id for d in batch])
    assert [r["status"] for r in rows] == ["sent"] * 3
    found = await statuses(infra, settings, 3)
    assert sorted(s["status"] for s in found) == ["sent"] * 3


# The circuit breaker, the misconfiguration pause, the operator's hold -------------------------------


class SwitchedProvider:
    """Fails with ``error`` while ``down`` is set, accepts otherwise; records every call."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.down = True
        self.calls: list[uuid.UUID] = []

    async def __call__(self, dispatch: Dispatch, res) -> str:
        self.calls.append(dispatch.notification_id)
        if self.down:
            raise self.error
        return f"msg-{len(self.calls)}"


def channel_state(metrics: str) -> str:
    return next(line.split('state="')[1].split('"')[0] for line in metrics.splitlines() if line.startswith("herald_channel_state{") and line.endswith(" 1.0"))


BREAKER = {"breaker_failures": 3, "breaker_open_seconds": 0.5, "breaker_open_max_seconds": 1.0, "breaker_min_calls": 1000}


async def test_an_outage_opens_the_breaker_messages_keep_their_attempts_and_all_are_sent_once_it_is_back(infra, sender, db, ledger_schema):
    provider = SwitchedProvider(TransientError("http_503"))
    settings, app = await sender(provider, retry_base_seconds=0.05, retry_cap_seconds=0.1, settings_overrides=BREAKER)
    batch = [dispatch() for _ in range(30)]
    async with app as client:
        for d in batch:
            await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u1")
        await eventually(lambda: _state_is(client, "open", "half_open"), what="the breaker open")
        await asyncio.sleep(3)  # an outage of a few seconds: only probes reach the provider
        calls_while_down = len(provider.calls)
        provider.down = False
        found = await statuses(infra, settings, 30, final=True)
        await eventually(lambda: _state_is(client, "closed"), what="the breaker closed again")
    assert calls_while_down < 20  # 3 to open it, then one probe per pause: not 30 messages × their attempts
    assert {s["notification_id"] for s in found if s["status"] == "sent"} == {str(d.notification_id) for d in batch}
    assert sorted(provider.calls[calls_while_down:]).count(batch[0].notification_id) <= 1
    rows = await db.fetch(f"SELECT status, attempts FROM {ledger_schema}.ledger")
    assert all(r["status"] == "sent" for r in rows) and len(rows) == 30
    assert sum(r["attempts"] for r in rows) == len(provider.calls)  # every attempt was a provider call: none burned while open


async def test_a_misconfigured_provider_pauses_the_channel_and_everything_is_delivered_once_it_is_fixed(infra, sender, db, ledger_schema):
    provider = SwitchedProvider(Misconfigured("smtp_535", "5.7.8 Authentication credentials invalid"))
    settings, app = await sender(provider, max_attempts=2, retry_base_seconds=0.05, settings_overrides=BREAKER)
    batch = [dispatch() for _ in range(10)]
    async with app as client:
        for d in batch:
            await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), d.model_dump_json().encode(), key=b"u1")
        await eventually(lambda: _state_is(client, "misconfigured"), what="the channel paused as misconfigured")
        await asyncio.sleep(3)  # longer than max_attempts would allow, had these been the recipients' failures
        provider.down = False  # the operator fixes the credentials
        found = await statuses(infra, settings, 10, final=True)
    assert {s["notification_id"] for s in found if s["status"] == "sent"} == {str(d.notification_id) for d in batch}
    assert not [s for s in found if s["status"] in ("failed", "dead_lettered")]


async def test_an_operator_hold_stops_sends_until_resume(infra, sender, redis_client):
    from shared._breaker import hold_key, resume_key

    provider = ScriptedProvider()
    settings, app = await sender(provider, settings_overrides={**BREAKER, "breaker_control_seconds": 0.2})
    prefix = settings.control_prefix()
    async with app as client:
        await redis_client.set(hold_key(prefix, "inapp"), "1")
        await eventually(lambda: _first_batch_then_state(client, infra, settings, "held"), what="the hold seen")
        held = dispatch()
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), held.model_dump_json().encode(), key=b"u1")
        await asyncio.sleep(2)
        assert held.notification_id not in provider.calls
        await redis_client.delete(hold_key(prefix, "inapp"))
        await redis_client.set(resume_key(prefix, "inapp"), "r1")
        await eventually(lambda: asyncio.sleep(0, result=held.notification_id in provider.calls), what="the held dispatch sent after resume", timeout=30)
    await redis_client.delete(resume_key(prefix, "inapp"))


async def _first_batch_then_state(client, infra, settings, state):
    # The gate reads the controls when a batch arrives: give it one.
    await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), dispatch().model_dump_json().encode(), key=b"warm")
    return await _state_is(client, state)


async def _state_is(client, *states) -> bool:
    text = (await client.get("/metrics/")).text
    try:
        return channel_state(text) in states
    except StopIteration:
        return False
