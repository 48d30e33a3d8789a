"""The inbox insert: one statement numbering a user's notifications, once per notification id."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from services.inapp import repo
from shared import Suppressed


async def store(conn, user_id: str, id: uuid.UUID):
    return await repo.insert(
        conn=conn, id=id, user_id=user_id, category="system_updates", type="system.update", title="T", body="B",
        url=None, data={"k": 1}, created_at=datetime.now(UTC),
    )


async def test_a_notification_is_numbered_once_and_a_second_copy_returns_the_first(pool, user):
    first, second = uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as conn:
        row, created = await store(conn, user, first)
        assert (row["seq"], created) == (1, True)
        again, created_again = await store(conn, user, first)
        assert (again["seq"], again["id"], created_again) == (1, first, False)
        row2, created2 = await store(conn, user, second)
        assert (row2["seq"], created2) == (2, True)  # no number was taken by the second copy
        assert await repo.last_seq(conn=conn, user_id=user) == 2
        assert await repo.unread_count(conn=conn, user_id=user) == 2
        await conn.execute("UPDATE inapp.notifications SET deleted_at = now() WHERE id = $1", second)
        assert await store(conn, user, second) == (None, False)  # deleted by the user: not stored again
        assert await repo.last_seq(conn=conn, user_id=user) == 2


async def test_nothing_is_stored_for_an_erased_user_and_the_store_says_suppressed(pool, user):
    async with pool.acquire() as conn:
        await store(conn, user, uuid.uuid4())
        await conn.execute("INSERT INTO inapp.erasures (user_id, erasure_id, requested_at) VALUES ($1, $2, now())", user, uuid.uuid4())
        with pytest.raises(Suppressed) as refused:
            await store(conn, user, uuid.uuid4())
        assert refused.value.reason == "user_deleted"
        assert await repo.last_seq(conn=conn, user_id=user) == 1  # nothing numbered, nothing stored
        assert await conn.fetchval("SELECT count(*) FROM inapp.notifications WHERE user_id = $1", user) == 1
