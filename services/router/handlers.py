"""Kafka subscribers of the router: domain events in, dispatches out; sender outcomes into the trace."""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import ConsumerRecord
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from shared import DeliveryStatus, KafkaResources, Outgoing, OutageBackoff, Resources, dead_letter, is_outage, publish_many, subscriber_options

from . import repo
from .catalogue import Catalogue
from .routing import BatchRouter
from .settings import Settings

log = logging.getLogger(__name__)


def build_router(settings: Settings, catalogue: Catalogue) -> KafkaRouter:
    router = KafkaRouter()
    batches = BatchRouter(settings, catalogue)
    routing_outage = OutageBackoff("router-domain", max_pause=settings.outage_backoff_max_seconds)
    status_outage = OutageBackoff("router-status", max_pause=settings.outage_backoff_max_seconds)

    @router.subscriber(
        pattern=settings.domain_pattern(),
        **subscriber_options(settings, "router"),
        title="router:domain",
    )
    async def on_domain_events(_: None, msg: KafkaMessage, res: KafkaResources) -> None:
        try:
            await batches.handle(list(msg.raw_message), res)
        except Exception as exc:
            if is_outage(exc):  # PostgreSQL or Redis down: wait, then hand the batch back (not committed)
                await routing_outage.failed(res, exc)
            raise
        routing_outage.ok(res)

    @router.subscriber(settings.status_topic, **subscriber_options(settings, "router-status", background=True), title="router:status")
    async def on_delivery_statuses(_: None, msg: KafkaMessage, res: KafkaResources) -> None:
        rows, dead = statuses_of(list(msg.raw_message), res, settings)
        try:
            if rows:
                async with res.pool.acquire() as conn:
                    await repo.record_deliveries(conn=conn, rows=rows)
            await publish_many(res.broker, dead)
        except Exception as exc:
            if is_outage(exc):
                await status_outage.failed(res, exc)
            raise
        status_outage.ok(res)

    return router


def statuses_of(records: list[ConsumerRecord], res: Resources, settings: Settings) -> tuple[list[dict[str, Any]], list[Outgoing]]:
    """The trace rows of valid status records, and the dead letters of invalid ones."""
    rows: list[dict[str, Any]] = []
    dead: list[Outgoing] = []
    for record in records:
        try:
            if b"\\u0000" in (record.value or b""):
                raise ValueError("a status may not contain NUL characters")
            status = DeliveryStatus.model_validate_json(record.value or b"")
        except (ValidationError, ValueError) as exc:
            res.metrics.dead_lettered.labels("router-status", "invalid_status").inc()
            log.warning("invalid status at %s/%s@%s", record.topic, record.partition, record.offset)
            dead.append(dead_letter(settings, record, stage="router-status", reason="invalid_status", error=str(exc)))
            continue
        rows.append(
            {
                "notification_id": status.notification_id,
                "status": status.status.value,
                "attempt": status.attempt,
                "reason": status.reason,
                "provider_message_id": status.provider_message_id,
                "event_id": status.event_id,
                "user_id": status.user_id,
                "channel": status.channel.value,
                "at": status.at,
            }
        )
    return rows, dead
