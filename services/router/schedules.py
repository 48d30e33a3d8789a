"""Scheduled sends: events held until their ``sendat``, reminders planned from the catalogue, cancellation.

The router, routing a batch, hands this module the events that are not to be routed now: one whose
``sendat`` is still ahead is written to ``router.schedules`` instead (and traced as ``scheduled``); an
event type with reminders in the catalogue plans them (a ``lesson.reminder`` 24 h and 1 h before a
booking's start, say); an event type that cancels (``booking.cancelled``) cancels every pending
schedule of its key first. Every instance's scheduler releases what fell due, a bounded batch at a
time, each row taken with ``FOR UPDATE SKIP LOCKED`` and marked released in the transaction that
published it, so two schedulers never release one schedule; the event goes back onto its domain
topic with the ``herald-schedule`` header and is routed then, as things are then (preferences,
erasure, addresses). A crash between the publish and the commit releases it again: the same event,
hence the same notification ids, which the senders' ledgers send once. docs/timing.md has the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from shared import NOTIFICATION_NAMESPACE, CloudEvent, InvalidMessage, Outgoing, Resources, describe, is_outage, notification_id, utcnow

from . import logic
from .catalogue import Catalogue, Reminder, ScheduleRule
from .settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

#: Header on a released event: the schedule it comes from (it is routed at once, whatever its ``sendat``).
RELEASED_HEADER = "herald-schedule"


def schedule_id(source: str, event_id: str) -> uuid.UUID:
    return uuid.uuid5(NOTIFICATION_NAMESPACE, f"schedule|{source}|{event_id}")


def event_row_id(source: str, event_id: str) -> uuid.UUID:
    """The id of an event's own schedule row in the trace (not one user's, nor its dead-letter row): where 'scheduled' is written."""
    return notification_id(source=source, event_id=event_id, user_id="", channel="schedule")


@dataclasses.dataclass(frozen=True)
class Plan:
    """One schedule to write: an event to route at ``due_at`` (sendat, reminder) or a dispatch to send then (held)."""

    id: uuid.UUID
    source: str
    key: str
    event_id: str
    event_type: str
    body: bytes  # what is released: the CloudEvent, or the Dispatch
    partition_key: bytes | None
    kind: str  # sendat | reminder | held
    due_at: datetime
    event_time: datetime
    expires_at: datetime | None
    user_ids: tuple[str, ...] = ()  # whom its notifications name
    item: Any = None  # the batch item it holds (sendat), or None
    topic: str | None = None  # where it is released; None: the event's domain topic
    trace_id: uuid.UUID | None = None  # its decision row; None: the event's own row (written here as 'scheduled')

    @classmethod
    def of_event(cls, event: CloudEvent, *, key: str, partition_key: bytes | None, kind: str, due_at: datetime, event_time: datetime,
                 expires_at: datetime | None, user_ids: tuple[str, ...], item: Any = None) -> Plan:
        return cls(
            schedule_id(event.source, event.id), event.source, key, event.id, event.type, event.model_dump_json(exclude_none=True).encode(),
            partition_key, kind, due_at, event_time, expires_at, user_ids, item,
        )

    @property
    def decision_id(self) -> uuid.UUID:
        return self.trace_id if self.trace_id is not None else event_row_id(self.source, self.event_id)


@dataclasses.dataclass(frozen=True)
class Cancel:
    source: str
    key: str
    at: datetime  # the cancelling event's time


def key_for(rule: ScheduleRule | None, event: CloudEvent, data: dict[str, Any]) -> str:
    """An event's cancellation key: the catalogue's, from its data; else its subject, else its id."""
    if rule is not None:
        return logic.key_of(rule.key, data)
    return event.subject or event.id


def reminder_event(event: CloudEvent, data: dict[str, Any], reminder: Reminder, due: datetime) -> CloudEvent:
    """The event a reminder sends: of the reminder's type, the planning event's data and ``minutes_before``."""
    minutes = int(reminder.before.total_seconds() // 60)
    when = logic.key_of("{t}", {"t": data[reminder.at]})
    return CloudEvent(
        specversion="1.0",
        id=f"reminder-{uuid.uuid5(NOTIFICATION_NAMESPACE, f'reminder|{event.source}|{event.id}|{minutes}|{when}')}",
        source=event.source,
        type=reminder.type,
        time=due,
        subject=event.subject,
        data={**data, "minutes_before": minutes},
    )


class Schedules:
    def __init__(self, settings: Settings, catalogue: Catalogue, *, clock: Clock = utcnow) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ planning (the routing path)

    def plans_of(self, items: Sequence[Any], *, released: Callable[[Any], bool]) -> tuple[list[Plan | Cancel], set[int]]:
        """What a batch's events ask of schedules, in their order, and the indices of the items held (not routed now)."""
        now = self.clock()
        ops: list[Plan | Cancel] = []
        held: set[int] = set()
        for index, item in enumerate(items):
            event = item.event
            if event is None or item.failed is not None or event.type in logic.DIRECTORY_TYPES:
                continue
            try:
                mine, hold = self._plans_of_one(item, now, fresh=not released(item))
            except Exception as exc:  # odd data in this event only: it goes to dlq, the batch goes on
                if is_outage(exc):
                    raise
                item.failed = exc if isinstance(exc, InvalidMessage) else InvalidMessage("schedule_failed", describe(exc))
                continue
            ops += mine
            if hold:
                held.add(index)
        return ops, held

    def _plans_of_one(self, item: Any, now: datetime, *, fresh: bool) -> tuple[list[Plan | Cancel], bool]:
        event = item.event
        ops: list[Plan | Cancel] = []
        rule = self.catalogue.schedules.get(event.type)
        key = key_for(rule, event, item.data)
        at = min(event.time, now) if event.time is not None else now  # a producer's clock ahead of ours cannot outlive a cancellation
        if rule is not None and rule.cancels and fresh:
            ops.append(Cancel(event.source, key, at))
        send_at = event.send_at
        if fresh and send_at is not None and send_at > now and item.notifications:
            expires = self._expiry(event.type, item.data, send_at)
            ops.append(self._checked(Plan.of_event(
                event, key=key, partition_key=item.record.key, kind="sendat", due_at=send_at, event_time=at, expires_at=expires,
                user_ids=logic.user_ids_of(event.type, item.data), item=item,
            )))
            return ops, True
        for reminder in rule.reminders if rule is not None else ():
            start = _time(item.data.get(reminder.at))
            if start is None:
                continue
            due = start - reminder.before
            if due <= now:
                continue  # too late for this one: a reminder is never sent after its time
            generated = reminder_event(event, item.data, reminder, due)
            data = logic.validate_data(generated)
            ops.append(self._checked(Plan.of_event(
                generated, key=key, partition_key=item.record.key, kind="reminder", due_at=due, event_time=at,
                expires_at=self._expiry(generated.type, data, due), user_ids=logic.user_ids_of(generated.type, data),
            )))
        return ops, False

    def _checked(self, plan: Plan) -> Plan:
        """A plan Kafka will take back at its time (not over the largest record)."""
        if len(plan.body) > self.settings.kafka_max_message_bytes:
            raise InvalidMessage("schedule_too_large", f"{len(plan.body)} bytes exceed HERALD_KAFKA_MAX_MESSAGE_BYTES ({self.settings.kafka_max_message_bytes})")
        return plan

    async def releases(self, items: Sequence[Any], res: Resources) -> tuple[set[int], set[int]]:
        """Of a batch's records carrying the release header, the indices of true releases (a schedule of that id was
        released, or is being released now), and of those whose key was cancelled after their event (never routed:
        the cancellation raced the release). A header naming no schedule is ignored: the event is taken as sent."""
        ids: dict[int, uuid.UUID] = {}
        for n, item in enumerate(items):
            value = next((v for k, v in (item.record.headers or ()) if k == RELEASED_HEADER), None)
            if value is not None and item.event is not None and item.failed is None:
                with contextlib.suppress(ValueError):
                    ids[n] = uuid.UUID(value.decode(errors="replace"))
        if not ids:
            return set(), set()
        async with res.pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT s.id, s.trace_id, EXISTS (SELECT 1 FROM router.schedule_cancellations c
                                      WHERE c.source = s.source AND c.cancel_key = s.cancel_key AND c.cancelled_at > s.event_time) AS cancelled
                  FROM router.schedules s
                 WHERE s.id = ANY($1::uuid[]) AND s.status IN ('released', 'pending') AND s.due_at <= $2
                """,
                list(set(ids.values())), self.clock(),
            )
            found = {r["id"]: r for r in rows}
            cancelled = [r["trace_id"] for r in rows if r["cancelled"]]
            if cancelled:
                await conn.execute(
                    """
                    UPDATE router.decisions AS d SET decision = 'suppressed', reason = 'schedule_cancelled',
                           detail = left(coalesce(d.detail, '') || '; cancelled while it was released', 2000)
                     WHERE d.notification_id = ANY($1::uuid[])
                    """,
                    cancelled,
                )
        released = {n for n, i in ids.items() if i in found}
        return released, {n for n in released if found[ids[n]]["cancelled"]}

    def asks(self, item: Any) -> bool:
        """Whether an event asks anything of schedules (a ``sendat``, a cancellation, reminders)."""
        rule = self.catalogue.schedules.get(item.event.type)
        return item.event.send_at is not None or (rule is not None and (rule.cancels or bool(rule.reminders)))

    def _expiry(self, event_type: str, data: dict[str, Any], due: datetime) -> datetime | None:
        """When a schedule is pointless: when the last of its notifications expires, counted from when it is due
        (None when one of them never does)."""
        ends = [logic.expiry(n, data, due) for n in self.catalogue.get(event_type) or ()]
        if not ends or any(e is None for e in ends):
            return None
        return max(e for e in ends if e is not None)

    async def apply(self, ops: Sequence[Plan | Cancel], res: Resources) -> list[Plan]:
        """Write a batch's cancellations and plans in their order, in one transaction; the sendat plans refused by
        the source's quota (their items are dead-lettered by the caller). Reminders over quota are dropped, counted."""
        if not ops:
            return []
        plans = [op for op in ops if isinstance(op, Plan)]
        refused: list[Plan] = []
        async with res.pool.acquire() as conn, conn.transaction():
            if plans:
                rows = await conn.fetch(
                    "SELECT source, count(*) AS n FROM router.schedules WHERE status = 'pending' AND source = ANY($1::text[]) GROUP BY source",
                    list({p.source for p in plans}),
                )
                room = {p.source: self.settings.schedule_quota_per_source for p in plans}
                room.update({r["source"]: self.settings.schedule_quota_per_source - r["n"] for r in rows})
                over: set[int] = set()
                for i, plan in enumerate(plans):
                    room[plan.source] -= 1
                    if room[plan.source] < 0:
                        over.add(id(plan))
                        if plan.kind == "sendat":
                            refused.append(plan)
                        else:
                            log.warning("reminder %s not planned: source %s has %d pending schedules", plan.event_id, plan.source, self.settings.schedule_quota_per_source)
                        res.metrics.schedules.labels("refused").inc()
                ops = [op for op in ops if id(op) not in over]
            run: list[Plan] = []
            for op in [*ops, None]:
                if isinstance(op, Plan):
                    run.append(op)
                    continue
                if run:
                    await self._insert(conn, run, res)
                    run = []
                if isinstance(op, Cancel):
                    await cancel(conn, source=op.source, key=op.key, at=op.at, reason="cancelled by an event of the same key", res=res, now=self.clock())
        if plans:
            self._wake.set()
        return refused

    async def hold(self, plans: Sequence[Plan], res: Resources) -> None:
        """Write the dispatches a batch holds for their users' quiet hours (their trace rows say 'held')."""
        async with res.pool.acquire() as conn, conn.transaction():
            await self._insert(conn, list(plans), res)
        self._wake.set()

    async def _insert(self, conn: Any, plans: list[Plan], res: Resources) -> None:
        inserted = await conn.fetch(
            """
            INSERT INTO router.schedules (id, source, cancel_key, event_id, event_type, event, partition_key, kind, due_at, expires_at, event_time, user_ids,
                                          topic, trace_id)
            SELECT s.id, s.source, s.cancel_key, s.event_id, s.event_type, s.event, s.partition_key, s.kind, s.due_at, s.expires_at, s.event_time,
                   COALESCE((SELECT array_agg(u) FROM jsonb_array_elements_text(s.users::jsonb) AS u), '{}'), s.topic, s.trace_id
              FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::bytea[], $8::text[],
                          $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::text[], $13::text[], $14::uuid[])
                   AS s(id, source, cancel_key, event_id, event_type, event, partition_key, kind, due_at, expires_at, event_time, users, topic, trace_id)
             WHERE NOT EXISTS (SELECT 1 FROM router.schedule_cancellations c
                                WHERE c.source = s.source AND c.cancel_key = s.cancel_key AND c.cancelled_at > s.event_time)
            ON CONFLICT (id) DO NOTHING
            RETURNING id
            """,
            [p.id for p in plans], [p.source for p in plans], [p.key for p in plans], [p.event_id for p in plans],
            [p.event_type for p in plans], [p.body for p in plans],
            [p.partition_key for p in plans], [p.kind for p in plans], [p.due_at for p in plans],
            [p.expires_at for p in plans], [p.event_time for p in plans],
            [json.dumps(list(p.user_ids)) for p in plans],  # one JSON array each (a list of lists would be a 2-D array)
            [p.topic for p in plans], [p.decision_id for p in plans],
        )
        written = {r["id"] for r in inserted}
        new = [p for p in plans if p.id in written]
        unwritten = [p for p in plans if p.id not in written]
        if unwritten:  # planned before (a redelivery), or blocked by a later cancellation of its key
            there = {r["id"] for r in await conn.fetch("SELECT id FROM router.schedules WHERE id = ANY($1::uuid[])", [p.id for p in unwritten])}
            blocked = [p for p in unwritten if p.id not in there]
            if blocked:
                res.metrics.schedules.labels("cancelled").inc(len(blocked))
                await conn.execute(
                    """
                    INSERT INTO router.decisions AS d (notification_id, event_id, event_source, event_type, decision, reason, detail)
                    SELECT n, e, s, t, 'suppressed', 'schedule_cancelled', 'its key was cancelled after this event'
                      FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS b(n, e, s, t)
                    ON CONFLICT (notification_id) DO UPDATE SET decision = 'suppressed', reason = 'schedule_cancelled', detail = EXCLUDED.detail
                    """,
                    [p.decision_id for p in blocked], [p.event_id for p in blocked], [p.source for p in blocked], [p.event_type for p in blocked],
                )
        for kind in ("sendat", "reminder", "held"):
            count = sum(1 for p in new if p.kind == kind)
            if count:
                res.metrics.schedules.labels(f"scheduled_{kind}").inc(count)
        rows = [
            {
                "notification_id": p.decision_id, "event_id": p.event_id, "event_source": p.source,
                "event_type": p.event_type, "user_id": None, "channel": None, "critical": False, "template": None,
                "decision": "scheduled", "reason": p.kind, "detail": f"due {p.due_at.isoformat()}; key {p.key}"[:2000],
            }
            for p in new
            if p.trace_id is None  # a held dispatch's row is the routing's own ('held')
        ]
        if rows:
            columns = ("notification_id", "event_id", "event_source", "event_type", "user_id", "channel", "critical", "template", "decision", "reason", "detail")
            await conn.execute(
                """
                INSERT INTO router.decisions (notification_id, event_id, event_source, event_type, user_id, channel, critical, template, decision, reason, detail)
                SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::boolean[], $8::text[], $9::text[], $10::text[], $11::text[])
                ON CONFLICT (notification_id) DO NOTHING
                """,
                *([r[c] for r in rows] for c in columns),
            )

    # ------------------------------------------------------------------ releasing

    async def release_due(self, res: Resources) -> int:
        """Release (or expire) up to ``schedule_release_batch`` schedules that are due; how many were taken."""
        now = self.clock()
        async with res.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                SELECT id, source, event_id, event_type, event, partition_key, due_at, expires_at, topic, trace_id FROM router.schedules
                 WHERE status = 'pending' AND due_at <= $1 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED
                """,
                now,
                self.settings.schedule_release_batch,
            )
            if not rows:
                return 0
            expired = [r for r in rows if r["expires_at"] is not None and r["expires_at"] <= now]
            live = [r for r in rows if not (r["expires_at"] is not None and r["expires_at"] <= now)]
            failed: list[Any] = []
            if live:
                out = {r["id"]: Outgoing(r["topic"] or self.settings.domain_topic(r["event_type"]), bytes(r["event"]), key=r["partition_key"],
                                          headers={RELEASED_HEADER: str(r["id"])}) for r in live}
                try:
                    await publish(res, list(out.values()))  # acknowledged before the rows are marked: an outage leaves them pending
                except Exception as exc:
                    if is_outage(exc):
                        raise
                    # Kafka refused something (a record too large, say): each alone, so one cannot hold back the rest for ever.
                    for r in live:
                        try:
                            await publish(res, [out[r["id"]]])
                        except Exception as one:
                            if is_outage(one):
                                raise
                            log.error("schedule %s of event %s cannot be released: %s", r["id"], r["event_id"], describe(one))
                            failed.append(r)
                    live = [r for r in live if r not in failed]
            # What is finished keeps no event (its data may be personal): the row stays as the record of what happened.
            await conn.execute(
                """
                UPDATE router.schedules SET event = '', finished_at = $4,
                       status = CASE WHEN id = ANY($2::uuid[]) THEN 'expired' WHEN id = ANY($3::uuid[]) THEN 'failed' ELSE 'released' END
                 WHERE id = ANY($1::uuid[])
                """,
                [r["id"] for r in rows], [r["id"] for r in expired], [r["id"] for r in failed], now,
            )
            if failed:
                res.metrics.schedules.labels("failed").inc(len(failed))
                await conn.execute(
                    """
                    UPDATE router.decisions AS d SET decision = 'dead_lettered', reason = 'schedule_failed', detail = left(coalesce(d.detail, '') || '; Kafka refused it', 2000)
                     WHERE d.notification_id = ANY($1::uuid[])
                    """,
                    [r["trace_id"] for r in failed],
                )
            await conn.execute(
                """
                UPDATE router.decisions AS d SET detail = left(d.detail || '; released ' || $2, 2000)
                 WHERE d.notification_id = ANY($1::uuid[]) AND d.decision IN ('scheduled', 'held')
                """,
                [r["trace_id"] for r in live], now.isoformat(),
            )
            await conn.execute(
                """
                UPDATE router.decisions AS d SET decision = 'suppressed', reason = 'schedule_expired', detail = left(d.detail || '; expired before release ' || $2, 2000)
                 WHERE d.notification_id = ANY($1::uuid[]) AND d.decision IN ('scheduled', 'held')
                """,
                [r["trace_id"] for r in expired], now.isoformat(),
            )
        if live:
            res.metrics.schedules.labels("released").inc(len(live))
            late = max((now - r["due_at"]).total_seconds() for r in live)
            log.debug("released %d schedules (the latest %.3fs after its time)", len(live), late)
        if expired:
            res.metrics.schedules.labels("expired").inc(len(expired))
            log.info("%d schedules expired before they could be released", len(expired))
        return len(rows)

    async def next_due(self, res: Resources) -> datetime | None:
        async with res.pool.acquire() as conn:
            return await conn.fetchval("SELECT min(due_at) FROM router.schedules WHERE status = 'pending'")

    def run(self, res: Resources) -> None:
        self._task = asyncio.create_task(self._forever(res))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _forever(self, res: Resources) -> None:
        poll = self.settings.schedule_poll_seconds
        while True:
            wait = poll
            self._wake.clear()  # a wake-up during the pass is kept for the wait below
            try:
                taken = await self.release_due(res)
                if taken >= self.settings.schedule_release_batch:
                    continue  # more may be due now
                due = await self.next_due(res)
                if due is not None:
                    wait = min(max((due - self.clock()).total_seconds(), 0.0), poll)
            except Exception as exc:  # PostgreSQL or Kafka away: the schedules wait, nothing is lost
                (log.warning if is_outage(exc) else log.exception)("scheduler pass failed: %s", describe(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.01))


async def cancel(conn: Any, *, source: str, key: str, at: datetime, reason: str, res: Resources, now: datetime | None = None) -> int:
    """Cancel every pending schedule of ``key`` (from ``source``) planned by an event not newer than ``at``, and
    remember the cancellation (a schedule from an older event that comes later is not planned); how many."""
    await conn.execute(
        """
        INSERT INTO router.schedule_cancellations AS c (source, cancel_key, cancelled_at) VALUES ($1, $2, $3)
        ON CONFLICT (source, cancel_key) DO UPDATE SET cancelled_at = GREATEST(c.cancelled_at, EXCLUDED.cancelled_at)
        """,
        source, key, at,
    )
    rows = await conn.fetch(
        """
        UPDATE router.schedules SET status = 'cancelled', event = '', finished_at = coalesce($4, now())
         WHERE source = $1 AND cancel_key = $2 AND status = 'pending' AND event_time < $3
        RETURNING trace_id
        """,
        source, key, at, now,
    )
    if rows:
        await conn.execute(
            """
            UPDATE router.decisions AS d SET decision = 'suppressed', reason = 'schedule_cancelled', detail = left(d.detail || '; ' || $2, 2000)
             WHERE d.notification_id = ANY($1::uuid[]) AND d.decision IN ('scheduled', 'held')
            """,
            [r["trace_id"] for r in rows], reason,
        )
        res.metrics.schedules.labels("cancelled").inc(len(rows))
    return len(rows)


async def erase_user(conn: Any, *, user_id: str) -> int:
    """An erasure's part of the schedules: every schedule naming only that user goes (its event with it); a pending
    one naming others too stays for them (routed at its time, the erased user is suppressed then), and a finished
    one naming others goes as well (nothing more is done with it). How many went."""
    status = await conn.execute(
        "DELETE FROM router.schedules WHERE user_ids @> ARRAY[$1]::text[] AND (status <> 'pending' OR user_ids = ARRAY[$1]::text[])", user_id
    )
    return int(status.split()[-1])


async def pending(conn: Any, *, source: str, key: str) -> list[dict[str, Any]]:
    """The pending schedules of a key (for ``GET /v1/schedules/{key}``)."""
    rows = await conn.fetch(
        """
        SELECT id, event_id, event_type, kind, due_at, expires_at, created_at FROM router.schedules
         WHERE source = $1 AND cancel_key = $2 AND status = 'pending' ORDER BY due_at, id
        """,
        source, key,
    )
    return [dict(r) for r in rows]


async def publish(res: Resources, messages: list[Outgoing]) -> None:
    """Hand released events to the router's batching producer; return when Kafka has every one."""
    from .routing import enqueue

    acks = await enqueue(res.extra["producer"], messages)
    await asyncio.gather(*acks)


def _time(value: Any) -> datetime | None:
    """A time of event data (naive ones are UTC, as everywhere in routing); None when it is not one."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return None


def refusal(plan: Plan, quota: int) -> InvalidMessage:
    return InvalidMessage("schedule_quota", f"source {plan.source!r} has {quota} pending schedules (HERALD_SCHEDULE_QUOTA_PER_SOURCE); this event is not scheduled")
