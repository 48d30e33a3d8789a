"""The delivery pipeline every channel sender shares.

A sender supplies one coroutine, ``deliver(dispatch, resources)``, that hands a
dispatch to its provider and returns the provider's message id, or raises a
``TransientError``, ``PermanentError`` or ``Suppressed``. This module does the
rest, the same way for every channel:

* consumes ``notify.<channel>`` and, in its own consumer group, the priority
  lane ``notify.<channel>.critical``, plus ``retry.<channel>``;
* claims the notification in the channel's ledger before calling the provider,
  so an id already sent is never sent again (a redelivered message is counted
  as a duplicate);
* delivers a batch concurrently, bounded by ``settings.concurrency``;
* schedules transient failures on ``retry.<channel>`` with exponential backoff
  and jitter, and dead-letters the dispatch after the last attempt;
* publishes every outcome to ``notify.status`` and counts it;
* returns only when every message of the batch is finished, so the offset is
  committed after the outcome is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from aiokafka import ConsumerRecord
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from ._app import KafkaResources, Resources
from ._exceptions import PermanentError, Suppressed, TransientError
from ._kafka import Outgoing, dead_letter, publish_many, subscriber_options
from ._logging import event_id_var, notification_id_var
from ._models import Channel, DeliveryState, DeliveryStatus, Dispatch, utcnow
from ._settings import HeraldSettings

log = logging.getLogger(__name__)

Deliver = Callable[[Dispatch, Resources], Awaitable[str | None]]
Clock = Callable[[], datetime]


def retry_delay(attempt: int, *, base: float, cap: float, retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1``: full-jitter exponential backoff, at least ``retry_after``."""
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    delay = (rng or random).uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


class Ledger:
    """The channel's delivery ledger (``<schema>.ledger``): one row per notification id and target."""

    def __init__(self, schema: str, lease_seconds: float = 60.0) -> None:
        self.table = f"{schema}.ledger"
        self.lease = timedelta(seconds=lease_seconds)

    async def claim(self, *, conn: Any, dispatch: Dispatch, target: str = "") -> int | None:
        """Claim a delivery before the provider call; the attempt number, or None if it is not ours to send."""
        return await conn.fetchval(
            f"""
            INSERT INTO {self.table} AS l (notification_id, target, event_id, event_type, user_id, status, attempts, claimed_at)
            VALUES ($1, $2, $3, $4, $5, 'claimed', 1, now())
            ON CONFLICT (notification_id, target) DO UPDATE
               SET status = 'claimed', attempts = l.attempts + 1, claimed_at = now(), updated_at = now()
             WHERE l.status IN ('retrying', 'dead_lettered') OR (l.status = 'claimed' AND l.claimed_at < now() - $6::interval)
            RETURNING attempts
            """,
            dispatch.notification_id,
            target,
            dispatch.event_id,
            dispatch.event_type,
            dispatch.recipient.user_id,
            self.lease,
        )

    async def in_flight_until(self, *, conn: Any, notification_id: Any, target: str = "") -> datetime | None:
        """When the lease of a delivery someone else has claimed runs out; None if it is finished."""
        claimed_at = await conn.fetchval(
            f"SELECT claimed_at FROM {self.table} WHERE notification_id = $1 AND target = $2 AND status = 'claimed'",
            notification_id,
            target,
        )
        return None if claimed_at is None else claimed_at + self.lease

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


