"""The shared PostgreSQL pool lends connections without asyncpg's reset statements: that holds only
while no code leaves session state on a pooled connection, which these tests keep true."""

import re
import uuid
from pathlib import Path

from shared import create_pool

ROOT = Path(__file__).resolve().parents[2]

#: SQL that outlives its transaction on a connection: session settings (a statement starting with
#: SET, not SET LOCAL), listeners, session-level advisory locks, cursors held across transactions,
#: temporary tables.
SESSION_STATE = re.compile(
    r"[\"';]\s*SET\s+(?!LOCAL\b)|\bLISTEN\b|pg_advisory_lock\(|pg_try_advisory_lock\(|WITH\s+HOLD|CREATE\s+TEMP",
)  # Herald writes SQL keywords in capitals


def _sources() -> list[Path]:
    return [p for folder in ("services", "shared") for p in (ROOT / folder).rglob("*.py")]


def test_no_service_code_leaves_session_state_on_a_pooled_connection():
    found = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in _sources()
        for line in path.read_text().splitlines()
        if SESSION_STATE.search(line)
    ]
    # The migration lock is taken and released on a connection of its own, never a pooled one.
    assert found == ['shared/_db.py: await conn.execute("SELECT pg_advisory_lock(72810001)")']


def test_the_guard_recognises_session_state():
    for sql in ('"SET search_path TO x"', "'SET statement_timeout = 5'", '"BEGIN; SET role app"', "LISTEN inbox", "SELECT pg_advisory_lock(1)", "DECLARE c CURSOR WITH HOLD FOR SELECT 1", "CREATE TEMP TABLE t (n int)"):
        assert SESSION_STATE.search(sql), sql
    for sql in ('"SET LOCAL synchronous_commit TO off"', "SELECT pg_advisory_xact_lock(1)", '"UPDATE t SET n = 1 WHERE id = $1"', "   SET status = $2,", "ON CONFLICT DO UPDATE SET last_seq = s.last_seq + 1"):
        assert not SESSION_STATE.search(sql), sql


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
