"""Queries on ``inapp.notifications``; every read and write is scoped to one user."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID


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
) -> bool:
    """Store a notification once; False when its id is already stored."""
    status = await conn.execute(
        """
        INSERT INTO inapp.notifications (id, user_id, category, type, title, body, url, data, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT (id) DO NOTHING
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
    return status.endswith(" 1")


async def latest(*, conn: Any, user_id: str, limit: int) -> list[dict[str, Any]]:
    """A user's newest notifications that are not deleted."""
    rows = await conn.fetch(
        """
        SELECT id, category, type, title, body, url, data, created_at, read_at
          FROM inapp.notifications
         WHERE user_id = $1 AND deleted_at IS NULL
         ORDER BY created_at DESC, id DESC
         LIMIT $2
        """,
        user_id,
        limit,
    )
    return [dict(r) for r in rows]
