"""The ingress schema: producers' API keys."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg


async def active_key(*, conn: asyncpg.Connection | asyncpg.Pool, key_hash: bytes) -> dict[str, Any] | None:
    """The key with this digest, unless revoked or expired."""
    row = await conn.fetchrow(
        """
        SELECT id, producer, event_types, rate_per_minute
          FROM ingress.api_keys
         WHERE key_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
        """,
        key_hash,
    )
    return dict(row) if row else None


async def insert_key(
    *,
    conn: asyncpg.Connection | asyncpg.Pool,
    producer: str,
    key_hash: bytes,
    key_prefix: str,
    event_types: list[str],
    rate_per_minute: int,
    expires_at: dt.datetime | None = None,
) -> uuid.UUID:
    """Store a new key's digest and rules; return its id."""
    key_id = uuid.uuid4()
    await conn.execute(
        """
        INSERT INTO ingress.api_keys (id, producer, key_hash, key_prefix, event_types, rate_per_minute, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        """,
        key_id, producer, key_hash, key_prefix, event_types, rate_per_minute, expires_at,
    )
    return key_id


async def list_keys(*, conn: asyncpg.Connection | asyncpg.Pool, producer: str | None = None) -> list[dict[str, Any]]:
    """Every key (never the key itself), newest first."""
    rows = await conn.fetch(
        """
        SELECT id, producer, key_prefix, event_types, rate_per_minute, created_at, expires_at, revoked_at
          FROM ingress.api_keys
         WHERE $1::text IS NULL OR producer = $1
         ORDER BY producer, created_at DESC
        """,
        producer,
    )
    return [dict(r) for r in rows]


async def revoke_key(*, conn: asyncpg.Connection | asyncpg.Pool, key_id: uuid.UUID) -> bool:
    """Revoke a key now; False when there is no such active key."""
    status = await conn.execute(
        "UPDATE ingress.api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id
    )
    return status.endswith(" 1")
