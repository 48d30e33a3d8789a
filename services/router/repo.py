"""Queries on the ``router`` schema: recipients, preferences and the decision trace."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, time
from typing import Any
from uuid import UUID

from shared import rows

from .logic import Directory

_RECIPIENT_COLUMNS = "user_id, email, phone, phone_verified_at, locale, timezone, deleted_at"


def _directory(row: Mapping[str, Any]) -> Directory:
    return Directory(
        user_id=row["user_id"],
        email=row["email"],
        phone=row["phone"],
        phone_verified_at=row["phone_verified_at"],
        locale=row["locale"],
        timezone=row["timezone"],
    )


async def recipient(*, conn: Any, user_id: str, for_update: bool = False) -> tuple[Directory | None, bool, datetime | None]:
    """A user's directory row, whether the user was deleted, and when it last changed ((None, False, None) when unknown)."""
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_RECIPIENT_COLUMNS}, changed_at FROM router.recipients WHERE user_id = $1{lock}", user_id)
    if row is None:
        return None, False, None
    return (None, True, row["changed_at"]) if row["deleted_at"] is not None else (_directory(row), False, row["changed_at"])


async def upsert_recipient(*, conn: Any, row: Directory, changed_at: datetime | None = None) -> bool:
    """Insert or replace a user's directory row as of ``changed_at`` (default: now); False (and nothing written) when
    the user was deleted or the row holds a newer change."""
    status = await conn.execute(
        """
        INSERT INTO router.recipients AS r (user_id, email, phone, phone_verified_at, locale, timezone, changed_at)
        VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, now()))
        ON CONFLICT (user_id) DO UPDATE
           SET email = EXCLUDED.email, phone = EXCLUDED.phone, phone_verified_at = EXCLUDED.phone_verified_at,
               locale = EXCLUDED.locale, timezone = EXCLUDED.timezone, updated_at = now(),
               changed_at = GREATEST(r.changed_at, EXCLUDED.changed_at)
         WHERE r.deleted_at IS NULL AND (r.changed_at IS NULL OR r.changed_at <= EXCLUDED.changed_at)
        """,
        row.user_id,
        row.email,
        row.phone,
        row.phone_verified_at,
        row.locale,
        row.timezone,
        changed_at,
    )
    return status.endswith(" 1")


async def _lock_user(conn: Any, user_id: str) -> None:
    """Serialise a deletion and a preference change of one user (in the caller's transaction)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('router.recipient:' || $1, 0))", user_id)


async def delete_recipient(*, conn: Any, user_id: str) -> None:
    """Keep a tombstone of the user (its id and deletion time: no address, locale, time zone or preferences);
    a deleted user gets nothing. Runs in the caller's transaction."""
    await _lock_user(conn, user_id)
    await conn.execute(
        """
        INSERT INTO router.recipients AS r (user_id, deleted_at) VALUES ($1, now())
        ON CONFLICT (user_id) DO UPDATE
           SET email = NULL, phone = NULL, phone_verified_at = NULL, locale = DEFAULT, timezone = DEFAULT,
               deleted_at = COALESCE(r.deleted_at, now()), updated_at = now()
        """,
        user_id,
    )
    await conn.execute("DELETE FROM router.preferences WHERE user_id = $1", user_id)
    await conn.execute("DELETE FROM router.quiet_hours WHERE user_id = $1", user_id)


Found = tuple[Directory | None, bool, dict[tuple[str, str], bool], tuple[time, time] | None]


async def profiles(*, conn: Any, user_ids: Sequence[str]) -> dict[str, Found]:
    """For each user id: directory row (None if unknown or deleted), deleted flag, explicit preferences, quiet hours."""
    rows = await conn.fetch(f"SELECT {_RECIPIENT_COLUMNS} FROM router.recipients WHERE user_id = ANY($1::text[])", list(user_ids))
    prefs = await conn.fetch(
        "SELECT user_id, category, channel, enabled FROM router.preferences WHERE user_id = ANY($1::text[])", list(user_ids)
    )
    quiet = await conn.fetch("SELECT user_id, starts, ends FROM router.quiet_hours WHERE user_id = ANY($1::text[])", list(user_ids))
    found: dict[str, list[Any]] = {u: [None, False, {}, None] for u in user_ids}
    for row in rows:
        deleted = row["deleted_at"] is not None
        found[row["user_id"]][:2] = [None if deleted else _directory(row), deleted]
    for p in prefs:
        found[p["user_id"]][2][(p["category"], p["channel"])] = p["enabled"]
    for q in quiet:
        found[q["user_id"]][3] = (q["starts"], q["ends"])
    return {u: (f[0], f[1], f[2], f[3]) for u, f in found.items()}


