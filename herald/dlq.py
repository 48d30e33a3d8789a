"""Replaying the dead-letter topic once the cause is fixed."""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from shared import Channel, Dispatch, HeraldSettings, header, utcnow
from shared._kafka import DLQ_REASON, DLQ_STAGE, DLQ_TOPIC, REPLAY_HEADER, kafka_options

log = logging.getLogger(__name__)


def destination(settings: HeraldSettings, stage: str, value: bytes, original_topic: str | None) -> tuple[str, bytes] | None:
    """Where a dead letter goes back to, and with which bytes; None if it cannot be replayed."""
    if original_topic:
        return original_topic, value
    if stage in Channel.__members__:
        try:
            dispatch = Dispatch.model_validate_json(value)
        except ValidationError:
            return None
        fresh = dispatch.model_copy(update={"attempt": 1, "not_before": None, "retry_from": utcnow()})  # a new retry window
        return settings.notify_topic(dispatch.channel.value, critical=dispatch.critical), fresh.model_dump_json().encode()
    return None


async def replay(settings: HeraldSettings, *, stage: str, reason: str | None = None, dry_run: bool = False) -> int:
    """Re-publish the dead letters of ``stage`` (and ``reason``) written since the last replay of that stage."""
    group = settings.group_id(f"dlq-replay-{stage}")
    consumer = AIOKafkaConsumer(
        **kafka_options(settings),
        group_id=None if dry_run else group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(**kafka_options(settings), acks="all", enable_idempotence=settings.kafka_enable_idempotence)
    await consumer.start()
    await producer.start()
    replayed = 0
    try:
        partitions = [TopicPartition(settings.dlq_topic, p) for p in (consumer.partitions_for_topic(settings.dlq_topic) or ())]
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - first look-up of a topic
            partitions = [TopicPartition(settings.dlq_topic, p) for p in (consumer.partitions_for_topic(settings.dlq_topic) or ())]
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        for tp in partitions:
            committed = None if dry_run else await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
        remaining = {tp for tp in partitions if end[tp] > 0}
        while remaining:
            batches = await consumer.getmany(timeout_ms=1000)
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= end[tp]:
                        continue
                    if header(record, DLQ_STAGE) != stage or (reason and header(record, DLQ_REASON) != reason):
                        continue
                    target = destination(settings, stage, record.value or b"", header(record, DLQ_TOPIC))
                    if target is None:
                        log.warning("cannot replay %s@%s: no destination", tp, record.offset)
                        continue
                    replayed += 1
                    if not dry_run:
                        headers = [(k, v) for k, v in (record.headers or ()) if not k.startswith("herald-")]
                        headers.append((REPLAY_HEADER, f"{tp.partition}@{record.offset}".encode()))
                        await producer.send_and_wait(target[0], target[1], key=record.key, headers=headers)
        if not dry_run:
            await consumer.commit({tp: end[tp] for tp in partitions})
    finally:
        await consumer.stop()
        await producer.stop()
    return replayed
