"""The shared PostgreSQL pool: a connection comes back from the pool clean."""

import uuid

from shared import create_pool


async def test_a_transaction_left_open_is_rolled_back_before_the_connection_is_lent_again(infra, db):
    table = f"pool_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE TABLE {table} (n int)")
    pool = await create_pool(infra.database_url, min_size=1, max_size=1)
    try:
        conn = await pool.acquire()
        await conn.execute("BEGIN")
        await conn.execute(f"INSERT INTO {table} VALUES (1)")
        await pool.release(conn)
        async with pool.acquire() as again:
            assert again.is_in_transaction() is False
            await again.execute(f"INSERT INTO {table} VALUES (2)")
        assert [r["n"] for r in await db.fetch(f"SELECT n FROM {table}")] == [2]
    finally:
        await pool.close()
        await db.execute(f"DROP TABLE {table}")