async def quiet_hours(*, conn: Any, user_id: str) -> tuple[time, time] | None:
    row = await conn.fetchrow("SELECT starts, ends FROM router.quiet_hours WHERE user_id = $1", user_id)
    return (row["starts"], row["ends"]) if row else None


async def set_quiet_hours(*, conn: Any, user_id: str, window: tuple[time, time] | None) -> bool:
    """Set (or with None, remove) a user's quiet hours; False, changing nothing, when the user was deleted."""
    async with conn.transaction():
        await _lock_user(conn, user_id)
        if await conn.fetchval("SELECT true FROM router.recipients WHERE user_id = $1 AND deleted_at IS NOT NULL", user_id):
            return False
        if window is None:
            await conn.execute("DELETE FROM router.quiet_hours WHERE user_id = $1", user_id)
        else:
            await conn.execute(
                """
                INSERT INTO router.quiet_hours (user_id, starts, ends) VALUES ($1, $2, $3)
                ON CONFLICT (user_id) DO UPDATE SET starts = EXCLUDED.starts, ends = EXCLUDED.ends, updated_at = now()
                """,
                user_id, *window,
            )
    return True


async def active_user_ids(*, conn: Any, after: str | None, limit: int) -> list[str]:
    """The next ``limit`` user ids of users not deleted, in id order after ``after`` (keyset pagination)."""
    rows = await conn.fetch(
        "SELECT user_id FROM router.recipients WHERE deleted_at IS NULL AND ($1::text IS NULL OR user_id > $1) ORDER BY user_id LIMIT $2",
        after,
        limit,
    )
    return [r["user_id"] for r in rows]


async def preferences(*, conn: Any, user_id: str) -> dict[tuple[str, str], bool]:
    """A user's explicit preference choices."""
    rows = await conn.fetch("SELECT category, channel, enabled FROM router.preferences WHERE user_id = $1", user_id)
    return {(r["category"], r["channel"]): r["enabled"] for r in rows}


async def set_preferences(*, conn: Any, user_id: str, changes: Mapping[tuple[str, str], bool]) -> bool:
    """Record a user's choices (all or none); False, recording nothing, when the user was deleted."""
    keys = list(changes)
    async with conn.transaction():
        await _lock_user(conn, user_id)  # a deletion committing meanwhile is seen below, or sees these rows and removes them
        if await conn.fetchval("SELECT true FROM router.recipients WHERE user_id = $1 AND deleted_at IS NOT NULL", user_id):
            return False
        await conn.execute(
            """
            INSERT INTO router.preferences (user_id, category, channel, enabled)
            SELECT $1, c.category, c.channel, c.enabled FROM unnest($2::text[], $3::text[], $4::boolean[]) AS c(category, channel, enabled)
            ON CONFLICT (user_id, category, channel) DO UPDATE SET enabled = EXCLUDED.enabled, updated_at = now()
            """,
            user_id,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [changes[k] for k in keys],
        )
    return True


# ---------------------------------------------------------------------------- trace


async def _trace_write(conn: Any, sql: str, *args: Any) -> None:
    # The trace is diagnostic, not the record of delivery (the senders' ledgers are): it
    # need not wait for its WAL flush. A crash of PostgreSQL can lose the last fraction of
    # a second of trace rows, never a committed row of anything else.
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit TO off")
        await conn.execute(sql, *args)


