"""Kafka subscribers of the router: domain events in, dispatches out; sender outcomes into the trace."""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import ConsumerRecord
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from shared import DeliveryStatus, Erasure, ErasureReport, KafkaResources, Outgoing, OutageBackoff, Resources, dead_letter, publish_many, subscriber_options

from . import repo, schedules
from .catalogue import Catalogue
from .directory import recipients_of
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
        async with routing_outage.watching(res):  # PostgreSQL or Redis down: wait, then hand the batch back (not committed)
            await batches.handle(list(msg.raw_message), res)

    @router.subscriber(settings.status_topic, **subscriber_options(settings, "router-status", background=True), title="router:status")
    async def on_delivery_statuses(_: None, msg: KafkaMessage, res: KafkaResources) -> None:
        rows, dead = statuses_of(list(msg.raw_message), res, settings)
        async with status_outage.watching(res):
            if rows:
                async with res.pool.acquire() as conn:
                    await repo.record_deliveries(conn=conn, rows=rows)
            await publish_many(res.broker, dead)

    erasure_outage = OutageBackoff("router-erasure-status", max_pause=settings.outage_backoff_max_seconds)

    @router.subscriber(
        settings.erasure_status_topic, **subscriber_options(settings, "router-erasure-status", background=True), title="router:erasure-status"
    )
    async def on_erasure_reports(_: None, msg: KafkaMessage, res: KafkaResources) -> None:
        reports: list[dict[str, Any]] = []
        dead: list[Outgoing] = []
        for record in msg.raw_message:
            try:
                reports.append(ErasureReport.model_validate_json(record.value or b"").model_dump())
            except ValidationError as exc:
                res.metrics.dead_lettered.labels("router-erasure-status", "invalid_erasure_report").inc()
                dead.append(dead_letter(settings, record, stage="router-erasure-status", reason="invalid_erasure_report", error=str(exc)))
        async with erasure_outage.watching(res):
            if reports:
                async with res.pool.acquire() as conn:
                    await repo.record_erasure_reports(conn=conn, reports=reports)
            await publish_many(res.broker, dead)

    return router


async def erase(erasure: Erasure, res: Resources) -> dict[str, int]:
    """The router's part of an erasure: the directory row was cleared when ``user.deleted`` was applied
    (its tombstone stays); here the decision trace and delivery rows go, the user's schedules, and the cached profile."""
    async with res.pool.acquire() as conn:
        erased = await repo.erase_trace(conn=conn, user_id=erasure.user_id)
        erased["schedules"] = await schedules.erase_user(conn, user_id=erasure.user_id)
    await recipients_of(res).cache.invalidate(erasure.user_id)
    return erased


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
