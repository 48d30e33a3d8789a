"""Exact rate limits in Redis, shared by every instance of a service.

Each limit is a sliding-window log: a sorted set of the grants made in the
last ``window`` seconds, scored by Redis' own clock. One Lua script checks
every limit of a request and, only if all of them have room, records the
grant in each of them, so a request takes all its slots or none, and the
count is exact however many instances ask at once. A grant can be handed
back (``release``) when what it paid for did not happen (the send failed),
which frees exactly its own slots.

Under Redis Cluster all keys of one ``acquire`` must share a hash slot: put
the same ``{hash tag}`` in them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request, status
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local member = ARGV[1]
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  if limit >= 0 then
    local used = redis.call('ZCARD', KEYS[i])
    if used >= limit then
      local wait = window
      if used > 0 then
        local freeing = redis.call('ZRANGE', KEYS[i], used - limit, used - limit, 'WITHSCORES')
        if freeing[2] then wait = tonumber(freeing[2]) + window - now end
      end
      return {0, i, wait}
    end
  end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now, member)
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2 * i + 1]))
end
return {1, 0, 0}
"""


@dataclass(frozen=True)
class Limit:
    """At most ``limit`` grants on ``key`` in any ``window`` seconds; ``limit=None`` counts without refusing."""

    key: str
    limit: int | None
    window: float


@dataclass(frozen=True)
class Grant:
    """The answer to ``acquire``: allowed (holding a slot in each limit) or refused by ``refused``."""

    allowed: bool
    token: str
    keys: tuple[str, ...] = ()
    refused: Limit | None = None
    retry_after: float = 0.0

    def __bool__(self) -> bool:
        return self.allowed


class RateLimiter:
    """Atomic multi-limit acquire and release on one Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._acquire = redis.register_script(_ACQUIRE)

    async def acquire(self, *limits: Limit) -> Grant:
        """Take one slot in every limit, or none if any is full."""
        token = uuid.uuid4().hex
        if not limits:
            return Grant(True, token)
        args: list[str | int] = [token]
        for lim in limits:
            args += [-1 if lim.limit is None else lim.limit, max(1, int(lim.window * 1000))]
        allowed, index, wait_ms = await self._acquire(keys=[lim.key for lim in limits], args=args)
        if int(allowed):
            return Grant(True, token, keys=tuple(lim.key for lim in limits))
        return Grant(False, token, refused=limits[int(index) - 1], retry_after=max(int(wait_ms), 0) / 1000)

    async def release(self, grant: Grant) -> None:
        """Hand back the slots of ``grant`` (a no-op for a refused grant, and when repeated)."""
        if not grant.allowed or not grant.keys:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in grant.keys:
                pipe.zrem(key, grant.token)
            await pipe.execute()

    async def wait(self, *limits: Limit, timeout: float) -> Grant:
        """Acquire, waiting for room for at most ``timeout`` seconds (a throttle rather than a refusal)."""
        deadline = time.monotonic() + timeout
        while True:
            grant = await self.acquire(*limits)
            left = deadline - time.monotonic()
            if grant or left <= 0:
                return grant
            await asyncio.sleep(min(max(grant.retry_after, 0.005), left))

    async def used(self, limit: Limit) -> int:
        """How many grants ``limit`` holds now (for operators and tests)."""
        seconds, micros = await self.redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        await self.redis.zremrangebyscore(limit.key, "-inf", now_ms - int(limit.window * 1000))
        return int(await self.redis.zcard(limit.key))


# ---------------------------------------------------------------------------- public endpoints

PUBLIC_GROUPS = ("webhooks", "unsubscribe", "stream", "verification")


def _limiter(res: Any) -> RateLimiter:
    limiter = res.extra.get("public_limiter")
    if limiter is None:
        limiter = res.extra["public_limiter"] = RateLimiter(res.redis_for("ratelimit"))
    return limiter


def public_user_key(res: Any, group: str, user_id: str) -> str:
    """The Redis key of ``user_id``'s requests to the ``group`` endpoints (``per_user``)."""
    return _public_key(res, group, f"user:{user_id}")


def _public_key(res: Any, group: str, who: str) -> str:
    return f"{res.settings.control_prefix()}public:{group}:{who}"


async def _take(res: Any, group: str, who: str, per_minute: int, what: str) -> None:
    if per_minute <= 0:
        return
    key = _public_key(res, group, who)
    try:
        grant = await _limiter(res).acquire(Limit(key, per_minute, 60))
    except RedisError as exc:  # the endpoint stays available; the limit is back with Redis
        log.warning("rate limit of %s not checked (Redis: %s)", group, exc)
        return
    if not grant:
        wait = max(1, math.ceil(grant.retry_after))
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, detail=f"too many requests {what}; retry in {wait}s", headers={"Retry-After": str(wait)}
        )


def per_address(group: str) -> Callable[[Request], Awaitable[None]]:
    """FastAPI dependency: at most ``HERALD_PUBLIC_RATE_LIMITS[group]`` requests a minute from one client address (429)."""

    async def dependency(request: Request) -> None:
        res = request.app.state.resources
        address = request.client.host if request.client else "unknown"
        await _take(res, group, f"address:{address}", res.settings.public_rate_table().get(group, 0), "from this address")

    dependency.__name__ = f"per_address_{group}"
    dependency.herald_rate_group = group  # type: ignore[attr-defined]  # documented as 429 (shared/_openapi.py)
    return dependency


async def per_user(res: Any, group: str, user_id: str) -> None:
    """At most ``HERALD_PUBLIC_USER_RATE_LIMITS[group]`` requests a minute for one user (429)."""
    await _take(res, group, f"user:{user_id}", res.settings.public_user_rate_table().get(group, 0), "for this user")
