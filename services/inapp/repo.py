"""Queries on ``inapp.notifications``; every read and write is scoped to one user."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from shared import Suppressed

_COLUMNS = "id, seq, user_id, category, type, title, body, url, data, created_at, read_at"


async def insert(
    *,
    conn: Any,
    id: UUID,
    user_id: str,
    category: str,
    type: str,
    title: str,
    body: str,
    url: str | None,
    data: dict[str, Any],
    created_at: datetime,
) -> tuple[dict[str, Any] | None, bool]:
    """Store a notification once, numbered next in its user's inbox: (the row, whether it is new).

    One statement, so one round trip: the user's counter is bumped only when no row has the id yet,
    and its row stays locked until the statement commits, so one user's numbers commit in order.
    Two copies of one notification stored at the same moment (which the ledger's claim prevents)
    would leave a gap in the user's numbers; a stream that sees a gap reads from the table.
    The row of one stored before is returned too, unless the user deleted it since (None). Nothing is
    stored for an erased user: that raises ``Suppressed`` (the sender's claim reads the tombstone first,
    and an erasure waits for claims in flight, so this is the last guard, not the usual way).
    """
    row = await conn.fetchrow(
        f"""
        WITH fresh AS (
            SELECT NOT EXISTS (SELECT 1 FROM inapp.notifications WHERE id = $1)
               AND NOT EXISTS (SELECT 1 FROM inapp.erasures WHERE user_id = $2) AS new  -- nothing stored for an erased user
        ), seq AS (
            INSERT INTO inapp.inbox_sequences AS s (user_id, last_seq)
            SELECT $2, 1 FROM fresh WHERE new
            ON CONFLICT (user_id) DO UPDATE SET last_seq = s.last_seq + 1
            RETURNING last_seq
        ), stored AS (
            INSERT INTO inapp.notifications (id, seq, user_id, category, type, title, body, url, data, created_at)
            SELECT $1, seq.last_seq, $2, $3, $4, $5, $6, $7, $8, $9 FROM seq
            ON CONFLICT (id) DO NOTHING
            RETURNING {_COLUMNS}
        )
        SELECT * FROM stored
        """,
        id,
        user_id,
        category,
        type,
        title,
        body,
        url,
        data,
        created_at,
    )
    if row is not None:
        return dict(row), True
    existing = await conn.fetchrow(f"SELECT {_COLUMNS} FROM inapp.notifications WHERE id = $1 AND deleted_at IS NULL", id)
    if existing is None and await conn.fetchval("SELECT true FROM inapp.erasures WHERE user_id = $1", user_id):
        raise Suppressed("user_deleted", "the user was erased")
    return (dict(existing) if existing else None), False


async def page(
    *,
    conn: Any,
    user_id: str,
    before_seq: int | None,
    categories: list[str] | None,
    unread_only: bool,
    limit: int,
) -> list[dict[str, Any]]:
    """A user's notifications newest first, below ``before_seq``, not deleted (``limit`` rows)."""
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS}
          FROM inapp.notifications
         WHERE user_id = $1 AND deleted_at IS NULL
           AND ($2::bigint IS NULL OR seq < $2)
           AND ($3::text[] IS NULL OR category = ANY($3))
           AND (NOT $4 OR read_at IS NULL)
         ORDER BY seq DESC
         LIMIT $5
        """,
        user_id,
        before_seq,
        categories or None,
        unread_only,
        limit,
    )
    return [dict(r) for r in rows]


async def since(*, conn: Any, user_id: str, after_seq: int, limit: int) -> list[dict[str, Any]]:
    """A user's notifications numbered after ``after_seq``, oldest first, not deleted."""
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS}
          FROM inapp.notifications
         WHERE user_id = $1 AND seq > $2 AND deleted_at IS NULL
         ORDER BY seq
         LIMIT $3
        """,
        user_id,
        after_seq,
        limit,
    )
    return [dict(r) for r in rows]


async def last_seq(*, conn: Any, user_id: str) -> int:
    """The number of the user's newest stored notification (0 when none)."""
    return await conn.fetchval("SELECT last_seq FROM inapp.inbox_sequences WHERE user_id = $1", user_id) or 0


async def unread_count(*, conn: Any, user_id: str) -> int:
    """How many of the user's notifications are unread and not deleted."""
    return await conn.fetchval(
        "SELECT count(*) FROM inapp.notifications WHERE user_id = $1 AND read_at IS NULL AND deleted_at IS NULL",
        user_id,
    )


async def set_read(*, conn: Any, user_id: str, id: UUID, read: bool) -> tuple[dict[str, Any] | None, bool]:
    """Mark one of the user's notifications read or unread; (the row or None if not theirs / deleted, whether it changed)."""
    async with conn.transaction():
        current = await conn.fetchrow(
            "SELECT read_at FROM inapp.notifications WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL FOR UPDATE",
            id,
            user_id,
        )
        if current is None:
            return None, False
        changed = (current["read_at"] is None) == read
        row = await conn.fetchrow(
            f"""
            UPDATE inapp.notifications
               SET read_at = CASE WHEN $3 THEN COALESCE(read_at, now()) ELSE NULL END,
                   seen_at = CASE WHEN $3 THEN COALESCE(seen_at, now()) ELSE seen_at END
             WHERE id = $1 AND user_id = $2
            RETURNING {_COLUMNS}
            """,
            id,
            user_id,
            read,
        )
    return dict(row), changed


async def read_all(*, conn: Any, user_id: str) -> int:
    """Mark every unread notification of the user read; how many changed."""
    status = await conn.execute(
        """
        UPDATE inapp.notifications SET read_at = now(), seen_at = COALESCE(seen_at, now())
         WHERE user_id = $1 AND read_at IS NULL AND deleted_at IS NULL
        """,
        user_id,
    )
    return int(status.rsplit(" ", 1)[-1])


async def soft_delete(*, conn: Any, user_id: str, id: UUID) -> bool:
    """Soft-delete one of the user's notifications; False if not theirs or already deleted."""
    status = await conn.execute(
        "UPDATE inapp.notifications SET deleted_at = now() WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
        id,
        user_id,
    )
    return status.endswith(" 1")


async def clear(*, conn: Any, user_id: str) -> int:
    """Soft-delete every notification of the user; how many were deleted."""
    status = await conn.execute(
        "UPDATE inapp.notifications SET deleted_at = now() WHERE user_id = $1 AND deleted_at IS NULL",
        user_id,
    )
    return int(status.rsplit(" ", 1)[-1])


async def erase_user(*, conn: Any, user_id: str) -> int:
    """Delete every notification of an erased user, soft-deleted ones too, and their inbox counter; how many went.

    The counter row goes first: a store of the same user in flight holds it, so the erasure waits for
    that store to commit and then deletes its row too.
    """
    await conn.execute("DELETE FROM inapp.inbox_sequences WHERE user_id = $1", user_id)
    status = await conn.execute("DELETE FROM inapp.notifications WHERE user_id = $1", user_id)
    return int(status.split()[-1])


async def latest(*, conn: Any, user_id: str, limit: int) -> list[dict[str, Any]]:
    """A user's newest notifications that are not deleted."""
    return await page(conn=conn, user_id=user_id, before_seq=None, categories=None, unread_only=False, limit=limit)
