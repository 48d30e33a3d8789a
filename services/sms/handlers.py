"""Kafka subscribers of the sms service: the shared sender pipeline on notify.sms, its priority lane and retry.sms,
and the user erasures."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from faststream.kafka import KafkaRouter

from shared import Channel, Erasure, Resources, SenderPipeline, erasure_router, ledger_export

from . import logic, redaction
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

    async def erase(erasure: Erasure, res: Resources) -> dict[str, int]:
        return await erase_user(erasure, res, delivery=delivery, settings=settings)

    return [*pipeline.routers(), erasure_router(settings, "sms", erase, tombstones="sms")]


async def export(user_id: str, res: Resources) -> dict[str, Any]:
    """What the sms service holds about a user: ledger rows (with what each SMS cost) and a pending verification code's number."""
    async with res.pool.acquire() as conn:
        found = await ledger_export(conn, "sms", user_id)
    codes = res.extra["codes"]
    phone = await codes.redis.hget(codes.key(user_id), "phone")
    ttl = await codes.redis.ttl(codes.key(user_id)) if phone else None
    found["pending_verification"] = {"phone": phone.decode(), "expires_in_seconds": ttl} if phone else None
    return found


async def erase_user(erasure: Erasure, res: Resources, *, delivery: SmsDelivery, settings: Settings) -> dict[str, int]:
    """The sms service's part of an erasure: the ledger keeps price, segments, country and the provider's
    message id (accounting) but no error text; the user's caps, pending code and verification limits go
    from Redis (the number's own limits too, when a pending code still names it)."""
    user_id, prefix = erasure.user_id, settings.sms_redis_prefix
    async with res.pool.acquire() as conn:
        scrubbed = await delivery.ledger.erase(conn=conn, user_id=user_id)
    codes = res.extra["codes"]
    limits = [limit.key for limit in logic.cap_limits(prefix=prefix, user_id=user_id, critical=True, daily_cap=0, critical_cap=0)]
    phone = await codes.redis.hget(codes.key(user_id), "phone")
    number = phone.decode() if phone else ""  # unknown: the number's own limits expire on their own (docs/data.md)
    limits += [limit.key for limit in logic.verification_limits(prefix=prefix, user_id=user_id, phone=number, max_requests=1, window=1, cooldown=1)]
    removed = await res.redis_for("ratelimit").delete(*dict.fromkeys(limits))
    removed += await codes.redis.delete(codes.key(user_id), *([codes.failures_key(number)] if number else []))
    erased = {"ledger_errors": scrubbed, "redis_keys": int(removed)}
    if settings.twilio_erasure != "keep":
        erased.update(await erase_at_twilio(user_id, res, settings=settings))
    return erased


async def erase_at_twilio(user_id: str, res: Resources, *, settings: Settings) -> dict[str, int]:
    """Queue the user's messages at Twilio for deletion (or redaction), by the ids the ledger kept, and try
    them now for a bounded time; what Twilio does not take now is left to the background (``redaction``)."""
    async with res.pool.acquire() as conn:
        await redaction.queue(conn, user_id=user_id, how=settings.twilio_erasure)
    done = await redaction.work(
        res, user_id=user_id, budget=settings.twilio_erasure_budget_seconds, pause=settings.twilio_erasure_retry_seconds,
        give_up=timedelta(days=settings.twilio_erasure_give_up_days), counted=False,
    )
    async with res.pool.acquire() as conn:
        pending = await conn.fetchval("SELECT count(*) FROM sms.provider_erasures WHERE user_id = $1", user_id)
    skip = "twilio_redacted" if settings.twilio_erasure == "delete" else "twilio_deleted"
    return {**{k: v for k, v in done.items() if k != skip}, "twilio_pending": int(pending)}
