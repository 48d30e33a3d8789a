"""The delivery pipeline every channel sender shares.

A sender supplies one coroutine, ``deliver(dispatch, resources)``, that hands a
dispatch to its provider and returns the provider's message id, or raises a
``TransientError``, ``PermanentError`` or ``Suppressed``. This module does the
rest, the same way for every channel (docs/reliability.md says why each rule):

* consumes ``notify.<channel>`` and, in its own consumer group, the priority
  lane ``notify.<channel>.critical``, plus the delay topics of both lanes;
* claims the notification in the channel's ledger before calling the provider,
  so an id already sent is never sent again; a redelivered copy of a finished
  notification re-publishes its recorded outcome, and a copy of one in flight
  waits for that outcome first;
* gives every record exactly one outcome: sent, suppressed, failed, expired,
  retry scheduled or dead-lettered. An unexpected exception is an attempt of its
  own record only; an outage of PostgreSQL or Redis is waited out with backoff
  and charged to no record;
* retries transient failures over a time window (per lane) with exponential
  backoff, full jitter and ``Retry-After`` in full, through tiered delay topics
  whose consumers pause a partition until its next record is due;
* once the provider has accepted a send, records it even through a database
  outage (the write is retried with backoff, never answered by sending again);
* publishes every outcome to ``notify.status`` and counts it, and returns only
  when every record of the batch is finished, so offsets are committed after.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from aiokafka import ConsumerRecord, TopicPartition
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from ._app import KafkaResources, OutageBackoff, Resources
from ._breaker import ChannelGate, GateState, hold_key, resume_key
from ._erasure import erased_users
from ._exceptions import Misconfigured, PermanentError, Suppressed, TransientError, describe, is_outage, patiently
from ._kafka import Outgoing, dead_letter, header, publish_many, subscriber_options
from ._logging import event_id_var, mask_text, notification_id_var
from ._models import Channel, DeliveryState, DeliveryStatus, Dispatch, utcnow
from ._settings import HeraldSettings

log = logging.getLogger(__name__)

Deliver = Callable[[Dispatch, Resources], Awaitable[str | None]]
Clock = Callable[[], datetime]

#: Ledger states after which a notification is finished: nothing more is done with it.
FINAL_STATES = frozenset({"sent", "delivered", "failed", "suppressed", "expired"})
#: Transient reasons that say nothing about the provider's health (Herald's own throttle, a dependency).
NOT_PROVIDER_FAILURES = frozenset({"provider_throttled", "dependency_unavailable", "database_unavailable", "realtime_unavailable", "in_flight"})
#: Header on a delay-topic record: when it is due (epoch seconds), so a lane need not parse it to wait.
NOT_BEFORE_HEADER = "herald-not-before"


def retry_delay(attempt: int, *, base: float, cap: float, retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential backoff with full jitter, at least ``retry_after``.

    ``cap`` bounds the backoff, not the provider's ``Retry-After``, which is honoured in full.
    """
    ceiling = min(cap, base * (2 ** min(attempt - 1, 62)))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def delay_tier(delay: float, tiers: Sequence[int]) -> int:
    """The delay topic for a wait of ``delay`` seconds: the longest tier not longer than it (else the shortest)."""
    fitting = [t for t in tiers if t <= delay]
    return max(fitting) if fitting else min(tiers)


class Claimed(NamedTuple):
    """A delivery claimed in the ledger: the attempt number, the claim time, whether its user was erased by then."""

    attempts: int
    claimed_at: datetime
    erased: bool


@dataclass(frozen=True)
class LedgerRow:
    status: str  # a DeliveryState's value, or "claimed" (in flight)
    attempts: int
    claimed_at: datetime | None
    error: str | None
    provider_message_id: str | None


