"""Taking events in: remember ``source`` + ``id``, publish, and forget them again if Kafka did not take them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from enum import StrEnum

from redis.exceptions import RedisError

from shared import CloudEvent, Outgoing, Resources, publish_many

from . import logic

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    accepted = "accepted"
    duplicate = "duplicate"


def _outgoing(res: Resources, event: CloudEvent, producer: str) -> Outgoing:
    return Outgoing(
        res.settings.domain_topic(event.type),
        event.model_dump_json(exclude_none=True).encode(),
        key=logic.partition_key(event),
        headers={"content-type": logic.STRUCTURED, "herald-producer": producer},
    )


def _unavailable(res: Resources, what: str) -> logic.Refusal:
    return logic.Refusal(
        503, f"{what} is unavailable; nothing was accepted, retry later", retry_after=res.settings.retry_after_seconds  # type: ignore[attr-defined]
    )


async def take(res: Resources, events: Sequence[CloudEvent], *, producer: str) -> list[Outcome]:
    """Publish the events not seen before and wait for Kafka's acknowledgement; raises ``Refusal(503)`` having claimed nothing."""
    settings = res.settings
    keys = [logic.dedupe_key(settings.kafka_topic_namespace, e) for e in events]
    try:
        async with res.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, producer, nx=True, ex=settings.dedupe_ttl_seconds)  # type: ignore[attr-defined]
            claimed = [bool(ok) for ok in await pipe.execute()]
    except RedisError as exc:
        log.error("dedupe store unavailable: %s", exc)
        raise _unavailable(res, "the dedupe store") from None
    fresh = [(e, k) for e, k, ok in zip(events, keys, claimed, strict=True) if ok]
    try:
        async with asyncio.timeout(settings.publish_timeout_seconds):  # type: ignore[attr-defined]
            await publish_many(res.broker, [_outgoing(res, e, producer) for e, _ in fresh])
    except BaseException as exc:  # timeout, Kafka errors and cancellation alike: give the claims back
        if fresh:
            await _release(res, [k for _, k in fresh])
        if isinstance(exc, Exception):
            _count(res, producer, "unavailable", len(events))
            log.error("Kafka did not acknowledge %d event(s): %r", len(fresh), exc)
            raise _unavailable(res, "the event log") from None
        raise
    _count(res, producer, Outcome.accepted, len(fresh))
    _count(res, producer, Outcome.duplicate, len(events) - len(fresh))
    return [Outcome.accepted if ok else Outcome.duplicate for ok in claimed]


def _count(res: Resources, producer: str, outcome: str, n: int) -> None:
    counter = res.extra.get("taken")
    if counter is not None and n:
        counter.labels(producer=producer, outcome=str(outcome)).inc(n)


async def _release(res: Resources, keys: list[str]) -> None:
    try:
        await res.redis.delete(*keys)
    except RedisError as exc:  # the events would be refused as duplicates until the TTL ends
        log.error("could not release %d dedupe claim(s): %s", len(keys), exc)
