"""Scheduler benchmark: release N schedules that fall due in the same second, among M pending ones.

    .venv/bin/python scripts/bench_schedules.py --pending 1000000 --due 10000

Starts its own Tansu broker, a fresh database (``herald_bench_schedules``) and a Redis database of its
own, writes ``--pending`` pending schedules straight into ``router.schedules`` (spread over the next
year) of which ``--due`` fall due at the same second, then runs the router in this process with a clock
that stands at that second, and measures:

1. release: from the clock reaching that second to the last of the ``--due`` schedules marked released
   (each published to its domain topic and acknowledged by Kafka before it is marked);
2. the lookup the scheduler makes between passes (the earliest pending due time) with that many rows;
3. planning: ``--plan`` ``sendat`` events through the router's consumer, from the first produced to the
   last schedule written.

``--routers`` runs that many router instances (the same clock) sharing the work (each row is taken by one
of them under ``FOR UPDATE SKIP LOCKED``; tests/router/test_schedules.py proves none is released twice).
Prints the figures; asserts nothing (docs/timing.md keeps a run's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from herald import infra  # noqa: E402
from herald.cli import fresh_database  # noqa: E402
from services.router.app import create_app  # noqa: E402
from services.router.settings import Settings  # noqa: E402
from shared import create_topics  # noqa: E402


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def fill(conn: asyncpg.Connection, *, pending: int, due: int, at: datetime, source: str) -> float:
    """Write ``pending`` pending schedules, ``due`` of them due at ``at``, the rest spread over the next year; seconds it took."""
    event = json.dumps({"specversion": "1.0", "id": "x", "source": source, "type": "auth.password_changed", "data": {"user_id": "u"}})
    began = time.perf_counter()
    await conn.execute(
        """
        INSERT INTO router.schedules (id, source, cancel_key, event_id, event_type, event, partition_key, kind, due_at, event_time, user_ids, trace_id)
        SELECT md5($2 || n)::uuid, $2, 'k' || (n % 1000), 'e' || n, 'auth.password_changed',
               convert_to(replace($1, '"id": "x"', '"id": "e' || n || '"'), 'UTF8'), convert_to('u' || (n % 5000), 'UTF8'), 'sendat',
               CASE WHEN n < $3 THEN $4::timestamptz ELSE $4::timestamptz + (n * interval '31 seconds') END, now(), ARRAY['u' || (n % 5000)],
               md5('trace' || $2 || n)::uuid
          FROM generate_series(0, $5 - 1) AS n
        """,
        event, source, due, at, pending,
    )
    await conn.execute("ANALYZE router.schedules")
    return time.perf_counter() - began


async def run(args: argparse.Namespace) -> None:
    port = infra.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-schedules-"))
    broker = infra.start_tansu(port, log_path=workdir / "tansu.log")
    values = {
        "environment": "test",
        "kafka_bootstrap": f"127.0.0.1:{port}",
        "database_url": f"{args.postgres}/herald_bench_schedules",
        "redis_url": f"{args.redis}/{args.redis_db}",
        "kafka_topic_namespace": "",
        "kafka_group_prefix": f"bench-{uuid.uuid4().hex[:6]}",
        "kafka_partitions": 12,
        "schedule_release_batch": args.batch,
        "schedule_quota_per_source": args.pending + args.plan + 1,
        "log_level": "WARNING",
    }
    settings = Settings(**values)
    source = "bench/schedules"
    at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    clock = Clock(at - timedelta(seconds=5))
    try:
        await fresh_database(settings.database_url)
        redis = aioredis.Redis.from_url(settings.redis_url)
        await redis.flushdb()
        await redis.aclose()
        await create_topics(settings)
        conn = await asyncpg.connect(settings.database_url)
        took = await fill(conn, pending=args.pending, due=args.due, at=at, source=source)
        print(f"{args.pending:,} pending schedules written in {took:.1f}s ({args.due:,} due at one second); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        apps = [create_app(settings, clock=clock) for _ in range(args.routers)]
        async with contextlib.AsyncExitStack() as stack:
            for app in apps:
                await stack.enter_async_context(app.router.lifespan_context(app))
            lookups = []
            for _ in range(20):
                began = time.perf_counter()
                await conn.fetchval("SELECT min(due_at) FROM router.schedules WHERE status = 'pending'")
                lookups.append(time.perf_counter() - began)
            print(f"the scheduler's lookup of the next due time: median {sorted(lookups)[10] * 1000:.2f} ms")
            clock.now = at
            began = time.perf_counter()
            for app in apps:
                app.state.resources.extra["schedules"]._wake.set()
            while await conn.fetchval("SELECT count(*) FROM router.schedules WHERE status = 'released'") < args.due:
                await asyncio.sleep(0.05)
            released = time.perf_counter() - began
            print(f"release: {args.due:,} schedules due at one second released in {released:.2f}s ({args.due / released:,.0f}/s) by {args.routers} router(s)")
            early = await conn.fetchval("SELECT count(*) FROM router.schedules WHERE status = 'released' AND due_at > $1", at)
            print(f"released before their time: {early} (must be 0)")

            if args.plan:
                producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
                await producer.start()
                try:
                    later = (at + timedelta(days=2)).isoformat()
                    began = time.perf_counter()
                    for n in range(args.plan):
                        # the same source as the million: each batch's quota count runs over all of them
                        event = {"specversion": "1.0", "id": f"p{n}", "source": source, "type": "auth.password_changed", "sendat": later, "data": {"user_id": f"u{n}"}}
                        await producer.send(settings.domain_topic("auth.password_changed"), json.dumps(event).encode(), key=f"u{n}".encode())
                    await producer.flush()
                    while await conn.fetchval("SELECT count(*) FROM router.schedules WHERE source = $1 AND event_id LIKE 'p%'", source) < args.plan:
                        await asyncio.sleep(0.05)
                    planned = time.perf_counter() - began
                    print(f"planning: {args.plan:,} sendat events held in {planned:.2f}s ({args.plan / planned:,.0f}/s)")
                finally:
                    await producer.stop()
        await conn.close()
    finally:
        infra.stop(broker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--plan", type=int, default=10_000, help="sendat events planned through the router (0: skip)")
    parser.add_argument("--routers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1000, help="HERALD_SCHEDULE_RELEASE_BATCH")
    parser.add_argument("--postgres", default=os.environ.get("HERALD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432"))
    parser.add_argument("--redis", default=os.environ.get("HERALD_TEST_REDIS", "redis://127.0.0.1:6379"))
    parser.add_argument("--redis-db", type=int, default=int(os.environ.get("HERALD_BENCH_REDIS_DB", "13")))
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
