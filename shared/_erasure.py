"""Erasure of a user in every service: the message each one reads, the report each one answers with.

The router turns ``user.deleted`` into one :class:`Erasure` on the erasure topic. Every service
consumes it in a consumer group of its own, records the user's tombstone where it keeps one
(a sender then finishes any later dispatch to that user as ``suppressed`` / ``user_deleted``),
erases what it holds about the user in its own schema and Redis keys, and says so with an
:class:`ErasureReport` on the erasure status topic, which the router keeps for
``GET /v1/erasures/{user_id}``. Erasing is idempotent: a redelivered erasure finds nothing
more to remove and reports again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage
from pydantic import BaseModel, Field, ValidationError

from ._app import KafkaResources, OutageBackoff, Resources
from ._exceptions import describe, is_outage
from ._kafka import Outgoing, dead_letter, publish_many, subscriber_options
from ._models import NOTIFICATION_NAMESPACE, utcnow
from ._settings import HeraldSettings

log = logging.getLogger(__name__)


class Erasure(BaseModel):
    """Erase everything Herald holds about one user (router → every service, on the erasure topic)."""

    erasure_id: uuid.UUID = Field(description="The same for every copy of one erasure request")
    user_id: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")
    event_id: str = Field(description="The user.deleted event that asked for it")
    requested_at: datetime = Field(description="The user.deleted event's time")

    @staticmethod
    def id_for(source: str, event_id: str) -> uuid.UUID:
        return uuid.uuid5(NOTIFICATION_NAMESPACE, f"erasure|{source}|{event_id}")


class ErasureReport(BaseModel):
    """One service has erased a user (every service → router, on the erasure status topic)."""

    erasure_id: uuid.UUID
    user_id: str
    service: str
    erased: dict[str, int] = Field(default_factory=dict, description="What this copy removed or cleared, by store: rows or keys")
    at: datetime = Field(default_factory=utcnow)


#: How long a fence waits for the ledger's lock, and how often it tries before the batch is handed back.
FENCE_LOCK_TIMEOUT_MS = 1000
FENCE_ATTEMPTS = 4

#: Erasures handled per batch: each may wait for deliveries in flight and call a provider, and a batch
#: must finish within the consumer's poll interval.
ERASURE_BATCH = 5

#: A service's own erasure: removes what it holds about the user; returns counts by store.
Erase = Callable[[Erasure, Resources], Awaitable[dict[str, int]]]


async def record_tombstone(*, conn: object, schema: str, erasure: Erasure) -> None:
    """Remember in ``schema`` that the user is erased (kept: it is what refuses later sends)."""
    await conn.execute(  # type: ignore[attr-defined]
        f"INSERT INTO {schema}.erasures (user_id, erasure_id, requested_at) VALUES ($1, $2, $3) ON CONFLICT (user_id) DO NOTHING",
        erasure.user_id, erasure.erasure_id, erasure.requested_at,
    )


async def fence(*, conn: Any, schema: str, erasure: Erasure, lease: timedelta, timeout: float) -> int:
    """Record ``erasure``'s tombstone in a sender's ``schema`` so that no delivery to its user starts after
    it, then wait (up to ``timeout`` seconds) for those in flight; how many were still claimed when it gave up.

    The tombstone goes in while the ledger is locked against writes (SHARE mode, held for one insert):
    every claim statement already running commits first, and every later one reads the tombstone (a
    claim reads it in its own statement, ``Ledger.claim``). A claim made before it is then waited for
    while its lease is live, so what the erasure removes next is not written again by a send that was
    under way, and the provider ids it reads are all there.
    """
    for attempt in range(FENCE_ATTEMPTS):
        try:
            async with conn.transaction():
                if await conn.fetchval(f"SELECT true FROM {schema}.erasures WHERE user_id = $1", erasure.user_id):
                    break  # recorded before (a redelivered erasure): later claims read it already
                # Not longer than this behind other holders (a vacuum, an index build): the channel's writes queue behind us.
                await conn.execute(f"SET LOCAL lock_timeout = '{FENCE_LOCK_TIMEOUT_MS}ms'")
                await conn.execute(f"LOCK TABLE {schema}.ledger IN SHARE MODE")
                await record_tombstone(conn=conn, schema=schema, erasure=erasure)
            break
        except asyncpg.LockNotAvailableError:
            log.warning("erasure of user %s: the %s ledger is busy (attempt %d); trying again", erasure.user_id, schema, attempt + 1)
            await asyncio.sleep(0.5 * 2**attempt)
    else:
        raise TimeoutError(f"the {schema} ledger stayed locked by others; the erasure of user {erasure.user_id} is tried again")
    deadline = time.monotonic() + timeout
    while True:
        live = await conn.fetchval(
            f"SELECT count(*) FROM {schema}.ledger WHERE user_id = $1 AND status = 'claimed' AND claimed_at > now() - $2::interval",
            erasure.user_id,
            lease,
        )
        if not live or time.monotonic() >= deadline:
            return int(live)
        await asyncio.sleep(0.1)


async def erased_users(*, conn: object, schema: str, user_ids: Iterable[str]) -> frozenset[str]:
    """Which of ``user_ids`` have a tombstone in ``schema`` (one indexed lookup for a whole batch)."""
    ids = list(dict.fromkeys(user_ids))
    if not ids:
        return frozenset()
    rows = await conn.fetch(f"SELECT user_id FROM {schema}.erasures WHERE user_id = ANY($1::text[])", ids)  # type: ignore[attr-defined]
    return frozenset(r["user_id"] for r in rows)


def erasure_router(settings: HeraldSettings, service: str, erase: Erase, *, tombstones: str | None = None) -> KafkaRouter:
    """The subscriber through which ``service`` applies erasures: ``tombstones`` names the sender schema whose
    ``erasures`` table it records them in first (:func:`fence`), then ``erase`` runs and the report is published."""
    router = KafkaRouter()
    outage = OutageBackoff(f"{service}-erasure", max_pause=settings.outage_backoff_max_seconds)
    lease = timedelta(seconds=settings.delivery_lease_seconds)

    async def one(record: ConsumerRecord, res: Resources) -> list[Outgoing]:
        try:
            erasure = Erasure.model_validate_json(record.value or b"")
        except ValidationError as exc:
            res.metrics.dead_lettered.labels(f"{service}-erasure", "invalid_erasure").inc()
            log.warning("invalid erasure at %s/%s@%s", record.topic, record.partition, record.offset)
            return [dead_letter(settings, record, stage=f"{service}-erasure", reason="invalid_erasure", error=str(exc))]
        try:
            if tombstones is not None:
                async with res.pool.acquire() as conn:
                    live = await fence(conn=conn, schema=tombstones, erasure=erasure, lease=lease, timeout=lease.total_seconds() + 5)
                if live:
                    log.warning("erasure of user %s goes on with %d deliveries still claimed past their lease", erasure.user_id, live)
            erased = await erase(erasure, res)
        except Exception as exc:
            if is_outage(exc):
                raise  # the batch is handed back and tried again
            log.error("erasure %s of user %s failed: %s", erasure.erasure_id, erasure.user_id, describe(exc))
            res.metrics.erasures.labels("dead_lettered").inc()
            res.metrics.dead_lettered.labels(f"{service}-erasure", "erasure_failed").inc()
            return [dead_letter(settings, record, stage=f"{service}-erasure", reason="erasure_failed", error=describe(exc))]
        res.metrics.erasures.labels("erased").inc()
        for store, count in erased.items():
            if not store.endswith("_pending"):  # left for later (e.g. a provider's part): counted when it is done
                res.metrics.erased.labels(store).inc(count)
        log.info("erased user %s (%s)", erasure.user_id, ", ".join(f"{k}: {v}" for k, v in erased.items()) or "nothing held")
        report = ErasureReport(erasure_id=erasure.erasure_id, user_id=erasure.user_id, service=service, erased=erased)
        return [Outgoing(settings.erasure_status_topic, report, key=erasure.user_id)]

    async def on_erasure(_: None, msg: KafkaMessage, res: KafkaResources) -> None:
        async with outage.watching(res):
            out = [m for record in msg.raw_message for m in await one(record, res)]
            await publish_many(res.broker, out)

    on_erasure.__name__ = f"on_{service}_erasure"
    router.subscriber(
        settings.erasure_topic,
        **{**subscriber_options(settings, f"{service}-erasure", background=True), "max_records": ERASURE_BATCH},
        title=f"{service}:erasure",
        description="Erase what this service holds about a user",
    )(on_erasure)
    router.publisher(settings.erasure_status_topic, title=f"{service}:writes:erasure-status", schema=ErasureReport, description="This service erased a user")
    return router
