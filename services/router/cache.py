"""Recipient profiles (directory row + preference choices) cached in Redis, read and filled in batches.

Every change to a user's directory row or preferences bumps the user's version
key and deletes the cached profile, after the change is committed. A reader
notes the version before it reads PostgreSQL and fills the cache only if the
version has not moved since (one Lua script for the whole batch), so a reader
racing a change can never put the old profile back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import time
from typing import Any

from redis.asyncio import Redis

from .logic import Contact, Profile

_FILL = """
local ttl = tonumber(ARGV[1])
local filled = 0
for i = 1, #KEYS, 2 do
  local pair = (i + 1) / 2
  local current = redis.call('GET', KEYS[i + 1]) or ''
  if current == ARGV[2 * pair] then
    redis.call('SET', KEYS[i], ARGV[2 * pair + 1], 'EX', ttl)
    filled = filled + 1
  end
end
return filled
"""

_VERSION_TTL = 7 * 24 * 3600


def encode(profile: Profile) -> bytes:
    c = profile.contact
    contact = None if not c.known and not c.deleted else [c.email, c.phone, c.phone_verified, c.locale, c.timezone, c.deleted]
    doc: dict[str, Any] = {"c": contact, "p": [[k[0], k[1], v] for k, v in profile.preferences.items()]}
    if profile.quiet is not None:
        doc["q"] = [profile.quiet[0].isoformat(), profile.quiet[1].isoformat()]
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(user_id: str, raw: bytes) -> Profile:
    doc = json.loads(raw)
    prefs = {(cat, ch): enabled for cat, ch, enabled in doc["p"]}
    quiet = (time.fromisoformat(doc["q"][0]), time.fromisoformat(doc["q"][1])) if doc.get("q") else None
    if doc["c"] is None:
        return Profile(Contact(user_id, known=False), prefs, quiet)
    email, phone, verified, locale, timezone, deleted = doc["c"]
    return Profile(Contact(user_id, email, phone, verified, locale, timezone, deleted), prefs, quiet)


class ProfileCache:
    """Batched reads and race-safe fills of cached profiles."""

    def __init__(self, redis: Redis, *, ttl_seconds: int, prefix: str = "herald:router:") -> None:
        self.redis = redis
        self.ttl = ttl_seconds
        self.prefix = prefix
        self._fill = redis.register_script(_FILL)

    def _key(self, user_id: str) -> str:
        return f"{self.prefix}profile:{user_id}"

    def _version(self, user_id: str) -> str:
        return f"{self.prefix}version:{user_id}"

    async def get_many(self, user_ids: Sequence[str]) -> tuple[dict[str, Profile], dict[str, bytes]]:
        """The cached profiles, and for every miss the version to fill it under."""
        if not user_ids:
            return {}, {}
        values = await self.redis.mget([k for u in user_ids for k in (self._key(u), self._version(u))])
        hits: dict[str, Profile] = {}
        misses: dict[str, bytes] = {}
        for i, user_id in enumerate(user_ids):
            raw, version = values[2 * i], values[2 * i + 1]
            if raw is not None:
                hits[user_id] = decode(user_id, raw)
            else:
                misses[user_id] = version or b""
        return hits, misses

    async def fill(self, profiles: Mapping[str, Profile], versions: Mapping[str, bytes]) -> int:
        """Cache profiles read from PostgreSQL, each only if its version is still the one noted."""
        if not profiles:
            return 0
        keys: list[str] = []
        args: list[Any] = [self.ttl]
        for user_id, profile in profiles.items():
            keys += [self._key(user_id), self._version(user_id)]
            args += [versions.get(user_id, b""), encode(profile)]
        return int(await self._fill(keys=keys, args=args))

    async def invalidate(self, *user_ids: str) -> None:
        """Forget users' cached profiles (call after the change is committed)."""
        if not user_ids:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for user_id in user_ids:
                pipe.incr(self._version(user_id))
                pipe.expire(self._version(user_id), _VERSION_TTL)
                pipe.delete(self._key(user_id))
            await pipe.execute()