class Ledger:
    """The channel's delivery ledger (``<schema>.ledger``): one row per notification id and target."""

    def __init__(self, schema: str, lease_seconds: float = 60.0) -> None:
        self.schema = schema
        self.table = f"{schema}.ledger"
        self.lease = timedelta(seconds=lease_seconds)

    async def erase(self, *, conn: Any, user_id: str) -> int:
        """Remove what a user's rows say beyond accounting (error texts may quote an address); how many rows changed."""
        status = await conn.execute(f"UPDATE {self.table} SET error = NULL, updated_at = now() WHERE user_id = $1 AND error IS NOT NULL", user_id)
        return int(status.split()[-1])

    def _erased(self, alias: str = "l") -> str:
        """SQL: the claimed row's user has a tombstone (read in the claim's own statement, see ``fence``)."""
        return f"EXISTS (SELECT 1 FROM {self.schema}.erasures e WHERE e.user_id = {alias}.user_id)"

    async def claim(self, *, conn: Any, dispatch: Dispatch, target: str = "") -> Claimed | None:
        """Claim a delivery before the provider call; None if it is not ours to send.

        The claim says whether the user was erased, read in the same statement: an erasure that committed
        before it is seen here, and one that had not yet committed waits for the claim (``shared._erasure.fence``).
        """
        row = await conn.fetchrow(
            f"""
            INSERT INTO {self.table} AS l (notification_id, target, event_id, event_type, user_id, status, attempts, claimed_at)
            VALUES ($1, $2, $3, $4, $5, 'claimed', 1, now())
            ON CONFLICT (notification_id, target) DO UPDATE
               SET status = 'claimed', attempts = l.attempts + 1, claimed_at = now(), updated_at = now()
             WHERE l.status IN ('retrying', 'dead_lettered') OR (l.status = 'claimed' AND l.claimed_at < now() - $6::interval)
            RETURNING attempts, claimed_at, {self._erased()} AS erased
            """,
            dispatch.notification_id,
            target,
            dispatch.event_id,
            dispatch.event_type,
            dispatch.recipient.user_id,
            self.lease,
        )
        return None if row is None else Claimed(row["attempts"], row["claimed_at"], row["erased"])

    async def claim_many(self, *, conn: Any, dispatches: Sequence[Dispatch]) -> dict[uuid.UUID, Claimed]:
        """``claim`` for several notifications (distinct ids) in one statement: the claim of each one claimed.

        Rows are taken in id order, so two such statements over the same ids (two lanes, two instances) wait for each other rather than deadlock.
        """
        ordered = sorted(dispatches, key=lambda d: d.notification_id)
        rows = await conn.fetch(
            f"""
            INSERT INTO {self.table} AS l (notification_id, target, event_id, event_type, user_id, status, attempts, claimed_at)
            SELECT n, '', e, t, u, 'claimed', 1, now() FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS d(n, e, t, u)
            ON CONFLICT (notification_id, target) DO UPDATE
               SET status = 'claimed', attempts = l.attempts + 1, claimed_at = now(), updated_at = now()
             WHERE l.status IN ('retrying', 'dead_lettered') OR (l.status = 'claimed' AND l.claimed_at < now() - $5::interval)
            RETURNING notification_id, attempts, claimed_at, {self._erased()} AS erased
            """,
            [d.notification_id for d in ordered],
            [d.event_id for d in ordered],
            [d.event_type for d in ordered],
            [d.recipient.user_id for d in ordered],
            self.lease,
        )
        return {row["notification_id"]: Claimed(row["attempts"], row["claimed_at"], row["erased"]) for row in rows}

    async def renew(self, *, conn: Any, notification_id: Any, claimed_at: datetime) -> bool:
        """Start the lease of a claim made at ``claimed_at`` again; False when it is no longer that claim (taken over after its lease)."""
        return bool(
            await conn.fetchval(
                f"UPDATE {self.table} SET claimed_at = now(), updated_at = now() "
                "WHERE notification_id = $1 AND target = '' AND status = 'claimed' AND claimed_at = $2 RETURNING true",
                notification_id,
                claimed_at,
            )
        )

    async def release_many(self, *, conn: Any, claims: Sequence[tuple[uuid.UUID, datetime]]) -> None:
        """``release`` for claims (id, claim time) no attempt was made under, each only if it is still that claim."""
        await conn.execute(
            f"""
            UPDATE {self.table} AS l SET status = 'retrying', attempts = GREATEST(l.attempts - 1, 0), updated_at = now()
              FROM unnest($1::uuid[], $2::timestamptz[]) AS c(n, at)
             WHERE l.notification_id = c.n AND l.target = '' AND l.status = 'claimed' AND l.claimed_at = c.at
            """,
            [nid for nid, _ in claims],
            [at for _, at in claims],
        )

    async def row(self, *, conn: Any, notification_id: Any, target: str = "") -> LedgerRow | None:
        """What the ledger holds about a delivery."""
        found = await conn.fetchrow(
            f"SELECT status, attempts, claimed_at, error, provider_message_id FROM {self.table} WHERE notification_id = $1 AND target = $2",
            notification_id,
            target,
        )
        if found is None:
            return None
        return LedgerRow(found["status"], found["attempts"], found["claimed_at"], found["error"], found["provider_message_id"])

    async def in_flight_until(self, *, conn: Any, notification_id: Any, target: str = "") -> datetime | None:
        """When the lease of a delivery someone else has claimed runs out; None if it is finished."""
        row = await self.row(conn=conn, notification_id=notification_id, target=target)
        if row is None or row.status != "claimed" or row.claimed_at is None:
            return None
        return row.claimed_at + self.lease

    async def release(self, *, conn: Any, notification_id: Any, target: str = "") -> None:
        """Give a claim back without an attempt: the delivery waits (its channel paused) and was never tried."""
        await conn.execute(
            f"UPDATE {self.table} SET status = 'retrying', attempts = GREATEST(attempts - 1, 0), updated_at = now() "
            "WHERE notification_id = $1 AND target = $2 AND status = 'claimed'",
            notification_id,
            target,
        )

    async def finish(
        self,
        *,
        conn: Any,
        notification_id: Any,
        status: DeliveryState,
        target: str = "",
        provider_message_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record the outcome of a claimed delivery."""
        if error is not None:
            error = error.replace("\x00", "\\0")[:2000]  # an error may quote what PostgreSQL cannot store
        await conn.execute(
            f"""
            UPDATE {self.table}
               SET status = $3, provider_message_id = COALESCE($4, provider_message_id), error = $5, updated_at = now(),
                   sent_at = CASE WHEN $3 = 'sent' THEN now() ELSE sent_at END
             WHERE notification_id = $1 AND target = $2
            """,
            notification_id,
            target,
            status.value,
            provider_message_id,
            error,
        )


class Outage(Exception):
    """A dependency (PostgreSQL, Redis, Kafka) is unreachable: the batch is handed back and tried again after a pause."""


#: How old a batch claim's reading of the tombstones may be when its send starts (``BatchClaims.erased_since``).
RECHECK_SECONDS = 0.5

#: What ``BatchClaims.take`` answers for a copy it did not claim (a later copy in the batch, or one in
#: flight here already), and for one whose chunk the ledger refused as a whole (each is claimed alone).
_NOT_CLAIMED: Any = object()
_CLAIM_ALONE: Any = object()


@dataclass(frozen=True)
class BatchClaim:
    """A claim made for a record by its batch: the attempt number, the ledger's claim time, whether its user was erased, and when (monotonic) it was made."""

    attempts: int
    claimed_at: datetime
    erased: bool
    made: float


class BatchClaims:
    """A batch's ledger claims, a chunk of ``size`` dispatches in one statement.

    A chunk is claimed when its first record gets a delivery slot, so a record's claim is usually
    made about one chunk's worth of sends before its own send (a chunk is the pipeline's
    concurrency). Should a record wait longer for its slot (slow sends, a database outage holding
    slots in patient writes), its claim is renewed before the provider call once half the lease is
    gone, and given up if the lease ran out and another delivery took it over. Only a
    notification's first copy in the batch is claimed here, and only when no copy of it is in
    flight in this process; the others take the one-by-one path, which waits for the copy in
    flight and repeats its outcome. Claims no record took (the batch was cancelled) are given back.
    """

    def __init__(self, pipeline: SenderPipeline, res: Resources, dispatches: Sequence[Dispatch], *, size: int) -> None:
        self.pipeline = pipeline
        self.res = res
        firsts: dict[uuid.UUID, Dispatch] = {}
        for dispatch in dispatches:
            firsts.setdefault(dispatch.notification_id, dispatch)
        self._first = firsts
        order = list(firsts.values())
        self._chunks = [order[i : i + size] for i in range(0, len(order), size)]
        self._chunk_of = {d.notification_id: i // size for i, d in enumerate(order)}
        self._claiming: dict[int, asyncio.Task[dict[uuid.UUID, Any]]] = {}
        self._running: set[uuid.UUID] = set()  # first copies in flight here (entered in the pipeline's map)
        self._taken: set[uuid.UUID] = set()
        self._users = list(dict.fromkeys(d.recipient.user_id for d in order if "\x00" not in d.recipient.user_id))
        self._erased: frozenset[str] = frozenset()
        self._erased_read = float("-inf")  # when (monotonic) the batch's tombstones were last read
        self._reading = asyncio.Lock()

    def running(self, dispatch: Dispatch) -> None:
        """``dispatch`` has entered the pipeline's in-flight map: if it is a first copy, its chunk still claims it."""
        if self._first.get(dispatch.notification_id) is dispatch:
            self._running.add(dispatch.notification_id)

    async def take(self, dispatch: Dispatch) -> Any:
        """The claim of ``dispatch``: a ``BatchClaim``, None (not ours to send), ``_CLAIM_ALONE`` or ``_NOT_CLAIMED``. Raises for an outage."""
        nid = dispatch.notification_id
        if self._first.get(nid) is not dispatch:
            return _NOT_CLAIMED
        index = self._chunk_of[nid]
        task = self._claiming.get(index)
        if task is None:
            task = self._claiming[index] = asyncio.ensure_future(self._claim(self._chunks[index]))
        claimed = await asyncio.shield(task)
        found = claimed.get(nid, _NOT_CLAIMED)
        if isinstance(found, BatchClaim):
            self._taken.add(nid)
        return found

    async def erased_since(self, dispatch: Dispatch, claim: BatchClaim) -> bool:
        """Whether ``dispatch``'s user was erased after its chunk was claimed. A claim younger than
        ``RECHECK_SECONDS`` read the tombstones itself; for an older one (it waited for a slot) the
        batch's tombstones are read again, at most once per ``RECHECK_SECONDS`` for the whole batch."""
        if time.monotonic() - claim.made < RECHECK_SECONDS:
            return False
        async with self._reading:
            if time.monotonic() - self._erased_read >= RECHECK_SECONDS:
                async with self.res.pool.acquire() as conn:
                    self._erased = await erased_users(conn=conn, schema=self.pipeline.ledger.schema, user_ids=self._users)
                self._erased_read = time.monotonic()
        return dispatch.recipient.user_id in self._erased

    async def _claim(self, chunk: list[Dispatch]) -> dict[uuid.UUID, Any]:
        mine = [d for d in chunk if d.notification_id in self._running or d.notification_id not in self.pipeline._running]
        if not mine:
            return {}
        try:
            async with self.res.pool.acquire() as conn:
                claimed = await self.pipeline.ledger.claim_many(conn=conn, dispatches=mine)
        except Exception as exc:
            if is_outage(exc):
                raise
            # The ledger refused the chunk (a text it cannot store, say): each is claimed on its own, so
            # only the one it cannot take is dead-lettered.
            log.warning("claiming %d dispatches at once failed (%s): each is claimed alone", len(mine), describe(exc))
            return {d.notification_id: _CLAIM_ALONE for d in mine}
        made = time.monotonic()
        return {d.notification_id: BatchClaim(*claimed[d.notification_id], made) if d.notification_id in claimed else None for d in mine}

    async def close(self) -> None:
        """Stop claiming (the batch is over or cancelled), and give back every claim no record took."""
        untaken: list[tuple[uuid.UUID, datetime]] = []
        for task in self._claiming.values():
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is None:
                untaken += [(nid, c.claimed_at) for nid, c in task.result().items() if isinstance(c, BatchClaim) and nid not in self._taken]
        if untaken:
            await asyncio.shield(self._give_back(untaken))

    async def _give_back(self, untaken: list[tuple[uuid.UUID, datetime]]) -> None:
        try:
            async with self.res.pool.acquire() as conn:
                await self.pipeline.ledger.release_many(conn=conn, claims=untaken)
        except Exception as exc:  # their leases run out instead
            log.warning("%d unused claims could not be given back (%s): each waits out its lease", len(untaken), describe(exc))


class SenderPipeline:
    """Consumes a channel's topics and drives ``deliver`` with the shared semantics."""

    def __init__(
        self,
        settings: HeraldSettings,
        channel: Channel,
        deliver: Deliver,
        *,
        ledger: Ledger,
        max_attempts: int = 0,
        retry_base_seconds: float = 1.0,
        retry_cap_seconds: float = 600.0,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.channel = channel
        self.deliver = deliver
        self.ledger = ledger
        self.ledger.lease = timedelta(seconds=settings.delivery_lease_seconds)
        self.max_attempts = max_attempts  # 0: the retry window alone decides when to give up
        self.retry_base = retry_base_seconds
        self.retry_cap = retry_cap_seconds
        self.clock = clock  # every time decision (due, expired, the next attempt, the window) reads this
        # Notification ids this process is delivering now, each with the outcome its copies wait for.
        self._running: dict[uuid.UUID, asyncio.Future[None]] = {}
        self._outages = OutageBackoff(f"{channel.value}-delivery", max_pause=settings.outage_backoff_max_seconds)
        self._resume_handles: dict[TopicPartition, asyncio.TimerHandle] = {}
        self._gate_paused: dict[TopicPartition, Any] = {}  # partitions paused while the gate is not closed, with their consumer
        self._metrics: Any = None
        self._control_read = 0.0
        self.gate = ChannelGate(
            channel.value,
            failures=settings.breaker_failures,
            failure_rate=settings.breaker_failure_rate,
            window_seconds=settings.breaker_window_seconds,
            min_calls=settings.breaker_min_calls,
            open_seconds=settings.breaker_open_seconds,
            open_max_seconds=settings.breaker_open_max_seconds,
            on_change=self._gate_changed,
        )

    # ------------------------------------------------------------------ wiring

    def delay_topics(self, *, critical: bool) -> list[str]:
        return [self.settings.retry_topic(self.channel.value, critical=critical, tier=t) for t in self.settings.retry_tiers_seconds]

    def routers(self) -> list[KafkaRouter]:
        """The FastStream routers: the normal lane, the priority lane and the delay topics of each."""
        router = KafkaRouter()
        s, ch = self.settings, self.channel.value
        lanes = [
            ([s.notify_topic(ch)], f"{ch}", "normal", False),
            ([s.notify_topic(ch, critical=True)], f"{ch}-critical", "critical", False),
            (self.delay_topics(critical=False), f"{ch}-retry", "retry", True),
            (self.delay_topics(critical=True), f"{ch}-retry-critical", "retry-critical", True),
        ]
        for topics, group, lane, delayed in lanes:
            router.subscriber(
                *topics, **subscriber_options(s, group, background=delayed), title=f"{ch}:{lane}", description=f"Dispatches for the {ch} channel ({lane})"
            )(self._handler(lane, delayed=delayed))
        # Declared for the AsyncAPI document: what this sender writes.
        router.publisher(s.status_topic, title=f"{ch}:writes:status", schema=DeliveryStatus, description="Every delivery outcome")
        for critical in (False, True):
            for topic in self.delay_topics(critical=critical):
                router.publisher(topic, title=f"{ch}:writes:{topic}", schema=Dispatch, description="Dispatches waiting for another attempt")
        router.publisher(s.dlq_topic, title=f"{ch}:writes:dlq", schema=Dispatch, description="Dispatches that exhausted their retries, or unreadable bytes")
        return [router]

    def _handler(self, lane: str, *, delayed: bool) -> Callable[..., Awaitable[None]]:
        async def on_dispatch(_: None, msg: KafkaMessage, res: KafkaResources) -> None:
            records = list(msg.raw_message)
            await self.read_controls(res)
            if delayed:
                records = self.hold_back(records, msg.consumer)
            admitted = self.gate.admits() if records else None
            if admitted is not None:
                records = self.hand_back(records, msg.consumer, keep=admitted)
            try:
                await self.handle_batch(records, res, lane=lane)
            finally:
                if admitted == 1:
                    self.gate.probe_over()  # a probe that never reached the provider (a replay, expired) lets the next one through

        on_dispatch.__name__ = f"on_{self.channel.value}_{lane.replace('-', '_')}_dispatch"
        return on_dispatch

    # ------------------------------------------------------------------ delay topics

    def hold_back(self, records: list[ConsumerRecord], consumer: Any) -> list[ConsumerRecord]:
        """The records of a delay-topic batch that are due; each partition whose next record is not is paused until it is.

        The partition is rewound to its first record that is not due, so the batch's commit
        stops there, and resumed (and that record fetched again) when it falls due.
        """
        now = self.clock().timestamp()
        due: list[ConsumerRecord] = []
        waiting: dict[TopicPartition, tuple[int, float]] = {}
        for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
            tp = TopicPartition(record.topic, record.partition)
            if tp in waiting:
                continue
            at = _due_at(record)
            if at is not None and at > now:
                waiting[tp] = (record.offset, at)
            else:
                due.append(record)
        for tp, (offset, at) in waiting.items():
            self._pause_at(consumer, tp, offset, max(at - now, 0.0))
        return due

    def _pause_at(self, consumer: Any, tp: TopicPartition, offset: int, seconds: float) -> None:
        """Rewind ``tp`` to ``offset`` (so the batch's commit stops there), pause it, and resume it in ``seconds``."""
        consumer.seek(tp, offset)
        consumer.pause(tp)
        previous = self._resume_handles.pop(tp, None)
        if previous is not None:
            previous.cancel()
        self._resume_handles[tp] = asyncio.get_running_loop().call_later(seconds, self._resume, consumer, tp)

    def hand_back(self, records: list[ConsumerRecord], consumer: Any, *, keep: int) -> list[ConsumerRecord]:
        """While the gate is not closed: keep the first ``keep`` records (a probe), rewind and pause the rest's partitions.

        Nothing handed back is attempted, so no message burns an attempt while the channel is paused.
        """
        ordered = sorted(records, key=lambda r: (r.topic, r.partition, r.offset))
        kept = ordered[:keep]
        first: dict[TopicPartition, int] = {}
        for record in ordered[keep:]:
            first.setdefault(TopicPartition(record.topic, record.partition), record.offset)
        wait = self.gate.retry_in()
        for tp, offset in first.items():
            self._pause_at(consumer, tp, offset, wait)
            self._gate_paused[tp] = consumer
        return kept

    def _gate_changed(self, before: GateState, state: GateState, reason: str) -> None:
        if self._metrics is not None:
            for s in GateState:
                self._metrics.channel_state.labels(self.channel.value, s.value).set(1 if s is state else 0)
            self._metrics.breaker_transitions.labels(self.channel.value, state.value).inc()
        if state is GateState.closed:
            for tp, consumer in list(self._gate_paused.items()):
                handle = self._resume_handles.pop(tp, None)
                if handle is not None:
                    handle.cancel()
                self._resume(consumer, tp)
            self._gate_paused.clear()

    async def read_controls(self, res: Resources) -> None:
        """The operator's hold and resume for this channel (Redis), read at most every HERALD_BREAKER_CONTROL_SECONDS."""
        if self._metrics is None:
            self._metrics = res.metrics
            self._gate_changed(self.gate.state, self.gate.state, "")
        now = time.monotonic()
        if now - self._control_read < self.settings.breaker_control_seconds:
            return
        self._control_read = now
        prefix, ch = self.settings.control_prefix(), self.channel.value
        try:
            held, token = await res.redis.mget(hold_key(prefix, ch), resume_key(prefix, ch))
        except Exception as exc:  # the breaker works without Redis; the operator's word waits for it
            log.debug("cannot read the channel controls: %s", exc)
            return
        self.gate.control(held=bool(held), resume_token=token.decode() if token else "")

    def _resume(self, consumer: Any, tp: TopicPartition) -> None:
        self._resume_handles.pop(tp, None)
        self._gate_paused.pop(tp, None)
        try:
            consumer.resume(tp)
        except Exception:  # revoked meanwhile: the new owner reads it afresh
            log.debug("partition %s no longer assigned; not resumed", tp)

    # ------------------------------------------------------------------ batches and records

    async def handle_batch(self, records: list[ConsumerRecord], res: Resources, *, lane: str) -> None:
        """Finish every record of a batch (sent, suppressed, failed, expired, retry scheduled or dead-lettered).

        Each record is on its own: one raising affects no other. The batch's claims go to the
        ledger a chunk at a time (``BatchClaims``). When a dependency is down, the records that
        could finish are published, then the batch is handed back (not committed) after a pause
        that grows while the outage lasts, and readiness reports it.
        """
        limit = asyncio.Semaphore(self.settings.concurrency)
        parsed = [self.parse(record, res) for record in records]
        dispatches = [d for d in parsed if isinstance(d, Dispatch)]
        claims = BatchClaims(self, res, dispatches, size=self.settings.concurrency)

        async def one(record: ConsumerRecord, item: Dispatch | list[Outgoing]) -> list[Outgoing]:
            if not isinstance(item, Dispatch):
                return item
            async with limit:
                try:
                    return await self.handle_dispatch(item, res, lane=lane, record=record, claims=claims)
                except Exception as exc:
                    if is_outage(exc):
                        raise
                    # Not even its outcome could be recorded: the record itself goes to dlq, once.
                    log.error("record %s/%s@%s could not be finished: %s", record.topic, record.partition, record.offset, describe(exc))
                    res.metrics.dead_lettered.labels(self.channel.value, "unexpected_error").inc()
                    return [dead_letter(self.settings, record, stage=self.channel.value, reason="unexpected_error", error=describe(exc))]

        try:
            results = await asyncio.gather(*(one(r, item) for r, item in zip(records, parsed, strict=True)), return_exceptions=True)
        finally:
            await claims.close()
        outgoing = [m for result in results if isinstance(result, list) for m in result]
        outages = [r for r in results if isinstance(r, BaseException)]
        if outgoing:
            began = time.perf_counter()
            try:
                await publish_many(res.broker, outgoing)
            except Exception as exc:
                outages.append(exc)
            else:
                res.metrics.hops.labels("publish", self.channel.value).observe(time.perf_counter() - began)
        if outages:
            await self._outages.failed(res, outages[0])
            raise Outage(str(outages[0])) from outages[0]
        self._outages.ok(res)

    def parse(self, record: ConsumerRecord, res: Resources) -> Dispatch | list[Outgoing]:
        """The dispatch a record holds, or the dead letter of one that holds none."""
        try:
            return Dispatch.model_validate_json(record.value or b"")
        except ValidationError as exc:
            res.metrics.dead_lettered.labels(self.channel.value, "invalid_dispatch").inc()
            log.warning("invalid dispatch at %s/%s@%s: %s", record.topic, record.partition, record.offset, exc.errors(include_input=False, include_url=False)[:3])
            return [dead_letter(self.settings, record, stage=self.channel.value, reason="invalid_dispatch", error=str(exc))]

    async def handle_dispatch(
        self,
        dispatch: Dispatch,
        res: Resources,
        *,
        lane: str,
        record: ConsumerRecord | None = None,
        claims: BatchClaims | None = None,
    ) -> list[Outgoing]:
        """Finish one dispatch."""
        event_id_var.set(dispatch.event_id)
        notification_id_var.set(str(dispatch.notification_id))
        fresh = dispatch.attempt == 1 and dispatch.not_before is None and dispatch.retry_from is None  # not a retry, delay or replay
        if fresh and dispatch.created_at.tzinfo is not None:
            res.metrics.hops.labels("queue", self.channel.value).observe(max((self.clock() - dispatch.created_at).total_seconds(), 0.0))
        return await self.process(dispatch, res, lane=lane, record=record, claims=claims)

    async def process(
        self,
        dispatch: Dispatch,
        res: Resources,
        *,
        lane: str,
        record: ConsumerRecord | None = None,
        claims: BatchClaims | None = None,
    ) -> list[Outgoing]:
        """Claim, deliver and record one dispatch; a copy of one in flight here waits for its outcome."""
        nid = dispatch.notification_id
        picked = time.perf_counter()
        first = self._running.get(nid)
        done: asyncio.Future[None] | None = None
        if first is None:
            done = asyncio.get_running_loop().create_future()
            self._running[nid] = done  # before any await: a second copy in this process now waits
            if claims is not None:
                claims.running(dispatch)
        try:
            claimed = await claims.take(dispatch) if claims is not None else _NOT_CLAIMED
            answered = claimed is None or isinstance(claimed, BatchClaim)  # the batch's answer for this record
            if first is not None and (not answered or claimed is None):
                await asyncio.shield(first)
                return await self._replay(dispatch, res)
            # With ``first`` and a claim of the batch's: a copy that came in after the claim finds it claimed and looks again later.
            if isinstance(claimed, BatchClaim) and time.monotonic() - claimed.made > self.ledger.lease.total_seconds() / 2:
                # Waited long for a slot: the claim is renewed, or, if its lease ran out and another delivery took it over, not ours.
                async with res.pool.acquire() as conn:
                    if not await self.ledger.renew(conn=conn, notification_id=nid, claimed_at=claimed.claimed_at):
                        claimed = None
            if not answered:
                try:
                    async with res.pool.acquire() as conn:
                        claimed = await self.ledger.claim(conn=conn, dispatch=dispatch)
                except Exception as exc:
                    if is_outage(exc):
                        raise
                    # The ledger refuses the dispatch itself (text PostgreSQL cannot store): it can never be claimed.
                    return self._dead_letter_unclaimable(dispatch, res, exc)
            if claimed is None:
                return await self._not_ours(dispatch, res)
            if claimed.erased or (isinstance(claimed, BatchClaim) and claims is not None and await claims.erased_since(dispatch, claimed)):
                # Its user was erased since it was routed (it waited in a retry or delay topic, is replayed
                # from dlq, or its batch was under way when the erasure came): never sent.
                return await self._record(dispatch, res, DeliveryState.suppressed, reason="user_deleted", error="the user was erased")
            return await self._deliver(dispatch, res, picked=picked)
        finally:
            if done is not None:
                del self._running[nid]
                done.set_result(None)

    def _dead_letter_unclaimable(self, dispatch: Dispatch, res: Resources, exc: Exception) -> list[Outgoing]:
        error = describe(exc)
        log.error("dispatch %s cannot be claimed: %s", dispatch.notification_id, error)
        res.metrics.dead_lettered.labels(self.channel.value, "unclaimable").inc()
        headers = {"herald-stage": self.channel.value, "herald-reason": "unclaimable", "herald-error": mask_text(error)[:2000]}
        return [
            self._status(dispatch, DeliveryState.dead_lettered, res, reason="unclaimable"),
            Outgoing(self.settings.dlq_topic, dispatch, key=dispatch.recipient.user_id, headers=headers),
        ]

    async def _not_ours(self, dispatch: Dispatch, res: Resources) -> list[Outgoing]:
        """A dispatch the ledger would not let us claim: finished (say so again), or in flight elsewhere (look again later)."""
        async with res.pool.acquire() as conn:
            row = await self.ledger.row(conn=conn, notification_id=dispatch.notification_id)
        if row is not None and row.status == "claimed" and row.claimed_at is not None:
            # Claimed by a delivery that has not finished: in flight in another process, or its
            # process died mid-send. Look again when its lease runs out rather than drop it.
            retry = dispatch.model_copy(update={"not_before": row.claimed_at + self.ledger.lease})
            return [self._delayed(retry, (retry.not_before - self.clock()).total_seconds())]  # type: ignore[operator]
        return await self._replay(dispatch, res, row)

    async def _replay(self, dispatch: Dispatch, res: Resources, row: LedgerRow | None = None) -> list[Outgoing]:
        """A redelivered copy of a finished notification: publish its recorded outcome again, never deliver it again."""
        if row is None:
            async with res.pool.acquire() as conn:
                row = await self.ledger.row(conn=conn, notification_id=dispatch.notification_id)
        if row is None or row.status not in FINAL_STATES:
            # Its first copy scheduled a retry (or is waiting in dlq): that copy carries it on.
            res.metrics.deliveries.labels(self.channel.value, dispatch.event_type, DeliveryState.duplicate.value, "in_retry").inc()
            return []
        res.metrics.deliveries.labels(self.channel.value, dispatch.event_type, DeliveryState.duplicate.value, "already_processed").inc()
        status = DeliveryStatus.of(
            dispatch, DeliveryState(row.status), reason=None if row.status == "sent" else row.error, provider_message_id=row.provider_message_id, replayed=True
        )
        return [Outgoing(self.settings.status_topic, status, key=str(dispatch.notification_id))]

    async def _deliver(self, dispatch: Dispatch, res: Resources, *, picked: float) -> list[Outgoing]:
        now = self.clock()
        if dispatch.expires_at is not None and now >= dispatch.expires_at:
            return await self._record(dispatch, res, DeliveryState.expired, reason="expired", error=f"expired at {dispatch.expires_at.isoformat()}")
        if self.gate.blocks():
            return await self._wait_for_channel(dispatch, res)
        started = time.perf_counter()
        res.metrics.hops.labels("claim", self.channel.value).observe(started - picked)
        try:
            provider_id = await self.deliver(dispatch, res)
        except Suppressed as exc:
            self.gate.neutral()
            return await self._record(dispatch, res, DeliveryState.suppressed, reason=exc.reason, error=exc.detail)
        except PermanentError as exc:
            self._observe_latency(res, started)
            self.gate.neutral()
            return await self._record(dispatch, res, DeliveryState.failed, reason=exc.reason, error=exc.detail)
        except Misconfigured as exc:
            self._observe_latency(res, started)
            self.gate.misconfigured(f"{exc.reason}: {exc.detail}"[:200])
            return await self._wait_for_configuration(dispatch, res, exc)
        except TransientError as exc:
            self._observe_latency(res, started)
            if exc.reason in NOT_PROVIDER_FAILURES:
                self.gate.neutral()
            else:
                self.gate.failed(exc.reason)
            return await self._transient(dispatch, res, exc)
        except Exception as exc:  # a bug or a poison record: an attempt of this record only
            self.gate.neutral()
            return await self._unexpected(dispatch, res, exc)
        self.gate.succeeded()
        self._observe_latency(res, started)
        if dispatch.event_time is not None:
            lane_label = "critical" if dispatch.critical else "normal"
            res.metrics.end_to_end.labels(self.channel.value, lane_label).observe(max((self.clock() - dispatch.event_time).total_seconds(), 0.0))
        log.debug("sent %s %s to user %s", self.channel.value, dispatch.event_type, dispatch.recipient.user_id)
        # The provider has it: from here on, only recording it is left, whatever the database does.
        accepted = time.perf_counter()
        out = await self._record(dispatch, res, DeliveryState.sent, provider_message_id=provider_id, patient=True)
        res.metrics.hops.labels("record", self.channel.value).observe(time.perf_counter() - accepted)
        return out

    def _observe_latency(self, res: Resources, started: float) -> None:
        res.metrics.provider_latency.labels(self.channel.value, self.provider_name(res)).observe(time.perf_counter() - started)

    def provider_name(self, res: Resources) -> str:
        return str(res.extra.get("provider", self.channel.value))

    async def _wait_for_channel(self, dispatch: Dispatch, res: Resources) -> list[Outgoing]:
        """The channel paused while this record waited its turn: it waits on a delay topic, its claim and attempt given back."""
        wait = max(self.gate.retry_in(), 1.0)
        retry = dispatch.model_copy(update={"not_before": self.clock() + timedelta(seconds=wait)})
        async with res.pool.acquire() as conn:
            await self.ledger.release(conn=conn, notification_id=dispatch.notification_id)
        return [self._status(dispatch, DeliveryState.retrying, res, reason="channel_paused"), self._delayed(retry, wait)]

    async def _wait_for_configuration(self, dispatch: Dispatch, res: Resources, exc: Misconfigured) -> list[Outgoing]:
        """Herald's own configuration was refused: the dispatch waits for the channel, its attempt and window untouched."""
        wait = max(self.gate.retry_in(), 1.0)
        retry = dispatch.model_copy(update={"not_before": self.clock() + timedelta(seconds=wait), "retry_from": self.clock()})
        log.error("%s provider refused Herald's configuration (%s); the channel pauses and %s waits", self.channel.value, exc, dispatch.notification_id)
        out = await self._record(dispatch, res, DeliveryState.retrying, reason=exc.reason, error=str(exc))
        return [*out, self._delayed(retry, wait)]

    async def _unexpected(self, dispatch: Dispatch, res: Resources, exc: Exception) -> list[Outgoing]:
        if is_outage(exc):
            # PostgreSQL or Redis went away under the provider call: not the message's fault, but
            # the attempt is over; it is retried like any transient failure (its window goes on).
            return await self._transient(dispatch, res, TransientError("dependency_unavailable", describe(exc)))
        log.error("unexpected error delivering %s: %s", dispatch.notification_id, describe(exc))
        return await self._transient(dispatch, res, TransientError("unexpected_error", describe(exc)))

    def window_end(self, dispatch: Dispatch) -> datetime:
        """When retrying stops: the lane's window from when the dispatch was routed, or its expiry if sooner."""
        s = self.settings
        window = s.retry_window_critical_seconds if dispatch.critical else s.retry_window_seconds
        end = (dispatch.retry_from or dispatch.created_at) + timedelta(seconds=window)
        return min(end, dispatch.expires_at) if dispatch.expires_at is not None else end

    async def _transient(self, dispatch: Dispatch, res: Resources, exc: TransientError) -> list[Outgoing]:
        delay = retry_delay(dispatch.attempt, base=self.retry_base, cap=self.retry_cap, retry_after=exc.retry_after)
        next_at = self.clock() + timedelta(seconds=delay)
        out_of_attempts = bool(self.max_attempts and dispatch.attempt >= self.max_attempts)
        if exc.reason == "unexpected_error" and dispatch.attempt >= self.settings.unexpected_error_attempts:
            out_of_attempts = True  # a bug or a poison record: to dlq, to be replayed once fixed, not retried for the whole window
        if dispatch.expires_at is not None and next_at >= dispatch.expires_at and not out_of_attempts:
            return await self._record(dispatch, res, DeliveryState.expired, reason="expired", error=f"{exc} (next attempt after expiry)")
        if out_of_attempts or next_at > self.window_end(dispatch):
            why = f"after {dispatch.attempt} attempts" if out_of_attempts else "when its retry window closed"
            log.error("giving up on %s %s: %s", dispatch.notification_id, why, exc)
            out = await self._record(dispatch, res, DeliveryState.dead_lettered, reason="retries_exhausted", error=str(exc))
            res.metrics.dead_lettered.labels(self.channel.value, "retries_exhausted").inc()
            headers = {"herald-stage": self.channel.value, "herald-reason": "retries_exhausted", "herald-error": mask_text(str(exc))[:2000]}
            return [*out, Outgoing(self.settings.dlq_topic, dispatch, key=dispatch.recipient.user_id, headers=headers)]
        retry = dispatch.model_copy(update={"attempt": dispatch.attempt + 1, "not_before": next_at})
        log.warning("attempt %d of %s failed (%s); retrying in %.1fs", dispatch.attempt, dispatch.notification_id, exc, delay)
        out = await self._record(dispatch, res, DeliveryState.retrying, reason=exc.reason, error=str(exc))
        return [*out, self._delayed(retry, delay)]

    def _delayed(self, dispatch: Dispatch, delay: float) -> Outgoing:
        """``dispatch`` on the delay topic of its lane that fits ``delay``."""
        tier = delay_tier(delay, self.settings.retry_tiers_seconds)
        topic = self.settings.retry_topic(self.channel.value, critical=dispatch.critical, tier=tier)
        due = dispatch.not_before.timestamp() if dispatch.not_before is not None else self.clock().timestamp()
        return Outgoing(topic, dispatch, key=dispatch.recipient.user_id, headers={NOT_BEFORE_HEADER: f"{due:.3f}"})

    async def _record(
        self,
        dispatch: Dispatch,
        res: Resources,
        state: DeliveryState,
        *,
        reason: str | None = None,
        error: str | None = None,
        provider_message_id: str | None = None,
        patient: bool = False,
    ) -> list[Outgoing]:
        """Write the outcome to the ledger and say it on ``notify.status``.

        ``patient``: the provider has accepted the send, so the write is retried with backoff
        through an outage (up to ``HERALD_LEDGER_WRITE_PATIENCE_SECONDS``) instead of letting the
        record be redelivered and sent again.
        """
        async def write() -> None:
            async with res.pool.acquire() as conn:
                await self.ledger.finish(
                    conn=conn, notification_id=dispatch.notification_id, status=state, provider_message_id=provider_message_id, error=error or reason
                )

        if patient:
            await patiently(
                write, patience=self.settings.ledger_write_patience_seconds, what=f"ledger write of {dispatch.notification_id} ({state.value})",
                problems=res.problems, key=f"{self.channel.value}-ledger",
            )
        else:
            await write()
        return [self._status(dispatch, state, res, reason=reason, provider_message_id=provider_message_id)]

    def _status(self, dispatch: Dispatch, state: DeliveryState, res: Resources, **fields: Any) -> Outgoing:
        res.metrics.deliveries.labels(self.channel.value, dispatch.event_type, state.value, fields.get("reason") or "").inc()
        status = DeliveryStatus.of(dispatch, state, **fields)
        return Outgoing(self.settings.status_topic, status, key=str(dispatch.notification_id))


def _due_at(record: ConsumerRecord) -> float | None:
    """When a delay-topic record is due (epoch seconds), from its header or else its body; None if unreadable."""
    value = header(record, NOT_BEFORE_HEADER)
    if value is not None:
        try:
            return float(value)
        except ValueError:
            pass
    try:
        dispatch = Dispatch.model_validate_json(record.value or b"")
    except ValidationError:
        return None  # dead-lettered when handled
    return dispatch.not_before.timestamp() if dispatch.not_before is not None else None
