"""One batch of domain events in, dispatches and trace rows out.

The steps, in order: parse and validate every record (dead-lettering what is
invalid); apply ``user.*`` events to the directory in the order they came;
look up every recipient's profile at once (Redis, then PostgreSQL for
misses); decide; publish the dispatches and write the trace concurrently,
and return only when Kafka and PostgreSQL both have them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.partitioner import murmur2

from shared import CloudEvent, Erasure, InvalidMessage, Outgoing, Resources, dead_letter, describe, is_outage, publish_many, utcnow
from shared._kafka import kafka_options

from . import logic, repo
from .catalogue import Catalogue, Notification
from .directory import recipients_of
from .schedules import Plan, Schedules, key_for, refusal, schedule_id
from .settings import Settings

log = logging.getLogger(__name__)

_DIRECTORY_FIELDS = ("email", "phone", "phone_verified_at", "locale", "timezone")


@dataclass
class Item:
    """One record of the batch, as far as it got."""

    record: ConsumerRecord
    event: CloudEvent | None = None
    data: dict[str, Any] = field(default_factory=dict)
    notifications: tuple[Notification, ...] = ()
    recipients: dict[Notification, list[str] | None] = field(default_factory=dict)
    failed: InvalidMessage | None = None
    too_large: bool = False  # a dispatch of it exceeded the largest record; dead-lettered once

    @property
    def about(self) -> dict[str, Any]:
        """``extra=`` for a log line about this record: it carries the record's event id.

        A batch interleaves its records, so the id goes on each line rather than into the
        ``event_id`` context variable, which would stay set for every later line of the batch.
        """
        return {"event_id": self.event.id} if self.event is not None else {}


@dataclass
class Chunk:
    """What a group of events produces: dispatches and dead letters, trace rows, metric counts."""

    out: list[Outgoing] = field(default_factory=list)  # dispatches
    dead: list[Outgoing] = field(default_factory=list)  # dead letters
    holds: list[Plan] = field(default_factory=list)  # dispatches held by their users' quiet hours
    trace: list[dict[str, Any]] = field(default_factory=list)
    dispatches: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)

    def count(self, res: Resources) -> None:
        for labels, n in self.dispatches.items():
            res.metrics.dispatches.labels(*labels).inc(n)
        for event_type, n in self.events.items():
            res.metrics.events.labels(event_type, "routed").inc(n)


class BatchRouter:
    def __init__(self, settings: Settings, catalogue: Catalogue) -> None:
        self.settings = settings
        self.catalogue = catalogue

    async def handle(self, records: list[ConsumerRecord], res: Resources) -> None:
        """Finish every record of a batch."""
        items = [self.parse(record, res) for record in records]
        directory = recipients_of(res)
        for item in items:
            if item.failed is None and item.event is not None and item.event.type in logic.DIRECTORY_TYPES:
                await self.apply_directory(item, res)
        held = await self.hold(items, res)
        routable = [i for n, i in enumerate(items) if i.failed is None and i.event is not None and n not in held]
        user_ids = {u for i in routable for users in i.recipients.values() if users for u in users}
        profiles = await directory.profiles(user_ids)
        # A chunk's trace rows and dead letters are written while the next chunk is decided
        # (at most ``route_pipeline_depth`` chunks in flight). The batch's dispatches go to
        # the producer together, in consumption order, one record batch per partition, so a
        # user's notifications keep their order. All is acknowledged before we return.
        in_flight = asyncio.Semaphore(self.settings.route_pipeline_depth)
        dispatches: list[Outgoing] = []
        async with asyncio.TaskGroup() as group:
            for start in range(0, len(items), self.settings.route_chunk):
                chunk = Chunk()
                for n, item in enumerate(items[start : start + self.settings.route_chunk], start):
                    if n in held:
                        continue  # written to router.schedules: routed when it is released
                    if item.failed is not None:
                        chunk.dead.append(self.dead_letter(item, res, chunk.trace))
                    elif item.event is not None and item.notifications:
                        targeted = {n: users for n, users in item.recipients.items() if users is not None}
                        self.collect(item, list(targeted), targeted, profiles, chunk, res)
                        chunk.events[item.event.type] += 1
                chunk.count(res)
                dispatches += chunk.out
                await in_flight.acquire()
                group.create_task(self.record(chunk, res, release=in_flight))
                await asyncio.sleep(0)  # let it start writing before the next chunk is decided
            group.create_task(self.publish(dispatches, res))
        # A broadcast is only written down here (its shards); the walkers route it (broadcasts.py).
        for item in routable:
            for notification in (n for n, users in item.recipients.items() if users is None):
                await res.extra["broadcasts"].start(item, notification, res)

    async def hold(self, items: list[Item], res: Resources) -> set[int]:
        """Write the batch's schedules (docs/timing.md): the indices of the events held for their ``sendat``; one
        refused by its source's quota becomes a dead letter. Cancellations and reminders are applied here too."""
        schedules: Schedules = res.extra["schedules"]
        released, cancelled = await schedules.releases(items, res)
        try:
            released_items = {id(items[n]) for n in released}
            ops, held = schedules.plans_of(items, released=lambda item: id(item) in released_items)
            held |= cancelled  # released just as its key was cancelled: not routed
            refused = await schedules.apply(ops, res)
        except Exception as exc:
            if is_outage(exc):
                raise  # the batch is handed back and tried again
            # Not the batch's fault as a whole: every event that asked something of schedules goes to dlq, the rest is routed.
            log.error("schedules of a batch could not be written: %s", describe(exc))
            asking = {n for n, item in enumerate(items) if item.event is not None and item.failed is None and schedules.asks(item)}
            for n in asking:
                items[n].failed = InvalidMessage("schedule_failed", describe(exc))
            return set()
        for plan in refused:
            plan.item.failed = refusal(plan, self.settings.schedule_quota_per_source)
            held.discard(next(n for n, i in enumerate(items) if i is plan.item))
        return held

    def parse(self, record: ConsumerRecord, res: Resources) -> Item:
        """Parse and validate one record; unknown types are counted and left alone."""
        item = Item(record)
        try:
            item.event = event = logic.parse_event(record.value)
            notifications = self.catalogue.get(event.type)
            if notifications is None:
                res.metrics.events.labels("unknown", "skipped").inc()
                log.debug("skipped event of unknown type %r", event.type, extra=item.about)
                return item
            item.data = logic.validate_data(event)
            item.notifications = notifications
            item.recipients = {n: logic.recipients_of(n, item.data) for n in notifications}
            for n in notifications:  # a link to a foreign host dead-letters the event before anyone is notified
                logic.link(n, item.data, self.settings.frontend_url, self.settings.link_hosts)
        except InvalidMessage as exc:
            item.failed = exc
        return item

    async def apply_directory(self, item: Item, res: Resources) -> None:
        """Apply a ``user.*`` event; an invalid address turns the item into a dead letter."""
        assert item.event is not None
        raw = item.event.data if isinstance(item.event.data, dict) else {}
        fields = {k: item.data[k] for k in _DIRECTORY_FIELDS if k in raw}
        try:
            if not logic.printable(item.data["user_id"]):
                raise InvalidMessage("invalid_data", "data.user_id: a user id may not contain control characters")
            outcome = await recipients_of(res).apply_event(item.event.type, item.data["user_id"], fields, time=item.event.time)
            log.debug("directory %s for user %s by %s", outcome, item.data["user_id"], item.event.type, extra=item.about)
        except InvalidMessage as exc:
            item.failed = exc
            return
        if item.event.type == "user.deleted":
            await self.request_erasure(item, res)

    async def request_erasure(self, item: Item, res: Resources) -> None:
        """Ask every service to erase the user: recorded first (its id is kept), then published before the
        batch is committed, so a crash in between publishes it again on redelivery."""
        event, user_id = item.event, item.data["user_id"]
        assert event is not None
        async with res.pool.acquire() as conn:
            row = await repo.request_erasure(
                conn=conn, user_id=user_id, erasure_id=Erasure.id_for(event.source, event.id), event_id=event.id, requested_at=event.time or utcnow()
            )
        erasure = Erasure(user_id=user_id, **row)
        await publish_many(res.broker, [Outgoing(self.settings.erasure_topic, erasure, key=user_id)])
        log.info("erasure %s of user %s requested", erasure.erasure_id, user_id, extra=item.about)

    def collect(
        self,
        item: Item,
        notifications: list[Notification],
        recipients: dict[Notification, list[str] | None],
        profiles: dict[str, logic.Profile],
        chunk: Chunk,
        res: Resources,
    ) -> None:
        """Decide for one event and add its dispatches and trace rows to the chunk."""
        event = item.event
        assert event is not None
        decisions = logic.route(
            event, item.data, notifications, recipients, profiles, frontend_url=self.settings.frontend_url, link_hosts=self.settings.link_hosts,  # type: ignore[arg-type]
            now=res.extra["schedules"].clock(),
        )
        oversize: list[tuple[int, str]] = []  # (bytes, detail)
        held: dict[Any, datetime] = {}  # notification id → when its user's quiet hours end
        for i, decision in enumerate(decisions):
            critical = decision.notification.critical
            lane = "critical" if critical else "normal"
            if decision.dispatch is not None:
                value = decision.dispatch.model_dump_json().encode()
                if len(value) > self.settings.kafka_max_message_bytes:
                    # The broker would refuse it, and the batch with it, on every redelivery.
                    detail = f"{decision.channel.value} dispatch of {len(value)} bytes exceeds HERALD_KAFKA_MAX_MESSAGE_BYTES ({self.settings.kafka_max_message_bytes})"
                    oversize.append((len(value), detail))
                    decisions[i] = decision = dataclasses.replace(decision, dispatch=None, reason="dispatch_too_large", detail=detail)
                else:
                    topic = self.settings.notify_topic(decision.channel.value, critical=critical)
                    until = self.quiet_until(decision, profiles, res)
                    if until is not None:
                        chunk.dispatches[(decision.channel.value, lane, "held", "quiet_hours")] += 1
                        chunk.holds.append(self.hold_plan(item, decision.dispatch, value, topic, until))
                        held[decision.dispatch.notification_id] = until
                        continue
                    chunk.dispatches[(decision.channel.value, lane, "routed", "")] += 1
                    chunk.out.append(Outgoing(topic, value, key=decision.user_id))
                    if event.time is not None:
                        res.metrics.hops.labels("route", decision.channel.value).observe(max((decision.dispatch.created_at - event.time).total_seconds(), 0.0))
                    continue
            chunk.dispatches[(decision.channel.value, lane, "suppressed", decision.reason)] += 1
        rows = logic.trace_rows(event, decisions, item.data)
        for row in rows:
            until = held.get(row["notification_id"])
            if until is not None:
                row.update(decision="held", reason="quiet_hours", detail=f"held by the user's quiet hours until {until.isoformat()}")
        chunk.trace += rows
        if oversize and not item.too_large:
            # The event goes to the dead-letter topic once, so it can be replayed when the limit
            # allows: its other dispatches carry the same notification ids and are not sent twice.
            item.too_large = True
            summary = f"{len(oversize)} dispatch(es) too large; the largest: {max(oversize)[1]}"
            item.failed = InvalidMessage("dispatch_too_large", summary)
            chunk.dead.append(self.dead_letter(item, res, chunk.trace, count_event=False))

    def quiet_until(self, decision: logic.Decision, profiles: dict[str, logic.Profile], res: Resources) -> datetime | None:
        """When the user's quiet hours end, for a non-critical email, SMS or push routed inside them; else None."""
        if decision.notification.critical or decision.channel not in logic.QUIET_CHANNELS:
            return None
        profile = profiles.get(decision.user_id)
        if profile is None or profile.quiet is None:
            return None
        return logic.quiet_until(res.extra["schedules"].clock(), profile.contact.timezone, profile.quiet)

    def hold_plan(self, item: Item, dispatch: Any, value: bytes, topic: str, until: datetime) -> Plan:
        """The schedule that sends a held dispatch when the quiet hours end (cancelled with its event's key)."""
        event = item.event
        assert event is not None
        rule = self.catalogue.schedules.get(event.type)
        return Plan(
            id=schedule_id(event.source, f"held|{dispatch.notification_id}"), source=event.source, key=key_for(rule, event, item.data),
            event_id=event.id, event_type=event.type, body=value, partition_key=dispatch.recipient.user_id.encode(), kind="held",
            due_at=until, event_time=min(event.time, dispatch.created_at) if event.time is not None else dispatch.created_at,
            expires_at=dispatch.expires_at, user_ids=(dispatch.recipient.user_id,), topic=topic, trace_id=dispatch.notification_id,
        )

    def dead_letter(self, item: Item, res: Resources, trace: list[dict[str, Any]], *, count_event: bool = True) -> Outgoing:
        exc, record = item.failed, item.record
        assert exc is not None
        if count_event:  # False for an event already counted as routed
            res.metrics.events.labels("invalid", "dead_lettered").inc()
        res.metrics.dead_lettered.labels("router", exc.reason).inc()
        log.warning("dead-lettered %s/%s@%s: %s", record.topic, record.partition, record.offset, exc, extra=item.about)
        if item.event is not None:
            trace.append(logic.dead_letter_row(item.event, exc.reason, exc.detail))
        return dead_letter(self.settings, record, stage="router", reason=exc.reason, error=exc.detail)

    async def finish(self, chunk: Chunk, res: Resources) -> None:
        """Publish and record a chunk, concurrently; return when both are done."""
        await asyncio.gather(self.publish(chunk.out, res), self.record(chunk, res))

    async def publish(self, dispatches: list[Outgoing], res: Resources) -> None:
        """Hand dispatches to the producer in order; return when Kafka has every one."""
        acks = await enqueue(res.extra["producer"], dispatches)
        await asyncio.gather(*acks)

    async def record(self, chunk: Chunk, res: Resources, *, release: asyncio.Semaphore | None = None) -> None:
        """Write a chunk's trace rows and dead letters; return when PostgreSQL and Kafka have them."""
        try:

            async def decisions() -> None:
                if chunk.trace:
                    async with res.pool.acquire() as conn:
                        await repo.record_decisions(conn=conn, rows=chunk.trace)

            async def holds() -> None:
                if chunk.holds:
                    await res.extra["schedules"].hold(chunk.holds, res)

            await asyncio.gather(decisions(), holds(), publish_many(res.broker, chunk.dead))
        finally:
            if release is not None:
                release.release()


