import uuid

import pytest

from shared import MigrationError, apply_migrations, load_migrations


async def test_migrations_apply_once_in_order_and_refuse_edits(db, tmp_path):
    service = f"m{uuid.uuid4().hex[:8]}"
    (tmp_path / "001_create.sql").write_text(f"CREATE SCHEMA {service}; CREATE TABLE {service}.t (x int);")
    (tmp_path / "002_add.sql").write_text(f"ALTER TABLE {service}.t ADD COLUMN y int;")
    applied = await apply_migrations(db, load_migrations(service, tmp_path))
    assert [m.version for m in applied] == [1, 2]
    assert await apply_migrations(db, load_migrations(service, tmp_path)) == []
    rows = await db.fetch("SELECT version FROM public.herald_migrations WHERE service = $1 ORDER BY version", service)
    assert [r["version"] for r in rows] == [1, 2]
    (tmp_path / "002_add.sql").write_text(f"ALTER TABLE {service}.t ADD COLUMN z int;")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await apply_migrations(db, load_migrations(service, tmp_path))


async def test_a_failing_migration_leaves_nothing_half_applied(db, tmp_path):
    service = f"m{uuid.uuid4().hex[:8]}"
    (tmp_path / "001_bad.sql").write_text(f"CREATE SCHEMA {service}; SELECT no_such_function();")
    with pytest.raises(Exception, match="no_such_function"):
        await apply_migrations(db, load_migrations(service, tmp_path))
    assert await db.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", service) == 0
    assert await db.fetchval("SELECT count(*) FROM public.herald_migrations WHERE service = $1", service) == 0


def test_badly_named_migration_files_are_refused(tmp_path):
    (tmp_path / "create.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNN_snake_case"):
        load_migrations("x", tmp_path)
