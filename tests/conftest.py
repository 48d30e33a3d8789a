"""Session infrastructure: an embedded Kafka broker on a free port, a fresh database, a Redis database."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from herald import infra as local
from herald.cli import fresh_database

from . import support
from .support import Infra, new_namespace, sender_schema_ddl, test_id

# The suite runs as the `test` environment, chosen here (the default is production); tests of the default unset it.
os.environ["HERALD_ENVIRONMENT"] = "test"

ARTIFACTS = Path(__file__).resolve().parent.parent / ".artifacts"

# Under pytest-xdist (make test, make test-fast) each worker has its own broker, database, Redis
# database and ports: its ports come from a range of its own below the kernel's ephemeral ones, so
# that neither another worker nor an outgoing connection takes one between its choice and its bind.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_WORKER_INDEX = int(WORKER.removeprefix("gw") or 0)
assert _WORKER_INDEX < 8, "at most 8 pytest-xdist workers: each takes 1,500 ports of 20000-32000"
local.PORT_RANGE = range(20000 + 1500 * _WORKER_INDEX, 20000 + 1500 * (_WORKER_INDEX + 1))

#: Fixtures that connect to the session's broker, PostgreSQL or Redis (every such fixture depends on one).
REAL_SERVICES = frozenset({"infra"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--clock-shift",
        type=int,
        default=None,
        metavar="DAYS",
        help="run only the pure tests (no broker, database, Redis, server or process) with the clock moved DAYS days (negative: back)",
    )


def pytest_configure(config: pytest.Config) -> None:
    days = config.getoption("--clock-shift")
    if days is not None:
        import time_machine

        # Started before collection, so that module-level times are shifted too; time goes on ticking.
        traveller = time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(days=days), tick=True)
        traveller.start()
        config.stash[_TRAVELLER] = traveller


def pytest_unconfigure(config: pytest.Config) -> None:
    traveller = config.stash.get(_TRAVELLER, None)
    if traveller is not None:
        traveller.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``--clock-shift``, keep the pure tests: the broker, PostgreSQL and Redis keep real time."""
    if config.getoption("--clock-shift") is None:
        return
    impure = [item for item in items if _needs_real_time(item)]
    if impure:
        config.hook.pytest_deselected(items=impure)
        items[:] = [item for item in items if not _needs_real_time(item)]


def _needs_real_time(item: pytest.Item) -> bool:
    uses_services = bool(REAL_SERVICES.intersection(getattr(item, "fixturenames", ())))
    return uses_services or any(item.get_closest_marker(m) for m in ("slow", "browser", "real_clock"))


_TRAVELLER = pytest.StashKey[object]()


@pytest.fixture(scope="session", autouse=True)
def _own_sandbox_ports() -> Iterator[None]:
    """Each sandbox a test starts takes its own free SMTP port (tests that read mail set one), so the
    suite runs beside a `make run` that is up and several sandboxes can be up at once."""
    previous = os.environ.get("HERALD_SANDBOX_SMTP_PORT")
    os.environ["HERALD_SANDBOX_SMTP_PORT"] = "0"
    yield
    if previous is None:
        os.environ.pop("HERALD_SANDBOX_SMTP_PORT", None)
    else:
        os.environ["HERALD_SANDBOX_SMTP_PORT"] = previous


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    pg = os.environ.get("HERALD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
    redis_base = os.environ.get("HERALD_TEST_REDIS", "redis://127.0.0.1:6379")
    redis_db = int(os.environ.get("HERALD_TEST_REDIS_DB", "15")) - _WORKER_INDEX
    assert redis_db >= 0, "HERALD_TEST_REDIS_DB leaves no Redis database for every pytest-xdist worker"
    local.ensure_postgres(f"{pg}/postgres")
    local.ensure_redis(redis_base)
    port = local.free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    broker = local.start_tansu(port, log_path=ARTIFACTS / f"tansu{'-' + WORKER if WORKER else ''}.log")
    database = f"herald_test_{test_id()}{'_' + WORKER if WORKER else ''}"
    asyncio.run(fresh_database(f"{pg}/{database}"))
    asyncio.run(_flush(f"{redis_base}/{redis_db}"))
    try:
        yield Infra(kafka_bootstrap=f"127.0.0.1:{port}", database_url=f"{pg}/{database}", redis_url=f"{redis_base}/{redis_db}")
    finally:
        local.stop(broker)


async def _flush(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    await client.aclose()


@pytest.fixture(scope="session", autouse=True)
async def _shared_producers() -> AsyncIterator[None]:
    support.share_producers_on(asyncio.get_running_loop())
    yield
    await support.close_producers()


@pytest.fixture
async def namespace(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A topic namespace of this test's own: its topics and consumer groups touch no other test's.

    Its topics are deleted afterwards: the session's broker answers more slowly with every topic
    it holds (joins, fetches), and the suite creates thousands.
    """
    name = new_namespace()
    yield name
    if "infra" in request.fixturenames:
        await support.delete_topics(request.getfixturevalue("infra").kafka_bootstrap, prefix=name)


@pytest.fixture
async def db(infra: Infra) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(infra.database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def redis_client(infra: Infra) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(infra.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def ledger_schema(db):
    """A scratch schema holding a sender's ledger and erasure tombstones (the DDL every sender schema uses)."""
    import uuid

    schema = f"s{uuid.uuid4().hex[:8]}"
    await db.execute(sender_schema_ddl(schema))
    yield schema
    await db.execute(f"DROP SCHEMA {schema} CASCADE")