@contextlib.asynccontextmanager
async def dispatch_producer_for(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """The router's own producer for dispatches: acks from every replica, batched with a short linger."""
    producer = AIOKafkaProducer(
        **kafka_options(settings),
        client_id=f"herald-{settings.service_name}-dispatch",
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=settings.dispatch_linger_ms,
        max_batch_size=settings.dispatch_max_batch_bytes,
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def enqueue(producer: AIOKafkaProducer, messages: Sequence[Outgoing]) -> list[asyncio.Future[Any]]:
    """Hand dispatches to the producer; the futures resolve when Kafka has acknowledged them.

    Messages are packed into one record batch per topic partition, each partition
    chosen from the key exactly as Kafka's default partitioner does (murmur2), so a
    user's dispatches stay in order on one partition. Per-message sends, and the
    broker's per-message middleware stack even more, cost more than routing itself.
    """
    batches: dict[tuple[str, int], Any] = {}
    futures = []
    partitions: dict[str, int] = {}
    for m in messages:
        value = m.value if isinstance(m.value, bytes) else m.value.model_dump_json().encode()
        key = m.key.encode() if isinstance(m.key, str) else m.key
        if m.topic not in partitions:
            partitions[m.topic] = len(await producer.partitions_for(m.topic))
        tp = (m.topic, partition_of(key or b"", partitions[m.topic]))
        batch = batches.get(tp)
        headers = [(k, v.encode()) for k, v in m.headers.items()] if m.headers else []
        if batch is None or batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            if batch is not None:
                futures.append(await producer.send_batch(batch, tp[0], partition=tp[1]))
            batches[tp] = batch = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None, headers=headers)
    for (topic, partition), batch in batches.items():
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


@functools.lru_cache(maxsize=65536)
def partition_of(key: bytes, count: int) -> int:
    """Kafka's default partition of a key (murmur2, as aiokafka and the Java client compute it)."""
    return (murmur2(key) & 0x7FFFFFFF) % count
