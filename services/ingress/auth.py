"""Who is publishing: producers' API keys (hashed in PostgreSQL) or service keys (``HERALD_API_KEYS``), rate-limited per key."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import Depends, HTTPException, Request, status
from redis.exceptions import RedisError

from shared import AppResources, Scope
from shared._keys import find_service_key

from . import logic, repo

log = logging.getLogger(__name__)

# Fixed one-minute window, checked and counted atomically: returns the count, or -PTTL when the window is full.
_RATE_LIMIT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local limit = tonumber(ARGV[1])
if current >= limit then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then ttl = tonumber(ARGV[2]) end
  return -ttl
end
current = redis.call('INCR', KEYS[1])
if current == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return current
"""
WINDOW_MS = 60_000


@dataclass(frozen=True)
class Producer:
    """An authenticated caller of ``POST /v1/events``."""

    name: str
    key_id: str
    event_types: tuple[str, ...]
    rate_per_minute: int  # 0: unlimited
    sources: tuple[str, ...] | None = None  # the CloudEvents sources it may publish; None: any
    may_publish_at_all: bool = True  # False: a service key without the publish scope

    def may_publish(self, event_type: str) -> bool:
        return logic.type_allowed(event_type, self.event_types)

    def may_publish_from(self, source: str) -> bool:
        return self.sources is None or source in self.sources


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": "ApiKey"})


def _unavailable(res: AppResources, what: str) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail=f"{what} is unavailable; retry later",
        headers={"Retry-After": str(res.settings.retry_after_seconds)},  # type: ignore[attr-defined]
    )


async def identify(res: AppResources, key: str) -> Producer | None:
    """The producer a key belongs to, or None."""
    settings = res.settings
    service = find_service_key(settings.service_keys, key)
    if service is not None:
        rate = settings.service_key_rate_per_minute  # type: ignore[attr-defined]
        return Producer(service.name, f"service:{service.name}", ("*",), rate, service.sources, service.allows(Scope.publish))
    if not key.startswith(logic.KEY_PREFIX):
        return None
    try:
        row = await repo.active_key(conn=res.pool, key_hash=logic.hash_key(key))
    except (asyncpg.PostgresError, OSError) as exc:
        log.error("key store unavailable: %s", exc)
        raise _unavailable(res, "the key store") from None
    if row is None:
        return None
    return Producer(row["producer"], str(row["id"]), tuple(row["event_types"]), row["rate_per_minute"])


async def within_rate(res: AppResources, producer: Producer) -> int:
    """0 when the request may go ahead, else the milliseconds until the key's window reopens."""
    if producer.rate_per_minute <= 0:
        return 0
    script = res.redis_for("ratelimit").register_script(_RATE_LIMIT)
    key = f"{res.settings.kafka_topic_namespace}ingress:rate:{producer.key_id}"
    result = int(await script(keys=[key], args=[producer.rate_per_minute, WINDOW_MS]))
    return -result if result <= 0 else 0


async def current_producer(request: Request, res: AppResources) -> Producer:
    """FastAPI dependency: the authenticated producer, within its rate limit (401, 429 otherwise)."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "apikey" or not key.strip():
        raise _unauthorized("send 'Authorization: ApiKey <key>'")
    producer = await identify(res, key.strip())
    if producer is None:
        raise _unauthorized("unknown, revoked or expired API key")
    if not producer.may_publish_at_all:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"the key {producer.name!r} may not publish events: it needs the scope 'publish'")
    try:
        wait_ms = await within_rate(res, producer)
    except RedisError as exc:
        log.error("rate limiter unavailable: %s", exc)
        raise _unavailable(res, "the rate limiter") from None
    if wait_ms:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"key rate limit of {producer.rate_per_minute} requests per minute reached",
            headers={"Retry-After": str(logic.retry_after(wait_ms))},
        )
    return producer


CurrentProducer = Annotated[Producer, Depends(current_producer)]
