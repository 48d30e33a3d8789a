"""Router benchmark: N domain events through a real router process on a real (embedded) Kafka broker.

    .venv/bin/python scripts/bench_router.py --events 20000 --rate 1000

Starts its own Tansu broker on a free port, a fresh database (``herald_bench_router``)
and a Redis database of its own (``--redis-db``), fills the recipients directory with
``--users`` users, and runs the router as one uvicorn process. Then:

1. warm-up: a few thousand events, so every profile is cached;
2. throughput: ``--events`` events produced as fast as possible; events/s routed is
   events / (time from the first event produced to the last dispatch written);
3. latency: ``--latency-events`` events paced at ``--rate`` events/s; routing latency is
   the Kafka timestamp of an event's first dispatch minus the event's own timestamp.

The event mix is 70% message.received (email, push, in-app), 20% booking.confirmed
(two recipients, 6 dispatches) and 10% marketing.promotion (3 dispatches); every
dispatch and every decision-trace row is really written. Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from herald import infra  # noqa: E402
from herald.cli import fresh_database  # noqa: E402
from herald.stack import Stack  # noqa: E402
from shared import HeraldSettings, create_topics  # noqa: E402


def make_event(i: int, users: list[str], run: str) -> tuple[str, dict]:
    rng = random.Random(i)
    a, b = rng.sample(users, 2)
    roll = rng.random()
    if roll < 0.7:
        event_type, data = "message.received", {"message_id": f"m{i}", "conversation_id": f"c{i % 97}", "sender_id": b, "sender_name": "Grace", "recipient_id": a, "preview": "See you at three!"}
    elif roll < 0.9:
        event_type, data = "booking.confirmed", {"booking_id": f"b{i}", "student_id": a, "instructor_id": b, "title": "Piano lesson", "starts_at": "2026-12-01T15:00:00Z"}
    else:
        event_type, data = "marketing.promotion", {"user_id": a, "campaign_id": "winter", "title": "20% off", "body": "Book before December 15.", "path": "/offers/winter"}
    event = {"specversion": "1.0", "id": f"{run}-{i}", "source": "bench", "type": event_type, "time": "2026-11-25T12:00:00Z", "data": data}
    return event_type, event


def inapp_expected(event: dict) -> int:
    return 2 if event["type"] == "booking.confirmed" else 1


async def prepare(settings: HeraldSettings, users: int) -> list[str]:
    await fresh_database(settings.database_url)
    conn = await asyncpg.connect(settings.database_url)
    ids = [f"bench_{n:06d}" for n in range(users)]
    await conn.copy_records_to_table(
        "recipients",
        schema_name="router",
        columns=["user_id", "email", "phone", "phone_verified_at", "locale", "timezone"],
        records=[(u, f"{u}@example.com", f"+1415555{n % 10000:04d}", None if n % 3 else time_now(), "en", "UTC") for n, u in enumerate(ids)],
    )
    await conn.close()
    client = aioredis.Redis.from_url(settings.redis_url)
    await client.flushdb()
    await client.aclose()
    await create_topics(settings)
    return ids


def time_now():
    import datetime as dt

    return dt.datetime.now(dt.UTC)


class Collector:
    """Reads notify.inapp (both lanes) and notes, per event, when its in-app dispatches were written."""

    def __init__(self, settings: HeraldSettings) -> None:
        self.consumer = AIOKafkaConsumer(
            settings.notify_topic("inapp"),
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=None,
            auto_offset_reset="latest",
            max_poll_records=5000,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        self.seen: dict[str, list[int]] = {}
        self.count = 0
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.consumer.start()
        await self.consumer.seek_to_end()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100, max_records=5000)
            for records in batches.values():
                for r in records:
                    event_id = json.loads(r.value)["event_id"]
                    self.seen.setdefault(event_id, []).append(r.timestamp)
                    self.count += 1

    async def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.count} of {count} in-app dispatches within {timeout:.0f}s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        await self.consumer.stop()


async def produce(producer: AIOKafkaProducer, settings: HeraldSettings, events: list[tuple[str, dict]], rate: float | None) -> dict[str, int]:
    """Send events (paced at ``rate``/s if given); the Kafka timestamp of each, by id."""
    stamps: dict[str, int] = {}
    futures = []
    started = time.perf_counter()
    for n, (event_type, event) in enumerate(events):
        if rate:
            due = started + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        key = (event["data"].get("recipient_id") or event["data"].get("student_id") or event["data"].get("user_id")).encode()
        futures.append((event["id"], await producer.send(settings.domain_topic(event_type), json.dumps(event).encode(), key=key)))
    for event_id, future in futures:
        metadata = await future
        stamps[event_id] = metadata.timestamp
    return stamps


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1] if len(values) > 1 else values[0]


async def run(args: argparse.Namespace) -> None:
    port = infra.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-router-"))
    broker = infra.start_tansu(port, log_path=workdir / "tansu.log")
    env = {
        **os.environ,
        "HERALD_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
        "HERALD_DATABASE_URL": f"{args.postgres}/herald_bench_router",
        "HERALD_REDIS_URL": f"{args.redis}/{args.redis_db}",
        "HERALD_KAFKA_TOPIC_NAMESPACE": "",
        "HERALD_KAFKA_GROUP_PREFIX": f"bench-{uuid.uuid4().hex[:6]}",
        "HERALD_KAFKA_PARTITIONS": str(args.partitions),
        "HERALD_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "HERALD_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "HERALD_KAFKA_MAX_BATCH": str(args.batch),
        "HERALD_ROUTER_PORT": str(infra.free_port()),
        "HERALD_LOG_LEVEL": args.log_level,
        "HERALD_ENVIRONMENT": "test",
    }
    settings = HeraldSettings(**{k.removeprefix("HERALD_").lower(): v for k, v in env.items() if k.startswith("HERALD_") and k != "HERALD_ROUTER_PORT"})
    stack = Stack(env=env, log_dir=workdir)
    try:
        users = await prepare(settings, args.users)
        print(f"directory: {len(users)} users; broker 127.0.0.1:{port}; logs in {workdir}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        from herald.stack import SERVICES

        spec = next(s for s in SERVICES if s.name == "router")
        if args.profile:
            env["HERALD_BENCH_PROFILE"] = str(Path(args.profile).resolve())
            spec = type(spec)(spec.name, "scripts.bench_router:profiled_app", spec.port)
        stack.start(spec)
        stack.wait_ready(spec, timeout=120)
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024)
        await producer.start()
        collector = Collector(settings)
        await collector.start()
        try:
            run_id = uuid.uuid4().hex[:6]
            phases = [("warm-up", args.warmup, None), ("throughput", args.events, None), ("latency", args.latency_events, args.rate)]
            offset = 0
            for name, count, rate in phases:
                events = [make_event(offset + i, users, run_id) for i in range(count)]
                offset += count
                expected = collector.count + sum(inapp_expected(e) for _, e in events)
                cpu0 = cpu_seconds(stack.procs["router"].pid)
                broker0, own0 = cpu_seconds(broker.pid), cpu_seconds(os.getpid())
                t0 = time.perf_counter()
                stamps = await produce(producer, settings, events, rate)
                await collector.wait_for(expected, timeout=args.timeout)
                elapsed = time.perf_counter() - t0
                cpu = cpu_seconds(stack.procs["router"].pid) - cpu0
                broker_cpu, own_cpu = cpu_seconds(broker.pid) - broker0, cpu_seconds(os.getpid()) - own0
                latencies = [min(collector.seen[i]) - ts for i, ts in stamps.items()]
                if name == "warm-up":
                    print(f"warm-up: {count} events in {elapsed:.1f}s")
                    continue
                line = f"{name}: {count} events in {elapsed:.2f}s = {count / elapsed:,.0f} events/s routed"
                line += f"; latency p50 {percentile(latencies, 0.5):.0f} ms, p99 {percentile(latencies, 0.99):.0f} ms, max {max(latencies):.0f} ms"
                line += f"; router CPU {cpu / count * 1e6:.0f} us/event ({cpu / elapsed:.0%} of a core)"
                line += f"; broker {broker_cpu / elapsed:.0%}, this script {own_cpu / elapsed:.0%} of a core"
                if rate:
                    line += f" (paced at {rate:,.0f} events/s)"
                print(line)
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"http://127.0.0.1:{env['HERALD_ROUTER_PORT']}/metrics/")).text
            routed = sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines() if l.startswith("herald_dispatches_total{") and 'outcome="routed"' in l)
            suppressed = sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines() if l.startswith("herald_dispatches_total{") and 'outcome="suppressed"' in l)
            print(f"router totals: {routed:,.0f} dispatches published, {suppressed:,.0f} suppressed (each one traced)")
        finally:
            await collector.stop()
            await producer.stop()
    finally:
        stack.stop_all()
        infra.stop(broker)


def profiled_app():
    """The router app with cProfile running from start-up to shutdown (``--profile``)."""
    import contextlib
    import cProfile

    from services.router.app import create_app

    app = create_app()
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a):
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            async with inner(a):
                yield
        finally:
            profiler.disable()
            profiler.dump_stats(os.environ["HERALD_BENCH_PROFILE"])

    app.router.lifespan_context = lifespan
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000, help="events in the throughput phase")
    parser.add_argument("--latency-events", type=int, default=5000, help="events in the paced latency phase")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s in the latency phase")
    parser.add_argument("--warmup", type=int, default=3000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--batch", type=int, default=2000, help="HERALD_KAFKA_MAX_BATCH of the router")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--profile", help="write a cProfile of the router process to this file")
    parser.add_argument("--postgres", default=os.environ.get("HERALD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432"))
    parser.add_argument("--redis", default=os.environ.get("HERALD_TEST_REDIS", "redis://127.0.0.1:6379"))
    parser.add_argument("--redis-db", type=int, default=int(os.environ.get("HERALD_BENCH_REDIS_DB", "13")))
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
