"""Benchmark: stream fan-out latency of a running inapp service (prints figures, asserts nothing).

    python -m tests.inapp.bench_fanout --url http://127.0.0.1:8106 --streams 50 --notifications 200

Opens ``--streams`` SSE streams (one per user, or all for one user with
``--one-user``), stores ``--notifications`` notifications the way the Kafka
handler does (PostgreSQL row, then Redis publish; Kafka itself is not measured)
using the ``HERALD_*`` database and Redis settings, and reports the time from
the start of each store to its arrival on every stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

import httpx
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.inapp.app import TEMPLATES
from services.inapp.handlers import store_notification
from services.inapp.settings import Settings
from shared import Channel, Dispatch, MessageTemplates, Metrics, Recipient, Resources, create_pool

from ..support import bearer


async def open_stream(client: httpx.AsyncClient, url: str, headers: dict[str, str], arrivals: dict[str, list[float]], ready: asyncio.Event) -> None:
    async with client.stream("GET", f"{url}/v1/inbox/stream", headers=headers) as response:
        response.raise_for_status()
        event = None
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
                if event == "ready":
                    ready.set()
            elif line.startswith("data:") and event == "notification":
                arrivals.setdefault(json.loads(line[5:])["title"], []).append(time.perf_counter())


async def main(args: argparse.Namespace) -> None:
    settings = Settings(environment="development")  # against `make run`'s inapp service
    templates = MessageTemplates(TEMPLATES)
    pool = await create_pool(settings.database_url, min_size=2, max_size=8)
    redis = Redis.from_url(settings.redis_url)
    res = Resources(settings=settings, broker=None, metrics=Metrics(CollectorRegistry()), pool=pool, redis=redis)  # type: ignore[arg-type]
    run = uuid.uuid4().hex[:6]
    users = [f"bench-{run}"] if args.one_user else [f"bench-{run}-{i}" for i in range(args.streams)]
    arrivals: dict[str, list[float]] = {}
    limits = httpx.Limits(max_connections=args.streams + 10)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None), limits=limits) as client:
        readies = []
        tasks = []
        for i in range(args.streams):
            user = users[i % len(users)]
            ready = asyncio.Event()
            readies.append(ready)
            tasks.append(asyncio.create_task(open_stream(client, args.url, bearer(settings, user), arrivals, ready)))
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
        started: dict[str, float] = {}
        began = time.perf_counter()
        for n in range(args.notifications):
            title = f"n{n}"
            user = users[n % len(users)]
            dispatch = Dispatch(
                notification_id=uuid.uuid4(), event_id=uuid.uuid4().hex, event_source="bench", event_type="system.update",
                category="system_updates", channel=Channel.inapp, recipient=Recipient(user_id=user), template="system_update",
                data={"title": title, "body": "."},
            )
            started[title] = time.perf_counter()
            await store_notification(dispatch, res, templates=templates, settings=settings)
        stored = time.perf_counter() - began
        expected = args.notifications * (args.streams if args.one_user else 1)
        deadline = time.monotonic() + 60
        while sum(len(v) for v in arrivals.values()) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    latencies = sorted(t - started[title] for title, times in arrivals.items() for t in times)
    received = len(latencies)
    print(f"streams={args.streams} notifications={args.notifications} one_user={args.one_user}")
    print(f"stored {args.notifications} in {stored:.2f}s ({args.notifications / stored:.0f}/s, row + publish, sequential)")
    print(f"deliveries {received}/{expected}")
    if latencies:
        q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
        print(f"store-start → stream latency ms: p50={q[49] * 1000:.1f} p95={q[94] * 1000:.1f} max={latencies[-1] * 1000:.1f}")
    await redis.aclose()
    await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8106")
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--notifications", type=int, default=200)
    parser.add_argument("--one-user", action="store_true", help="every stream belongs to one user (fan-out to many tabs)")
    asyncio.run(main(parser.parse_args()))
