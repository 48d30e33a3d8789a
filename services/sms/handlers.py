"""Kafka subscribers of the sms service: the shared sender pipeline on notify.sms, its priority lane and retry.sms."""

from __future__ import annotations

from faststream.kafka import KafkaRouter

from shared import Channel, SenderPipeline

from .delivery import SmsDelivery
from .settings import Settings


def build_routers(settings: Settings, delivery: SmsDelivery) -> list[KafkaRouter]:
    pipeline = SenderPipeline(
        settings,
        Channel.sms,
        delivery.deliver,
        ledger=delivery.ledger,
        max_attempts=settings.sms_max_attempts,
        retry_base_seconds=settings.sms_retry_base_seconds,
        retry_cap_seconds=settings.sms_retry_cap_seconds,
    )
    return pipeline.routers()
