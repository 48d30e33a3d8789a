"""Kafka subscribers of the router: domain events in, dispatches out."""

from __future__ import annotations

import logging

from aiokafka import ConsumerRecord
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage

from shared import InvalidMessage, KafkaResources, Outgoing, Resources, dead_letter, event_id_var, publish_many, subscriber_options

from . import logic
from .catalogue import Catalogue
from .settings import Settings

log = logging.getLogger(__name__)


def build_router(settings: Settings, catalogue: Catalogue) -> KafkaRouter:
    router = KafkaRouter()

    @router.subscriber(pattern=settings.domain_pattern(), **subscriber_options(settings, "router"), title="router:domain")
    async def on_domain_events(_: None, msg: KafkaMessage, res: KafkaResources) -> None:
        outgoing: list[Outgoing] = []
        for record in msg.raw_message:
            outgoing += route_record(record, res, settings, catalogue)
        await publish_many(res.broker, outgoing)

    return router


def route_record(record: ConsumerRecord, res: Resources, settings: Settings, catalogue: Catalogue) -> list[Outgoing]:
    """Turn one domain-event record into the messages it causes (dispatches, or a dead letter)."""
    try:
        event = logic.parse_event(record.value)
        event_id_var.set(event.id)
        notifications = catalogue.get(event.type)
        if notifications is None:
            res.metrics.events.labels("unknown", "skipped").inc()
            log.info("skipped event of unknown type %r", event.type)
            return []
        data = logic.validate_data(event)
        out: list[Outgoing] = []
        for notification in notifications:
            users = logic.recipients_of(notification, data) or []
            for user_id in users:
                contact = logic.Contact(user_id=user_id)
                for channel in notification.channels:
                    decision = logic.decide(event, data, notification, contact, channel, frontend_url=settings.frontend_url)
                    lane = "critical" if notification.critical else "normal"
                    res.metrics.dispatches.labels(channel.value, lane, "routed" if decision.routed else "suppressed", "" if decision.routed else decision.reason).inc()
                    if decision.dispatch is not None:
                        topic = settings.notify_topic(channel.value, critical=notification.critical)
                        out.append(Outgoing(topic, decision.dispatch, key=user_id))
        res.metrics.events.labels(event.type, "routed").inc()
        return out
    except InvalidMessage as exc:
        res.metrics.events.labels("invalid", "dead_lettered").inc()
        res.metrics.dead_lettered.labels("router", exc.reason).inc()
        log.warning("dead-lettered %s/%s@%s: %s", record.topic, record.partition, record.offset, exc)
        return [dead_letter(settings, record, stage="router", reason=exc.reason, error=exc.detail)]
