"""Queries on ``push.subscriptions`` (and the per-subscription ledger rows); user-facing ones are scoped to one user."""

from __future__ import annotations

from typing import Any
from uuid import UUID

SUBSCRIPTION_COLUMNS = "id, user_id, endpoint, endpoint_hash, p256dh, auth, created_at, last_success_at, failures"


async def lock_user(*, conn: Any, user_id: str) -> None:
    """Serialise one user's subscribes and erasure (in the caller's transaction)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"push:{user_id}")


async def subscribe(
    *, conn: Any, user_id: str, endpoint: str, endpoint_hash: str, p256dh: str, auth: str, user_agent: str | None
) -> tuple[dict[str, Any] | None, bool]:
    """Store a user's subscription, refreshing its keys if they already have it.

    Returns ``(row, created)``; ``row`` is None when the endpoint belongs to another user.
    """
    row = await conn.fetchrow(
        f"""
        INSERT INTO push.subscriptions AS s (user_id, endpoint, endpoint_hash, p256dh, auth, user_agent)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (endpoint) DO UPDATE
           SET p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth, user_agent = EXCLUDED.user_agent,
               failures = 0, last_error = NULL, updated_at = now()
         WHERE s.user_id = EXCLUDED.user_id
        RETURNING {SUBSCRIPTION_COLUMNS}, (xmax = 0) AS created
        """,
        user_id,
        endpoint,
        endpoint_hash,
        p256dh,
        auth,
        user_agent,
    )
    if row is None:
        return None, False
    found = dict(row)
    return found, found.pop("created")


async def count_for_user(*, conn: Any, user_id: str) -> int:
    """How many subscriptions a user has."""
    return await conn.fetchval("SELECT count(*) FROM push.subscriptions WHERE user_id = $1", user_id)


async def list_for_user(*, conn: Any, user_id: str) -> list[dict[str, Any]]:
    """A user's subscriptions, oldest first."""
    rows = await conn.fetch(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM push.subscriptions WHERE user_id = $1 ORDER BY created_at, id", user_id
    )
    return [dict(r) for r in rows]


async def unsubscribe(*, conn: Any, user_id: str, endpoint: str) -> bool:
    """Delete a user's own subscription by endpoint; False when they have none with that endpoint."""
    status = await conn.execute("DELETE FROM push.subscriptions WHERE user_id = $1 AND endpoint = $2", user_id, endpoint)
    return status == "DELETE 1"


async def erase_user(*, conn: Any, user_id: str) -> int:
    """Delete every subscription of an erased user; how many went."""
    status = await conn.execute("DELETE FROM push.subscriptions WHERE user_id = $1", user_id)
    return int(status.split()[-1])


async def remove(*, conn: Any, id: UUID) -> bool:
    """Delete a subscription the push service says is gone (or that failed too often)."""
    return await conn.execute("DELETE FROM push.subscriptions WHERE id = $1", id) == "DELETE 1"


async def record_success(*, conn: Any, id: UUID) -> None:
    """A push was accepted: reset the consecutive-failure count."""
    await conn.execute(
        "UPDATE push.subscriptions SET failures = 0, last_error = NULL, last_success_at = now() WHERE id = $1", id
    )


async def record_failure(*, conn: Any, id: UUID, error: str) -> int | None:
    """A push failed: count it; the consecutive failures so far (None if the subscription is gone)."""
    return await conn.fetchval(
        """
        UPDATE push.subscriptions SET failures = failures + 1, last_error = $2, last_failure_at = now()
         WHERE id = $1
        RETURNING failures
        """,
        id,
        error[:500],
    )


async def target_status(*, conn: Any, notification_id: UUID, target: str) -> tuple[str, str | None] | None:
    """The ledger status and error of one subscription's delivery of a notification."""
    row = await conn.fetchrow(
        "SELECT status, error FROM push.ledger WHERE notification_id = $1 AND target = $2", notification_id, target
    )
    return (row["status"], row["error"]) if row else None
