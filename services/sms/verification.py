"""Pending phone-verification codes in Redis: stored only hashed, with a TTL and a count of tries."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from . import logic

# Count a try atomically, but only for a code that exists (HINCRBY alone would create one).
_TRY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local tries = redis.call('HINCRBY', KEYS[1], 'tries', 1)
return {redis.call('HGET', KEYS[1], 'phone'), redis.call('HGET', KEYS[1], 'hash'), tries}
"""
# Remove a code only if it is still the one we know (a newer code is left alone).
_FORGET = """
if redis.call('HGET', KEYS[1], 'hash') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Attempt:
    phone: str
    stored_hash: str
    tries: int


class PendingCodes:
    def __init__(self, redis: Redis, *, prefix: str, secret: bytes, ttl: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.secret = secret
        self.ttl = ttl
        self._try = redis.register_script(_TRY)
        self._forget = redis.register_script(_FORGET)

    def key(self, user_id: str) -> str:
        return f"{self.prefix}verify:code:{user_id}"

    def failures_key(self, phone: str) -> str:
        return f"{self.prefix}verify:failures:{phone}"

    async def failed(self, *, phone: str, window: int) -> int:
        """Count a wrong try at ``phone`` (whatever the code); how many in the window so far."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(self.failures_key(phone))
            pipe.expire(self.failures_key(phone), window, nx=True)
            count, _ = await pipe.execute()
        return int(count)

    async def clear_failures(self, *, phone: str) -> None:
        """The owner answered: earlier wrong tries at ``phone`` no longer count."""
        await self.redis.delete(self.failures_key(phone))

    async def locked_for(self, *, phone: str, limit: int) -> int:
        """Seconds until ``phone`` may be verified again after ``limit`` wrong tries across codes; 0 when it may now."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.failures_key(phone))
            pipe.ttl(self.failures_key(phone))
            count, ttl = await pipe.execute()
        return max(int(ttl), 1) if count is not None and int(count) >= limit else 0

    async def store(self, *, user_id: str, phone: str, code: str) -> str:
        """Keep the hash of a new code for ``user_id`` (replacing any earlier one); returns the hash."""
        digest = logic.hash_code(self.secret, user_id=user_id, phone=phone, code=code)
        key = self.key(user_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping={"phone": phone, "hash": digest, "tries": 0})
            pipe.expire(key, self.ttl)
            await pipe.execute()
        return digest

    async def attempt(self, *, user_id: str) -> Attempt | None:
        """Count one try at the user's pending code; None when there is none (never sent, used or expired)."""
        found = await self._try(keys=[self.key(user_id)])
        if not found:
            return None
        phone, digest, tries = found
        return Attempt(phone=phone.decode(), stored_hash=digest.decode(), tries=int(tries))

    def matches(self, attempt: Attempt, *, user_id: str, code: str) -> bool:
        return logic.code_matches(attempt.stored_hash, self.secret, user_id=user_id, phone=attempt.phone, code=code)

    async def forget(self, *, user_id: str, digest: str) -> None:
        """Drop the user's pending code if it is still the one with ``digest``."""
        await self._forget(keys=[self.key(user_id)], args=[digest])