async def record_decisions(*, conn: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write decisions; one already written for a notification id is kept."""
    if not rows:
        return
    columns = ("notification_id", "event_id", "event_source", "event_type", "user_id", "channel", "critical", "template", "decision", "reason", "detail")
    await _trace_write(
        conn,
        """
        INSERT INTO router.decisions (notification_id, event_id, event_source, event_type, user_id, channel, critical, template, decision, reason, detail)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::boolean[], $8::text[], $9::text[], $10::text[], $11::text[])
        ON CONFLICT (notification_id) DO NOTHING
        """,
        *([r[c] for r in rows] for c in columns),
    )


async def record_deliveries(*, conn: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write sender outcomes; a status already written for a notification and attempt is kept."""
    if not rows:
        return
    columns = ("notification_id", "status", "attempt", "reason", "provider_message_id", "event_id", "user_id", "channel", "at")
    await _trace_write(
        conn,
        """
        INSERT INTO router.deliveries (notification_id, status, attempt, reason, provider_message_id, event_id, user_id, channel, at)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::timestamptz[])
            AS u (notification_id, status, attempt, reason, provider_message_id, event_id, user_id, channel, at)
         -- of an erased user only the refusals (a late status of a send before the erasure is not kept)
         WHERE u.reason IS NOT DISTINCT FROM 'user_deleted' OR NOT EXISTS (SELECT 1 FROM router.erasures e WHERE e.user_id = u.user_id)
        ON CONFLICT (notification_id, status, attempt) DO NOTHING
        """,
        *([r[c] for r in rows] for c in columns),
    )