class SenderPipeline:
    """Consumes a channel's topics and drives ``deliver`` with the shared semantics."""

    def __init__(
        self,
        settings: HeraldSettings,
        channel: Channel,
        deliver: Deliver,
        *,
        ledger: Ledger,
        max_attempts: int = 5,
        retry_base_seconds: float = 1.0,
        retry_cap_seconds: float = 120.0,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.channel = channel
        self.deliver = deliver
        self.ledger = ledger
        self.max_attempts = max_attempts
        self.retry_base = retry_base_seconds
        self.retry_cap = retry_cap_seconds
        self.clock = clock  # every time decision (waiting for not_before, scheduling a retry) reads this
        self._in_flight: set[Any] = set()  # notification ids this process has claimed and not yet finished

    def routers(self) -> list[KafkaRouter]:
        """The FastStream routers: the normal lane, the priority lane and the retry topic."""
        router = KafkaRouter()
        s, ch = self.settings, self.channel.value
        lanes = [
            (s.notify_topic(ch), f"{ch}", "normal"),
            (s.notify_topic(ch, critical=True), f"{ch}-critical", "critical"),
            (s.retry_topic(ch), f"{ch}-retry", "retry"),
        ]
        for topic, group, lane in lanes:
            router.subscriber(
                topic, **subscriber_options(s, group), title=f"{ch}:{lane}", description=f"Dispatches for the {ch} channel ({lane})"
            )(self._handler(lane))
        # Declared for the AsyncAPI document: what this sender writes.
        router.publisher(s.status_topic, title=f"{ch}:writes:status", schema=DeliveryStatus, description="Every delivery outcome")
        router.publisher(s.retry_topic(ch), title=f"{ch}:writes:retry", schema=Dispatch, description="Dispatches waiting for another attempt")
        router.publisher(s.dlq_topic, title=f"{ch}:writes:dlq", schema=Dispatch, description="Dispatches that exhausted their retries, or unreadable bytes")
        return [router]

    def _handler(self, lane: str) -> Callable[..., Awaitable[None]]:
        async def on_dispatch(_: None, msg: KafkaMessage, res: KafkaResources) -> None:
            await self.handle_batch(list(msg.raw_message), res, lane=lane)

        on_dispatch.__name__ = f"on_{self.channel.value}_{lane}_dispatch"
        return on_dispatch

    async def handle_batch(self, records: list[ConsumerRecord], res: Resources, *, lane: str) -> None:
        """Finish every record of a batch (sent, suppressed, failed, retry scheduled or dead-lettered)."""
        limit = asyncio.Semaphore(self.settings.concurrency)

        async def one(record: ConsumerRecord) -> list[Outgoing]:
            async with limit:
                return await self.handle_record(record, res, lane=lane)

        results = await asyncio.gather(*(one(r) for r in records))
        await publish_many(res.broker, [m for batch in results for m in batch])

    async def handle_record(self, record: ConsumerRecord, res: Resources, *, lane: str) -> list[Outgoing]:
        """Process one record; return the messages to publish about it."""
        try:
            dispatch = Dispatch.model_validate_json(record.value or b"")
        except ValidationError as exc:
            res.metrics.dead_lettered.labels(self.channel.value, "invalid_dispatch").inc()
            log.warning("invalid dispatch at %s/%s@%s: %s", record.topic, record.partition, record.offset, exc.errors(include_input=False, include_url=False)[:3])
            return [dead_letter(self.settings, record, stage=self.channel.value, reason="invalid_dispatch", error=str(exc))]
        event_id_var.set(dispatch.event_id)
        notification_id_var.set(str(dispatch.notification_id))
        if dispatch.not_before is not None:
            wait = (dispatch.not_before - self.clock()).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)
        return await self.process(dispatch, res, lane=lane, record=record)

    async def process(self, dispatch: Dispatch, res: Resources, *, lane: str, record: ConsumerRecord | None = None) -> list[Outgoing]:
        """Claim, deliver and record one dispatch."""
        async with res.pool.acquire() as conn:
            attempts = await self.ledger.claim(conn=conn, dispatch=dispatch)
            if attempts is not None:
                self._in_flight.add(dispatch.notification_id)
            lease_end = None
            if attempts is None and dispatch.notification_id not in self._in_flight:
                lease_end = await self.ledger.in_flight_until(conn=conn, notification_id=dispatch.notification_id)
        if lease_end is not None:
            # Claimed by a delivery that has not finished: maybe in flight elsewhere, maybe its
            # process died mid-send. Look again when its lease runs out rather than drop it.
            retry = dispatch.model_copy(update={"not_before": lease_end})
            return [Outgoing(self.settings.retry_topic(self.channel.value), retry, key=dispatch.recipient.user_id)]
        if attempts is None:
            return [self._status(dispatch, DeliveryState.duplicate, res, reason="already_processed")]
        try:
            return await self._deliver(dispatch, res)
        finally:
            self._in_flight.discard(dispatch.notification_id)

    async def _deliver(self, dispatch: Dispatch, res: Resources) -> list[Outgoing]:
        started = time.perf_counter()
        try:
            provider_id = await self.deliver(dispatch, res)
        except Suppressed as exc:
            return await self._record(dispatch, res, DeliveryState.suppressed, reason=exc.reason, error=exc.detail)
        except PermanentError as exc:
            self._observe_latency(res, started)
            return await self._record(dispatch, res, DeliveryState.failed, reason=exc.reason, error=exc.detail)
        except TransientError as exc:
            self._observe_latency(res, started)
            return await self._transient(dispatch, res, exc)
        self._observe_latency(res, started)
        if dispatch.event_time is not None:
            lane_label = "critical" if dispatch.critical else "normal"
            res.metrics.end_to_end.labels(self.channel.value, lane_label).observe(
                max((self.clock() - dispatch.event_time).total_seconds(), 0.0)
            )
        log.info("sent %s %s to user %s", self.channel.value, dispatch.event_type, dispatch.recipient.user_id)
        return await self._record(dispatch, res, DeliveryState.sent, provider_message_id=provider_id)

    def _observe_latency(self, res: Resources, started: float) -> None:
        res.metrics.provider_latency.labels(self.channel.value, self.provider_name(res)).observe(time.perf_counter() - started)

    def provider_name(self, res: Resources) -> str:
        return str(res.extra.get("provider", self.channel.value))

    async def _transient(self, dispatch: Dispatch, res: Resources, exc: TransientError) -> list[Outgoing]:
        if dispatch.attempt >= self.max_attempts:
            log.error("giving up on %s after %d attempts: %s", dispatch.notification_id, dispatch.attempt, exc)
            out = await self._record(dispatch, res, DeliveryState.dead_lettered, reason="retries_exhausted", error=str(exc))
            res.metrics.dead_lettered.labels(self.channel.value, "retries_exhausted").inc()
            headers = {"herald-stage": self.channel.value, "herald-reason": "retries_exhausted", "herald-error": str(exc)[:2000]}
            return [*out, Outgoing(self.settings.dlq_topic, dispatch, key=dispatch.recipient.user_id, headers=headers)]
        delay = retry_delay(dispatch.attempt, base=self.retry_base, cap=self.retry_cap, retry_after=exc.retry_after)
        retry = dispatch.model_copy(update={"attempt": dispatch.attempt + 1, "not_before": self.clock() + timedelta(seconds=delay)})
        log.warning("attempt %d of %s failed (%s); retrying in %.1fs", dispatch.attempt, dispatch.notification_id, exc, delay)
        out = await self._record(dispatch, res, DeliveryState.retrying, reason=exc.reason, error=str(exc))
        return [*out, Outgoing(self.settings.retry_topic(self.channel.value), retry, key=dispatch.recipient.user_id)]

    async def _record(
        self,
        dispatch: Dispatch,
        res: Resources,
        state: DeliveryState,
        *,
        reason: str | None = None,
        error: str | None = None,
        provider_message_id: str | None = None,
    ) -> list[Outgoing]:
        async with res.pool.acquire() as conn:
            await self.ledger.finish(
                conn=conn, notification_id=dispatch.notification_id, status=state, provider_message_id=provider_message_id, error=error or reason
            )
        return [self._status(dispatch, state, res, reason=reason, provider_message_id=provider_message_id)]

    def _status(self, dispatch: Dispatch, state: DeliveryState, res: Resources, **fields: Any) -> Outgoing:
        res.metrics.deliveries.labels(self.channel.value, dispatch.event_type, state.value, fields.get("reason") or "").inc()
        status = DeliveryStatus.of(dispatch, state, **fields)
        return Outgoing(self.settings.status_topic, status, key=str(dispatch.notification_id))

