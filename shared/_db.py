"""PostgreSQL: the pool, database creation and the per-service SQL migrations runner."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """A migration file is malformed, or was changed after it was applied."""


@dataclass(frozen=True)
class Migration:
    service: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = 5.0, statement_timeout: float = 15.0
) -> asyncpg.Pool:
    """Open a pool whose connections decode json/jsonb into Python objects.

    A connection attempt gives up after ``connect_timeout`` seconds and a statement after
    ``statement_timeout`` (server side, and the client stops waiting a second later), so a
    PostgreSQL that hangs is an outage the senders wait out, not a handler stuck for ever.
    """

    async def init(conn: asyncpg.Connection) -> None:
        import json

        for kind in ("json", "jsonb"):
            await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")

    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init,
        reset=_no_session_state,
        timeout=connect_timeout,
        command_timeout=statement_timeout + 1 if statement_timeout else None,
        server_settings={"statement_timeout": str(int(statement_timeout * 1000))},
    )


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """What a connection needs before the pool lends it again, beyond asyncpg's own rollback of a
    transaction left open (which runs whatever ``reset`` is): nothing.

    asyncpg's default reset also sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``
    on every release: a round trip per query for session state Herald never leaves behind. Its
    statements change session state only inside a transaction (``SET LOCAL``, transaction-level
    advisory locks); the migration lock is taken and released on a connection of its own.
    """


async def ensure_database(dsn: str) -> bool:
    """Create the database named in ``dsn`` if it does not exist; True when created."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not name:
        raise MigrationError(f"the database URL names no database: {dsn!r}")
    admin_dsn = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        await conn.execute(f'CREATE DATABASE "{name}"')
        return True
    finally:
        await conn.close()


def load_migrations(service: str, directory: Path) -> list[Migration]:
    """Read ``NNN_name.sql`` files in version order."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files are named NNN_snake_case.sql")
        found.append(Migration(service, int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{directory}: two migrations share a version number")
    return found


async def apply_migrations(conn: asyncpg.Connection, migrations: list[Migration]) -> list[Migration]:
    """Apply the migrations not yet recorded, each in its own transaction; return those applied."""
    await conn.execute(
        """
        CREATE TABLE IF NOT EXISTS public.herald_migrations (
            service text NOT NULL,
            version integer NOT NULL,
            name text NOT NULL,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (service, version)
        )
        """
    )
    applied: list[Migration] = []
    # One migrator at a time, whichever process gets there first.
    await conn.execute("SELECT pg_advisory_lock(72810001)")
    try:
        for migration in migrations:
            done = await conn.fetchrow(
                "SELECT checksum FROM public.herald_migrations WHERE service = $1 AND version = $2",
                migration.service,
                migration.version,
            )
            if done is not None:
                if done["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"{migration.service} migration {migration.version:03d}_{migration.name} was changed "
                        "after it was applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO public.herald_migrations (service, version, name, checksum) VALUES ($1, $2, $3, $4)",
                    migration.service,
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("applied migration %s %03d_%s", migration.service, migration.version, migration.name)
            applied.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(72810001)")
    return applied
