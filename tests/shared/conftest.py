import uuid

import pytest

from ..support import sender_schema_ddl


@pytest.fixture
async def ledger_schema(db):
    """A scratch schema holding a sender's ledger and erasure tombstones (the DDL every sender schema uses)."""
    schema = f"s{uuid.uuid4().hex[:8]}"
    await db.execute(sender_schema_ddl(schema))
    yield schema
    await db.execute(f"DROP SCHEMA {schema} CASCADE")
