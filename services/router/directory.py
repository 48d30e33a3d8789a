"""The recipients directory as the router uses it: batched, cached profile lookups and changes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, time

from shared import Resources

from . import logic, repo
from .cache import ProfileCache
from .logic import Directory, Profile


class Recipients:
    """Profile lookups (Redis first, PostgreSQL for misses, in bounded concurrent chunks) and directory changes."""

    def __init__(self, res: Resources, *, ttl_seconds: int, chunk: int = 500) -> None:
        self.res = res
        self.cache = ProfileCache(res.redis_for("cache"), ttl_seconds=ttl_seconds)
        self.chunk = chunk
        self.limit = asyncio.Semaphore(max(1, min(res.settings.concurrency, res.settings.database_pool_max)))

    async def profiles(self, user_ids: Iterable[str]) -> dict[str, Profile]:
        """The profile of every user id (unknown users included)."""
        ids = list(dict.fromkeys(user_ids))
        chunks = [ids[i : i + self.chunk] for i in range(0, len(ids), self.chunk)]
        found: dict[str, Profile] = {}
        for part in await asyncio.gather(*(self._profiles(c) for c in chunks)):
            found.update(part)
        return found

    async def _profiles(self, user_ids: list[str]) -> dict[str, Profile]:
        async with self.limit:
            hits, misses = await self.cache.get_many(user_ids)
            if not misses:
                return hits
            async with self.res.pool.acquire() as conn:
                rows = await repo.profiles(conn=conn, user_ids=list(misses))
            loaded = {
                user_id: Profile(logic.contact_of(row, user_id, deleted=deleted), prefs, quiet)
                for user_id, (row, deleted, prefs, quiet) in rows.items()
            }
            await self.cache.fill(loaded, misses)
            return {**hits, **loaded}

    async def apply_event(self, event_type: str, user_id: str, fields: Mapping[str, object], *, time: datetime | None = None) -> str:
        """Apply a ``user.*`` event of ``time`` to the directory; what happened (updated, deleted, ignored_deleted,
        ignored_stale: the row holds a newer change, so an event that arrives late cannot undo it). Deletion always
        wins, whatever its time. An event without a time is applied as of now."""
        if time is not None:
            time = min(time, datetime.now(UTC))  # a producer's clock ahead of ours cannot freeze the row
        async with self.res.pool.acquire() as conn, conn.transaction():
            if event_type == "user.deleted":
                await repo.delete_recipient(conn=conn, user_id=user_id)
                outcome = "deleted"
            else:
                current, deleted, changed_at = await repo.recipient(conn=conn, user_id=user_id, for_update=True)
                if deleted:
                    outcome = "ignored_deleted"
                elif time is not None and changed_at is not None and time < changed_at:
                    outcome = "ignored_stale"
                else:
                    await repo.upsert_recipient(conn=conn, row=logic.directory_update(current, user_id, fields), changed_at=time)
                    outcome = "updated"
        await self.cache.invalidate(user_id)
        return outcome

    async def put(self, row: Directory) -> bool:
        """Replace a user's directory row (the HTTP upsert); False when the user was deleted."""
        async with self.res.pool.acquire() as conn:
            written = await repo.upsert_recipient(conn=conn, row=row)
        await self.cache.invalidate(row.user_id)
        return written

    async def set_preferences(self, user_id: str, changes: Mapping[tuple[str, str], bool]) -> bool:
        """Record a user's choices; False when the user was deleted (nothing is recorded)."""
        async with self.res.pool.acquire() as conn:
            written = await repo.set_preferences(conn=conn, user_id=user_id, changes=changes)
        await self.cache.invalidate(user_id)
        return written


    async def set_quiet_hours(self, user_id: str, window: tuple[time, time] | None) -> bool:
        """Set or remove a user's quiet hours; False when the user was deleted (nothing is recorded)."""
        async with self.res.pool.acquire() as conn:
            written = await repo.set_quiet_hours(conn=conn, user_id=user_id, window=window)
        await self.cache.invalidate(user_id)
        return written


def recipients_of(res: Resources) -> Recipients:
    return res.extra["recipients"]
