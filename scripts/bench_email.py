"""Email throughput against a slow provider: prints sends per second.

Starts its own embedded Kafka broker on a free port, a fresh database and the
sandbox (as a separate process) whose SMTP server or Resend stand-in answers
every message after ``--latency-ms`` (200 by default); fills ``notify.email``
with ``--count`` dispatches, then runs one email service (in this process), or
``--instances`` email service processes in one consumer group, and measures
from the first claim to the last send, as recorded in the ``email.ledger`` table.

    .venv/bin/python scripts/bench_email.py [--provider smtp|resend] [--count 5000]
        [--latency-ms 200] [--concurrency 256] [--instances 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from herald import infra  # noqa: E402
from herald.cli import fresh_database  # noqa: E402
from services.email.app import create_app  # noqa: E402
from services.email.settings import Settings  # noqa: E402
from shared import Channel, Dispatch, Recipient, create_topics, notification_id  # noqa: E402

#: What the email service processes of --instances get from this run's settings.
SETTINGS_PASSED = {
    "kafka_bootstrap", "database_url", "redis_url", "kafka_topic_namespace", "kafka_group_prefix", "email_provider", "smtp_port", "resend_api_base",
    "concurrency", "smtp_pool_size", "resend_max_connections", "database_pool_max", "kafka_max_batch", "log_level", "environment",
}

EXAMPLE = {"booking_id": "b_42", "student_id": "u_1", "instructor_id": "u_2", "title": "Piano lesson", "starts_at": "2026-12-01T15:00:00Z"}


def start_sandbox(http_port: int, smtp_port: int, latency_ms: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, HERALD_SANDBOX_SMTP_PORT=str(smtp_port),
               HERALD_SANDBOX_SMTP_DELAY_MS=str(latency_ms), HERALD_SANDBOX_RESEND_DELAY_MS=str(latency_ms))
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "sandbox.app:create_app", "--host", "127.0.0.1", "--port", str(http_port),
           "--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115
    infra.wait_port("127.0.0.1", http_port, timeout=30, proc=proc)
    infra.wait_port("127.0.0.1", smtp_port, timeout=30, proc=proc)
    return proc


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) used so far by this process, or by ``pid`` (Linux)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fill(settings: Settings, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        topic = settings.notify_topic("email")
        pending = []
        for i in range(count):
            user = f"u_{i}"
            event_id = uuid.uuid4().hex
            dispatch = Dispatch(
                notification_id=notification_id(source="bench", event_id=event_id, user_id=user, channel="email"),
                event_id=event_id, event_source="bench", event_type="booking.confirmed", category="lesson_updates",
                channel=Channel.email, recipient=Recipient(user_id=user, email=f"student{i}@example.com"),
                template="booking_confirmed_student", url="http://localhost:3000/bookings/b_42", data=EXAMPLE,
            )
            pending.append(await producer.send(topic, dispatch.model_dump_json().encode(), key=user.encode()))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def run(args: argparse.Namespace) -> None:
    bench_dir = ROOT / ".artifacts" / "bench_email"
    bench_dir.mkdir(parents=True, exist_ok=True)
    kafka_port, http_port, smtp_port = infra.free_port(), infra.free_port(), infra.free_port()
    broker = infra.start_tansu(kafka_port, log_path=bench_dir / "tansu.log")
    sandbox = start_sandbox(http_port, smtp_port, args.latency_ms, bench_dir / "sandbox.log")
    try:
        database_url = f"{args.postgres}/herald_bench_email"
        await fresh_database(database_url)
        settings = Settings(
            kafka_bootstrap=f"127.0.0.1:{kafka_port}", database_url=database_url, redis_url=args.redis,
            kafka_topic_namespace="bench.", kafka_group_prefix="herald-bench", email_provider=args.provider, smtp_port=smtp_port, resend_api_base=f"http://127.0.0.1:{http_port}",
            concurrency=args.concurrency, smtp_pool_size=args.concurrency, resend_max_connections=args.concurrency, database_pool_max=args.db_pool,
            kafka_max_batch=args.batch, log_level="WARNING", environment="development",
        )
        await create_topics(settings)
        await fill(settings, args.count)
        db = await asyncpg.connect(database_url)

        async def finished() -> None:
            deadline = time.monotonic() + args.timeout
            while (done := await db.fetchval("SELECT count(*) FROM email.ledger WHERE status <> 'claimed'")) < args.count:
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {done} of {args.count} finished within {args.timeout}s")
                await asyncio.sleep(0.2)

        profiler = None
        if args.instances > 1:
            # Separate processes in one consumer group, started before the topic is read: they share its partitions.
            env = dict(os.environ, PYTHONPATH=str(ROOT), **{f"HERALD_{k.upper()}": str(v) for k, v in settings.model_dump(mode="json").items() if k in SETTINGS_PASSED})
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "uvicorn", "--factory", "services.email.app:create_app", "--host", "127.0.0.1", "--port", str(infra.free_port()), "--no-access-log"],
                    cwd=ROOT, env=env, stdout=open(bench_dir / f"email-{n}.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115
                )
                for n in range(args.instances)
            ]
            started, sandbox_cpu = time.perf_counter(), cpu_seconds(sandbox.pid)
            try:
                await finished()
                cpu = sum(cpu_seconds(p.pid) for p in procs)
            finally:
                for proc in procs:
                    infra.stop(proc, timeout=30)
            wall = time.perf_counter() - started
        else:
            app = create_app(settings)
            if args.profile:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            started, cpu, sandbox_cpu = time.perf_counter(), cpu_seconds(), cpu_seconds(sandbox.pid)
            async with app.router.lifespan_context(app):
                await finished()
            wall = time.perf_counter() - started
            cpu = cpu_seconds() - cpu
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        sandbox_cpu = cpu_seconds(sandbox.pid) - sandbox_cpu
        row = await db.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'sent') AS sent, count(*) FILTER (WHERE status <> 'sent') AS other, "
            "extract(epoch FROM max(sent_at) - min(claimed_at)) AS seconds FROM email.ledger"
        )
        await db.close()
        received = len(httpx.get(f"http://127.0.0.1:{http_port}/api/messages", params={"provider": args.provider}, timeout=120).json())
        seconds = float(row["seconds"])
        print(f"loop={type(asyncio.get_running_loop()).__module__.split('.')[0]} provider={args.provider} latency={args.latency_ms}ms concurrency={args.concurrency} batch={args.batch} count={args.count} instances={args.instances}")
        print(f"sent={row['sent']} not_sent={row['other']} received_by_sandbox={received}")
        print(f"first claim to last send: {seconds:.2f}s -> {row['sent'] / seconds:.0f} sends/s")
        print(f"including start-up and consumer-group join: {wall:.2f}s -> {row['sent'] / wall:.0f} sends/s")
        print(f"CPU per send: email service{'s' if args.instances > 1 else ''} {cpu / row['sent'] * 1000:.2f} ms (one core would allow {row['sent'] / cpu:.0f}/s), "
              f"sandbox {sandbox_cpu / row['sent'] * 1000:.2f} ms; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        infra.stop(sandbox)
        infra.stop(broker)
        with contextlib.suppress(Exception):
            admin = await asyncpg.connect(f"{args.postgres}/postgres")
            await admin.execute('DROP DATABASE IF EXISTS "herald_bench_email" WITH (FORCE)')
            await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", choices=["smtp", "resend"], default="smtp")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--db-pool", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--instances", type=int, default=1, help="email service processes in one consumer group (more than 1: not profiled)")
    parser.add_argument("--profile", metavar="PATH", help="write a cProfile of the service's run to PATH")
    parser.add_argument("--postgres", default=os.environ.get("HERALD_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432"))
    parser.add_argument("--redis", default=os.environ.get("HERALD_BENCH_REDIS", "redis://127.0.0.1:6379/13"))
    args = parser.parse_args()
    try:
        import uvloop  # what uvicorn runs the service on, when installed

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run(args))


if __name__ == "__main__":
    main()