async def decision(*, conn: Any, notification_id: UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM router.decisions WHERE notification_id = $1", notification_id)
    return dict(row) if row else None


async def event_decisions(*, conn: Any, event_id: str, limit: int, after: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """A page of the decisions about one event, in (decided_at, notification_id) order, after the decision ``after``."""
    if after is None:
        rows = await conn.fetch(
            "SELECT * FROM router.decisions WHERE event_id = $1 ORDER BY decided_at, notification_id LIMIT $2", event_id, limit
        )
    else:
        rows = await conn.fetch(
            "SELECT * FROM router.decisions WHERE event_id = $1 AND (decided_at, notification_id) > ($2, $3) "
            "ORDER BY decided_at, notification_id LIMIT $4",
            event_id,
            after["decided_at"],
            after["notification_id"],
            limit,
        )
    return [dict(r) for r in rows]


async def user_decisions(*, conn: Any, user_id: str, since: datetime, limit: int, after: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """A page of a user's decisions since a time, oldest first (then by event and channel), after the decision ``after``."""
    if after is None:
        rows = await conn.fetch(
            "SELECT * FROM router.decisions WHERE user_id = $1 AND decided_at >= $2 "
            "ORDER BY decided_at, event_id, channel, notification_id LIMIT $3",
            user_id,
            since,
            limit,
        )
    else:
        rows = await conn.fetch(
            "SELECT * FROM router.decisions WHERE user_id = $1 AND decided_at >= $2 "
            "AND (decided_at, event_id, channel, notification_id) > ($3, $4, $5, $6) "
            "ORDER BY decided_at, event_id, channel, notification_id LIMIT $7",
            user_id,
            since,
            after["decided_at"],
            after["event_id"],
            after["channel"],
            after["notification_id"],
            limit,
        )
    return [dict(r) for r in rows]


async def deliveries_of(*, conn: Any, notification_ids: Iterable[UUID]) -> dict[UUID, list[dict[str, Any]]]:
    """The sender outcomes of some notifications, each list in order."""
    rows = await conn.fetch(
        "SELECT notification_id, status, attempt, reason, provider_message_id, at FROM router.deliveries "
        "WHERE notification_id = ANY($1::uuid[]) ORDER BY at, attempt",
        list(notification_ids),
    )
    found: dict[UUID, list[dict[str, Any]]] = {}
    for r in rows:
        row = dict(r)
        found.setdefault(row.pop("notification_id"), []).append(row)
    return found


# ---------------------------------------------------------------------- erasure


async def request_erasure(*, conn: Any, user_id: str, erasure_id: UUID, event_id: str, requested_at: datetime) -> dict[str, Any]:
    """Record that ``user_id`` is to be erased; the first request is kept (its id is the one every service reports)."""
    row = await conn.fetchrow(
        """
        INSERT INTO router.erasures AS e (user_id, erasure_id, event_id, requested_at) VALUES ($1, $2, $3, $4)
        ON CONFLICT (user_id) DO UPDATE SET user_id = e.user_id
        RETURNING erasure_id, event_id, requested_at
        """,
        user_id, erasure_id, event_id, requested_at,
    )
    return dict(row)


async def erase_trace(*, conn: Any, user_id: str) -> dict[str, int]:
    """Delete the user's decision trace and delivery rows: every delivery row of the user, also one whose
    decision is gone (pruned by retention), but the refusals after the erasure (``user_deleted``, written
    afterwards) with their decisions."""
    async with conn.transaction():
        deliveries = await conn.execute(
            """
            DELETE FROM router.deliveries
             WHERE user_id = $1
               AND (reason IS DISTINCT FROM 'user_deleted'
                    OR notification_id IN (SELECT notification_id FROM router.decisions WHERE user_id = $1 AND reason <> 'user_deleted'))
            """,
            user_id,
        )
        decisions = await conn.execute("DELETE FROM router.decisions WHERE user_id = $1 AND reason <> 'user_deleted'", user_id)
    return {"trace_decisions": int(decisions.split()[-1]), "trace_deliveries": int(deliveries.split()[-1])}


async def record_erasure_reports(*, conn: Any, reports: Sequence[Mapping[str, Any]]) -> None:
    """Keep each service's first report of erasing a user (a redelivered erasure reports again, finding nothing more)."""
    await conn.executemany(
        """
        INSERT INTO router.erasure_reports (user_id, service, erasure_id, erased, reported_at) VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (user_id, service) DO NOTHING
        """,
        [(r["user_id"], r["service"], r["erasure_id"], r["erased"], r["at"]) for r in reports],
    )


async def export(*, conn: Any, user_id: str) -> dict[str, Any]:
    """What the router holds about a user: directory row, preferences, decision trace with its deliveries, erasure."""
    recipient = await rows(conn, "SELECT * FROM router.recipients WHERE user_id = $1", user_id)
    erasure = await rows(conn, "SELECT * FROM router.erasures WHERE user_id = $1", user_id)
    return {
        "recipient": recipient[0] if recipient else None,
        "preferences": await rows(conn, "SELECT category, channel, enabled, updated_at FROM router.preferences WHERE user_id = $1 ORDER BY category, channel", user_id),
        "quiet_hours": await rows(conn, "SELECT starts, ends, updated_at FROM router.quiet_hours WHERE user_id = $1", user_id),
        "schedules": await rows(
            conn, "SELECT id, source, event_id, event_type, kind, status, due_at, created_at FROM router.schedules WHERE user_ids @> ARRAY[$1]::text[] ORDER BY due_at", user_id
        ),
        "decisions": await rows(conn, "SELECT * FROM router.decisions WHERE user_id = $1 ORDER BY decided_at, notification_id", user_id),
        "deliveries": await rows(
            conn,
            "SELECT d.* FROM router.deliveries d WHERE d.notification_id IN (SELECT notification_id FROM router.decisions WHERE user_id = $1)"
            " ORDER BY d.at, d.notification_id, d.attempt",
            user_id,
        ),
        "erasure": erasure[0] if erasure else None,
        "erasure_reports": await rows(conn, "SELECT service, erasure_id, erased, reported_at FROM router.erasure_reports WHERE user_id = $1 ORDER BY service", user_id),
    }


async def erasure(*, conn: Any, user_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """A user's erasure request and the services' reports; None if none was requested."""
    request = await conn.fetchrow("SELECT erasure_id, event_id, requested_at, created_at FROM router.erasures WHERE user_id = $1", user_id)
    if request is None:
        return None
    reports = await conn.fetch("SELECT service, erasure_id, erased, reported_at FROM router.erasure_reports WHERE user_id = $1 ORDER BY service", user_id)
    return dict(request), [dict(r) for r in reports]


# ---------------------------------------------------------------------- broadcasts


async def shard_bounds(*, conn: Any, shards: int) -> list[tuple[str | None, str | None]]:
    """Split the users not deleted into ``shards`` ranges of about equal size: (after, upto] each.

    The first range starts at the beginning and the last has no end, so users added while the
    broadcast runs still belong to one range.
    """
    uppers = await conn.fetch(
        """
        SELECT max(user_id) AS upto FROM (
            SELECT user_id, ntile($1) OVER (ORDER BY user_id) AS tile FROM router.recipients WHERE deleted_at IS NULL
        ) t GROUP BY tile ORDER BY tile
        """,
        shards,
    )
    bounds: list[tuple[str | None, str | None]] = []
    after: str | None = None
    for row in uppers[:-1]:
        bounds.append((after, row["upto"]))
        after = row["upto"]
    bounds.append((after, None))
    return bounds


async def broadcast_exists(*, conn: Any, namespace: str, event_source: str, event_id: str, template: str, generation: str) -> bool:
    """Whether a broadcast's shards are written already (its event redelivered)."""
    return bool(
        await conn.fetchval(
            """
            SELECT true FROM router.broadcasts
             WHERE namespace = $1 AND event_source = $2 AND event_id = $3 AND template = $4 AND generation = $5 LIMIT 1
            """,
            namespace, event_source, event_id, template, generation,
        )
    )


async def create_broadcast(
    *,
    conn: Any,
    namespace: str,
    event_source: str,
    event_id: str,
    template: str,
    generation: str,
    event: bytes,
    origin: str,
    bounds: Sequence[tuple[str | None, str | None]],
) -> bool:
    """Write a broadcast's shards; False when the broadcast exists already (a redelivered event)."""
    async with conn.transaction():
        # Two routers writing one broadcast at once (a rebalance) take turns, so its shards come from one of them.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1 || '/' || $2 || '/' || $3 || '/' || $4 || '/' || $5))", namespace, event_source, event_id, template, generation)
        if await broadcast_exists(conn=conn, namespace=namespace, event_source=event_source, event_id=event_id, template=template, generation=generation):
            return False
        await conn.executemany(
            """
            INSERT INTO router.broadcasts (namespace, event_source, event_id, template, generation, shard, shards, event, origin, after_user, upto_user)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING
            """,
            [(namespace, event_source, event_id, template, generation, i, len(bounds), event, origin, after, upto) for i, (after, upto) in enumerate(bounds)],
        )
    return True


async def claim_shard(*, conn: Any, namespace: str, owner: str, lease_seconds: float) -> dict[str, Any] | None:
    """Take the oldest open shard nobody holds (or whose holder's lease ran out) under a lease."""
    row = await conn.fetchrow(
        """
        UPDATE router.broadcasts SET lease_owner = $2, lease_until = now() + make_interval(secs => $3)
         WHERE id = (
            SELECT id FROM router.broadcasts
             WHERE namespace = $1 AND finished_at IS NULL AND (lease_until IS NULL OR lease_until < now())
             ORDER BY created_at, id
             LIMIT 1 FOR UPDATE SKIP LOCKED
         )
        RETURNING *
        """,
        namespace, owner, lease_seconds,
    )
    return dict(row) if row else None


async def shard_page(*, conn: Any, after: str | None, upto: str | None, limit: int) -> list[str]:
    """The next ``limit`` users not deleted of a shard's range, after its cursor, in id order."""
    rows = await conn.fetch(
        """
        SELECT user_id FROM router.recipients
         WHERE deleted_at IS NULL AND ($1::text IS NULL OR user_id > $1) AND ($2::text IS NULL OR user_id <= $2)
         ORDER BY user_id LIMIT $3
        """,
        after, upto, limit,
    )
    return [r["user_id"] for r in rows]


async def advance_shard(*, conn: Any, shard: int, owner: str, after: str | None, routed: int, finished: bool, lease_seconds: float) -> bool:
    """Move a shard's cursor past a page that is published and traced (and renew the lease); False when the lease was lost."""
    done = await conn.fetchval(
        """
        UPDATE router.broadcasts
           SET after_user = $3, routed = routed + $4,
               lease_until = CASE WHEN $5 THEN NULL ELSE now() + make_interval(secs => $6) END,
               lease_owner = CASE WHEN $5 THEN NULL ELSE lease_owner END,
               finished_at = CASE WHEN $5 THEN now() END
         WHERE id = $1 AND lease_owner = $2
        RETURNING true
        """,
        shard, owner, after, routed, finished, lease_seconds,
    )
    return bool(done)


async def release_shard(*, conn: Any, shard: int, owner: str) -> None:
    """Give a shard back (a walker stopping): another takes it at once instead of after the lease."""
    await conn.execute("UPDATE router.broadcasts SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2", shard, owner)
