"""Taking events in: claim ``source`` + ``id``, publish, and give the claim back if Kafka did not take them.

A claim is ``pending`` while its events are being published (for a short time,
so a crashed instance does not hold it for long) and ``done`` once Kafka has
acknowledged them (for the dedupe TTL). The same event offered again is a
``duplicate`` when done, and ``in_flight`` (409, retry shortly) while pending:
answering "duplicate" then would be a promise that the first publication may
still break.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from enum import StrEnum

from redis.exceptions import RedisError

from shared import CloudEvent, Outgoing, Resources, publish_many

from . import logic

log = logging.getLogger(__name__)

PENDING, DONE = b"pending", b"done"
# Claim every key that is free; report what holds the others.
_CLAIM = """
local held = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, 'pending', 'NX', 'EX', ARGV[1]) then
    held[i] = 'claimed'
  else
    held[i] = redis.call('GET', key) or 'done'
  end
end
return held
"""


class Outcome(StrEnum):
    accepted = "accepted"
    duplicate = "duplicate"
    in_flight = "in_flight"


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


def outcomes_of(holders: Sequence[bytes | str], keys: Sequence[str]) -> list[Outcome]:
    """What each event is, given what holds its key: an event repeated within one request is a duplicate of the first."""
    outcomes, claimed_here = [], set()
    for holder, key in zip(holders, keys, strict=True):
        holder = holder.encode() if isinstance(holder, str) else holder
        if holder == b"claimed":
            claimed_here.add(key)
            outcomes.append(Outcome.accepted)
        elif key in claimed_here or holder != PENDING:
            outcomes.append(Outcome.duplicate)
        else:
            outcomes.append(Outcome.in_flight)
    return outcomes


async def take(res: Resources, events: Sequence[CloudEvent], *, producer: str) -> list[Outcome]:
    """Publish the events not seen before and wait for Kafka's acknowledgement; raises ``Refusal(503)`` having claimed nothing."""
    settings = res.settings
    keys = [logic.dedupe_key(settings.kafka_topic_namespace, e) for e in events]
    pending_for = math.ceil(settings.publish_wait_seconds) + 5  # type: ignore[attr-defined]
    try:
        holders = await res.redis_for("dedupe").register_script(_CLAIM)(keys=keys, args=[pending_for])
    except RedisError as exc:
        log.error("dedupe store unavailable: %s", exc)
        raise _unavailable(res, "the dedupe store") from None
    outcomes = outcomes_of(holders, keys)
    fresh = [(e, k) for e, k, o in zip(events, keys, outcomes, strict=True) if o is Outcome.accepted]
    try:
        async with asyncio.timeout(settings.publish_wait_seconds):  # type: ignore[attr-defined]
            await publish_many(res.broker, [_outgoing(res, e, producer) for e, _ in fresh])
    except BaseException as exc:  # timeout, Kafka errors and cancellation alike: give the claims back
        await _settle(res, [k for _, k in fresh], done=False)
        if isinstance(exc, Exception):
            _count(res, producer, "unavailable", len(events))
            log.error("Kafka did not acknowledge %d event(s): %r", len(fresh), exc)
            raise _unavailable(res, "the event log") from None
        raise
    await _settle(res, [k for _, k in fresh], done=True)
    for outcome in Outcome:
        _count(res, producer, outcome, sum(1 for o in outcomes if o is outcome))
    return outcomes


def _count(res: Resources, producer: str, outcome: str, n: int) -> None:
    counter = res.extra.get("taken")
    if counter is not None and n:
        counter.labels(producer=producer, outcome=str(outcome)).inc(n)


async def _settle(res: Resources, keys: list[str], *, done: bool) -> None:
    """Mark claims done for the dedupe TTL, or give them back."""
    if not keys:
        return
    try:
        if done:
            async with res.redis_for("dedupe").pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(key, DONE, ex=res.settings.dedupe_ttl_seconds)  # type: ignore[attr-defined]
                await pipe.execute()
        else:
            await res.redis_for("dedupe").delete(*keys)
    except RedisError as exc:  # the pending claims expire on their own within seconds
        log.error("could not %s %d dedupe claim(s): %s", "confirm" if done else "release", len(keys), exc)
