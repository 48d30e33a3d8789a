"""`make bench`: the whole pipeline as `make run` starts it, measured end to end, next to a Celery worker.

Starts its own infrastructure (a private PostgreSQL cluster and Redis on free ports, the embedded
Kafka broker), migrates, creates topics, fills the recipients directory, starts the sandbox (SMTP
answering at once: a light provider stand-in) and the six services as processes, with the settings
`make run` uses. Each event is a ``system.update`` for one user: one email (SMTP) and one in-app
notification; a notification is done when ``sent`` for it is on ``notify.status``. Then:

1. throughput: ``--events`` events written to Kafka at once, ``--runs`` times; notifications per
   second from the first event written to the last ``sent``, and CPU seconds per 1,000 notifications
   of every process (each service, the broker, PostgreSQL, Redis, the sandbox);
2. latency: events paced at 25, 50 and 75 % of the measured capacity for ``--latency-seconds``;
   publish (the event's Kafka timestamp) to ``sent`` (the status's Kafka timestamp), percentiles;
3. broadcast: one ``system.update`` without recipients to a directory of ``--broadcast-users``:
   when the router had decided every dispatch, when every in-app row was stored, how far email got;
4. the same events through a Celery + Redis worker (``scripts/bench_celery.py``) doing the same work
   per event, on the same PostgreSQL, Redis and SMTP sink, with the Herald services stopped:
   throughput, CPU per 1,000 notifications, latency at the same rates;
5. peak RSS of every service over the whole run.

Figures are medians over the runs; the machine is shared, so nothing here asserts a speed. The result
goes to ``.artifacts/bench.json`` and is compared with the stored baseline (``docs/bench-baseline.json``);
``--save-baseline`` replaces it.

    python scripts/bench.py                       # about 10 minutes
    python scripts/bench.py --quick               # a smoke run (small figures, about 3 minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from herald import infra  # noqa: E402
from herald.cli import dev_vapid_private_key, fresh_database  # noqa: E402
from herald.stack import SANDBOX, SERVICES, Stack  # noqa: E402
from shared import HeraldSettings, create_topics  # noqa: E402

ARTIFACTS = ROOT / ".artifacts"
BASELINE = ROOT / "docs" / "bench-baseline.json"
BY_NAME = {spec.name: spec for spec in (*SERVICES, SANDBOX)}
CHANNELS = ("email", "inapp")
FRACTIONS = (0.25, 0.5, 0.75)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------------- processes


class Processes:
    """CPU seconds and peak memory of named process trees (a service and what it started)."""

    def __init__(self) -> None:
        self.roots: dict[str, int] = {}

    def add(self, name: str, pid: int) -> None:
        self.roots[name] = pid

    def cpu(self) -> dict[str, float]:
        """User + system seconds of each tree so far, with the children it has reaped (PostgreSQL's backends)."""
        out: dict[str, float] = {}
        for name, pid in self.roots.items():
            try:
                root = psutil.Process(pid)
                times = root.cpu_times()
                total = times.user + times.system + times.children_user + times.children_system
                for child in root.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        t = child.cpu_times()
                        total += t.user + t.system
            except psutil.Error:
                continue
            out[name] = total
        return out

    @staticmethod
    def peak_rss_mb(pid: int) -> float:
        """VmHWM: the most resident memory the process has held since it started."""
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def cpu_per_1000(before: dict[str, float], after: dict[str, float], notifications: int) -> dict[str, float]:
    return {name: round((after[name] - before.get(name, 0.0)) / notifications * 1000, 3) for name in after}


# ---------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:6]
        self.tmp = Path(tempfile.mkdtemp(prefix=f"herald-bench-{self.run_id}-"))
        os.chmod(self.tmp, 0o755)  # the postgres OS user runs the private cluster inside
        self.log_dir = ARTIFACTS / "bench" / self.run_id
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pg = infra.PrivatePostgres(self.tmp / "pg")
        self.redis = infra.PrivateRedis(self.tmp / "redis")
        self.kafka_port = infra.free_port()
        self.smtp_port = infra.free_port()
        self.tansu: subprocess.Popen | None = None
        self.stack: Stack | None = None
        self.celery: subprocess.Popen | None = None
        self.procs = Processes()
        self.settings: HeraldSettings | None = None
        self.env: dict[str, str] = {}
        self.users: list[str] = []
        self.sequence = 0
        self.producer: AIOKafkaProducer | None = None
        self.statuses: AIOKafkaConsumer | None = None
        self.done: dict[tuple[str, str], int] = {}  # (event id, channel) -> Kafka timestamp (ms) of its `sent`
        self.failed: dict[tuple[str, str], str] = {}
        self.reader: asyncio.Task | None = None
        self.profiles: dict[str, list[tuple[str, float]]] = {}

    # ------------------------------------------------------------------ set-up

    def start_infrastructure(self) -> None:
        self.pg.start()
        self.redis.start()
        self.tansu = infra.start_tansu(self.kafka_port, log_path=self.log_dir / "tansu.log")
        ports = {spec.name: infra.free_port() for spec in (*SERVICES, SANDBOX)}
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env.update({BY_NAME[name].port_variable: str(port) for name, port in ports.items()})
        # What `make run` sets (herald/cli.py cmd_run), on this run's own ports.
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "HERALD_ENVIRONMENT": "development",
                "HERALD_LOG_JSON": "true",
                "HERALD_LOG_LEVEL": self.args.log_level,
                "HERALD_KAFKA_BOOTSTRAP": f"127.0.0.1:{self.kafka_port}",
                "HERALD_DATABASE_URL": self.pg.url(),
                "HERALD_REDIS_URL": self.redis.url(),
                "HERALD_SMTP_HOST": "127.0.0.1",
                "HERALD_SMTP_PORT": str(self.smtp_port),
                "HERALD_SANDBOX_SMTP_PORT": str(self.smtp_port),
                "HERALD_RESEND_API_BASE": f"http://127.0.0.1:{ports['sandbox']}",
                "HERALD_TWILIO_API_BASE": f"http://127.0.0.1:{ports['sandbox']}",
                "HERALD_PUSH_DEV_HOSTS": f"127.0.0.1:{ports['sandbox']}",
                "HERALD_VAPID_PRIVATE_KEY": dev_vapid_private_key(),
                "HERALD_UNSUBSCRIBE_URL": f"http://127.0.0.1:{ports['email']}/v1/unsubscribe",
                "HERALD_ROUTER_URL": f"http://127.0.0.1:{ports['router']}",
            }
        )
        for item in self.args.set or []:
            key, _, value = item.partition("=")
            env[key] = value
        self.env = env
        fields = HeraldSettings.model_fields
        self.settings = HeraldSettings(**{k.removeprefix("HERALD_").lower(): v for k, v in env.items() if k.startswith("HERALD_") and k.removeprefix("HERALD_").lower() in fields})
        asyncio.run(fresh_database(self.pg.url()))
        asyncio.run(create_topics(self.settings))
        self.stack = Stack(env=env, log_dir=self.log_dir)
        self.stack.start_all((SANDBOX, *SERVICES), timeout=180)
        for name, proc in self.stack.procs.items():
            self.procs.add(name, proc.pid)
        self.procs.add("broker", self.tansu.pid)
        self.procs.add("postgres", int((self.pg.data / "postmaster.pid").read_text().split()[0]))
        assert self.redis.proc is not None
        self.procs.add("redis", self.redis.proc.pid)

    def stop_services(self) -> None:
        """Stop the six services (SIGTERM, drain); the sandbox, the SMTP sink of both designs, keeps running."""
        assert self.stack is not None
        services = {spec.name for spec in SERVICES}
        for name, proc in self.stack.procs.items():
            if name in services:
                os.killpg(proc.pid, signal.SIGTERM)
        for name in services:
            infra.stop(self.stack.procs.pop(name), timeout=40)
            self.procs.roots.pop(name, None)

    def stop_infrastructure(self) -> None:
        if self.stack is not None:
            self.stack.stop_all()
        if self.celery is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.celery.pid, signal.SIGTERM)
            infra.stop(self.celery)
        if self.tansu is not None:
            infra.stop(self.tansu)
        self.redis.stop()
        with contextlib.suppress(Exception):
            self.pg.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    async def add_users(self, count: int) -> list[str]:
        """``count`` more recipients in the directory (email, English, UTC), written in one COPY."""
        start = len(self.users)
        ids = [f"b{n:07d}" for n in range(start, start + count)]
        conn = await asyncpg.connect(self.pg.url())
        try:
            await conn.copy_records_to_table(
                "recipients", schema_name="router", columns=["user_id", "email", "locale", "timezone"],
                records=[(u, f"{u}@example.com", "en", "UTC") for u in ids],
            )
            await conn.execute("ANALYZE router.recipients")
        finally:
            await conn.close()
        self.users += ids
        return ids

    def event(self, user: str | None) -> dict[str, Any]:
        self.sequence += 1
        data: dict[str, Any] = {"title": "Scheduled maintenance", "body": "Herald will be read-only on Sunday 02:00-03:00 UTC.", "path": "/status"}
        if user is not None:
            data["user_ids"] = [user]
        return {
            "specversion": "1.0", "id": f"{self.run_id}-{self.sequence}", "source": "bench", "type": "system.update",
            "time": dt.datetime.now(dt.UTC).isoformat(), "data": data,
        }

    def events(self, count: int) -> list[dict[str, Any]]:
        return [self.event(self.users[(self.sequence + i) % self.args.users]) for i in range(count)]

    # ------------------------------------------------------------------ Herald

    async def open_kafka(self) -> None:
        assert self.settings is not None
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all", linger_ms=5, max_batch_size=512 * 1024)
        await self.producer.start()
        self.statuses = AIOKafkaConsumer(
            self.settings.status_topic, bootstrap_servers=self.settings.kafka_bootstrap, group_id=None,
            auto_offset_reset="earliest", max_poll_records=10000, fetch_max_wait_ms=20,
        )
        await self.statuses.start()
        self.reader = asyncio.create_task(self._read_statuses())

    async def close_kafka(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        for client in (self.statuses, self.producer):
            if client is not None:
                await client.stop()

    async def _read_statuses(self) -> None:
        assert self.statuses is not None
        while True:
            batches = await self.statuses.getmany(timeout_ms=200, max_records=10000)
            for records in batches.values():
                for record in records:
                    status = json.loads(record.value)
                    key = (status["event_id"], status["channel"])
                    if status["status"] == "sent":
                        self.done.setdefault(key, record.timestamp)
                    elif status["status"] in {"failed", "expired", "dead_lettered", "suppressed"}:
                        self.failed[key] = f"{status['status']}: {status.get('reason')}"

    async def produce(self, events: list[dict[str, Any]], rate: float | None = None) -> dict[str, int]:
        """Write events to Kafka (paced at ``rate`` events/s if given); each one's Kafka timestamp (ms)."""
        assert self.producer is not None and self.settings is not None
        topic = self.settings.domain_topic("system.update")
        futures = []
        started = time.perf_counter()
        for n, event in enumerate(events):
            if rate:
                delay = started + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            event["time"] = dt.datetime.now(dt.UTC).isoformat()  # the `route` hop starts at the event's time
            key = (event["data"].get("user_ids") or ["*"])[0].encode()
            futures.append((event["id"], await self.producer.send(topic, json.dumps(event).encode(), key=key)))
        return {event_id: (await future).timestamp for event_id, future in futures}

    async def wait_done(self, event_ids: Iterable[str], timeout: float) -> None:
        wanted = {(e, c) for e in event_ids for c in CHANNELS}
        deadline = time.monotonic() + timeout
        while True:
            missing = wanted - self.done.keys()
            if not missing:
                return
            failed = [self.failed[k] for k in missing if k in self.failed]
            if failed:
                raise RuntimeError(f"{len(failed)} notifications did not end sent, e.g. {failed[0]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(missing)} of {len(wanted)} notifications not sent within {timeout:.0f}s")
            await asyncio.sleep(0.05)

    async def idle(self, seconds: float) -> dict[str, float]:
        """Percent of a core each process uses while nothing is sent."""
        before = self.procs.cpu()
        await asyncio.sleep(seconds)
        after = self.procs.cpu()
        return {name: round((after[name] - before.get(name, 0.0)) / seconds * 100, 1) for name in after}

    async def herald_throughput(self, count: int, *, profile: bool = False) -> dict[str, Any]:
        events = self.events(count)
        spies = self.start_profiles() if profile else {}
        before = self.procs.cpu()
        stamps = await self.produce(events)
        await self.wait_done(stamps, timeout=self.args.timeout)
        after = self.procs.cpu()
        if spies:
            self.profiles = self.finish_profiles(spies)
        first = min(stamps.values())
        last = max(self.done[(e, c)] for e in stamps for c in CHANNELS)
        notifications = count * len(CHANNELS)
        return {"notifications_per_s": notifications / max((last - first) / 1000, 1e-3), "cpu_ms_per_notification": cpu_per_1000(before, after, notifications)}

    async def herald_latency(self, rate: float, seconds: float) -> dict[str, Any]:
        events = self.events(max(20, int(rate * seconds)))
        hops0 = await self.hops()
        stamps = await self.produce(events, rate=rate)
        await self.wait_done(stamps, timeout=self.args.timeout)
        hops1 = await self.hops()
        latencies = [self.done[(e, c)] - ts for e, ts in stamps.items() for c in CHANNELS]
        figures: dict[str, Any] = latency_figures(rate, latencies)
        figures["hops_mean_ms"] = {
            key: round((total - hops0.get(key, (0.0, 0))[0]) / (count - hops0.get(key, (0.0, 0))[1]) * 1000, 1)
            for key, (total, count) in hops1.items()
            if count > hops0.get(key, (0.0, 0))[1]
        }
        return figures

    async def hops(self) -> dict[str, tuple[float, float]]:
        """``hop/channel`` -> (seconds, count) of herald_hop_latency_seconds and of the provider call, over the services."""
        assert self.stack is not None
        out: dict[str, list[float]] = {}
        async with httpx.AsyncClient() as client:
            for service in ("router", "email", "inapp"):
                text = (await client.get(f"{self.stack.url(BY_NAME[service])}/metrics")).text
                for line in text.splitlines():
                    for name, hop in (("herald_hop_latency_seconds", None), ("herald_provider_latency_seconds", "provider")):
                        for part, index in (("_sum{", 0), ("_count{", 1)):
                            if line.startswith(name + part):
                                labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1 : line.index("}")].split(",") if "=" in kv)
                                labels = {k: v.strip('"') for k, v in labels.items()}
                                key = f"{hop or labels.get('hop')}/{labels.get('channel', service)}"
                                out.setdefault(key, [0.0, 0.0])[index] += float(line.rsplit(" ", 1)[1])
        return {key: (v[0], v[1]) for key, v in out.items()}

    def start_profiles(self) -> dict[str, tuple[subprocess.Popen, Path]]:
        """py-spy sampling every service (100 Hz, without pausing it) until finish_profiles."""
        assert self.stack is not None
        spies = {}
        for name in ("router", "email", "inapp"):
            out = self.log_dir / f"profile-{name}.txt"
            cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(self.stack.procs[name].pid), "--rate", "100",
                   "--format", "raw", "--output", str(out), "--nonblocking", "--duration", "600"]
            spies[name] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out)
        time.sleep(1)  # py-spy attaches
        return spies

    @staticmethod
    def finish_profiles(spies: dict[str, tuple[subprocess.Popen, Path]]) -> dict[str, list[tuple[str, float]]]:
        """Each service's functions that used the most CPU themselves (share of its samples, in %)."""
        for proc, _ in spies.values():
            proc.send_signal(signal.SIGINT)
        out = {}
        for name, (proc, path) in spies.items():
            proc.wait(30)
            own: dict[str, int] = {}
            total = 0
            for line in path.read_text().splitlines() if path.exists() else []:
                stack, _, count = line.rpartition(" ")
                leaf = stack.rsplit(";", 1)[-1]
                own[leaf] = own.get(leaf, 0) + int(count)
                total += int(count)
            top = sorted(own.items(), key=lambda kv: -kv[1])[:12]
            out[name] = [(frame.replace(str(ROOT) + "/", "").replace(sys.prefix + "/", ""), round(n / total * 100, 1)) for frame, n in top] if total else []
        return out

    async def metric(self, service: str, name: str, **labels: str) -> float:
        assert self.stack is not None
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"{self.stack.url(BY_NAME[service])}/metrics")).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def broadcast(self, users: int) -> dict[str, Any]:
        """One system.update to everyone: when were all dispatches decided, all in-app rows stored."""
        if len(self.users) < users:
            await self.add_users(users - len(self.users))
        decided0 = await self.metric("router", "herald_dispatches_total")
        stored0 = await self.metric("inapp", "herald_inbox_operations_total", operation="stored")
        sent0 = await self.metric("email", "herald_deliveries_total", status="sent")
        stamps = await self.produce([self.event(None)])
        began = next(iter(stamps.values())) / 1000
        decided_at = stored_at = None
        deadline = time.monotonic() + self.args.broadcast_timeout
        while time.monotonic() < deadline and stored_at is None:
            await asyncio.sleep(0.5)
            now = time.time()
            if decided_at is None and await self.metric("router", "herald_dispatches_total") - decided0 >= 2 * users:
                decided_at = now - began
            if await self.metric("inapp", "herald_inbox_operations_total", operation="stored") - stored0 >= users:
                stored_at = now - began
        sent = await self.metric("email", "herald_deliveries_total", status="sent") - sent0
        assert self.stack is not None
        rss = {name: round(Processes.peak_rss_mb(proc.pid), 1) for name, proc in self.stack.procs.items()}
        return {"users": users, "decided_s": decided_at, "inapp_stored_s": stored_at, "email_sent_by_then": int(sent), "peak_rss_mb": rss}

    # ------------------------------------------------------------------ Celery

    def start_celery(self) -> None:
        env = dict(self.env, BENCH_CELERY_BROKER=self.redis.url(1), BENCH_DATABASE_URL=self.pg.url(), BENCH_SMTP_PORT=str(self.smtp_port))
        cmd = [
            sys.executable, "-m", "celery", "-A", "scripts.bench_celery", "worker", "--pool", "prefork",
            "--concurrency", str(self.args.celery_concurrency), "--loglevel", "WARNING",
            "--without-heartbeat", "--without-mingle", "--without-gossip",
        ]
        log = open(self.log_dir / "celery.log", "ab")  # noqa: SIM115 - lives as long as the worker
        self.celery = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.add("celery", self.celery.pid)

    async def celery_run(self, events: list[dict[str, Any]], rate: float | None = None) -> tuple[dict[str, float], dict[str, float]]:
        """Enqueue one task per event (paced at ``rate``); (event id -> enqueued, event id -> done), epoch seconds."""
        client = aioredis.Redis.from_url(self.redis.url(1))
        os.environ["BENCH_CELERY_BROKER"] = self.redis.url(1)
        from scripts.bench_celery import DONE, FAILED, app

        app.conf.broker_url = self.redis.url(1)

        def enqueue() -> dict[str, float]:
            sent: dict[str, float] = {}
            started = time.perf_counter()
            with app.producer_or_acquire() as producer:
                for n, event in enumerate(events):
                    if rate:
                        delay = started + n / rate - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                    sent[event["id"]] = time.time()
                    app.send_task("notify", args=[event], producer=producer)
            return sent

        try:
            sent = await asyncio.to_thread(enqueue)
            done: dict[str, float] = {}
            deadline = time.monotonic() + self.args.timeout
            while len(done) < len(events):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Celery finished {len(done)} of {len(events)} events within {self.args.timeout:.0f}s")
                failure = await client.lindex(FAILED, 0)
                if failure is not None:
                    raise RuntimeError(f"a Celery task failed: {failure.decode()[-500:]}; see {self.log_dir / 'celery.log'}")
                if self.celery is not None and self.celery.poll() is not None:
                    raise RuntimeError(f"the Celery worker exited ({self.celery.returncode}); see {self.log_dir / 'celery.log'}")
                for raw in await client.lpop(DONE, 10000) or []:
                    event_id, at = raw.decode().split()
                    if event_id in sent:
                        done[event_id] = float(at)
                await asyncio.sleep(0.05)
            return sent, done
        finally:
            await client.aclose()

    async def celery_throughput(self, count: int) -> dict[str, Any]:
        events = self.events(count)
        before = self.procs.cpu()
        sent, done = await self.celery_run(events)
        after = self.procs.cpu()
        notifications = count * len(CHANNELS)
        return {"notifications_per_s": notifications / max(max(done.values()) - min(sent.values()), 1e-3), "cpu_ms_per_notification": cpu_per_1000(before, after, notifications)}

    async def celery_latency(self, rate: float, seconds: float) -> dict[str, float]:
        sent, done = await self.celery_run(self.events(max(20, int(rate * seconds))), rate=rate)
        return latency_figures(rate, [(done[e] - sent[e]) * 1000 for e in sent for _ in CHANNELS])


def latency_figures(rate: float, latencies: list[float]) -> dict[str, float]:
    return {
        "events_per_s": round(rate, 1), "p50_ms": round(percentile(latencies, 0.5), 1), "p95_ms": round(percentile(latencies, 0.95), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1), "max_ms": round(max(latencies), 1),
    }


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    names = sorted({name for run in runs for name in run["cpu_ms_per_notification"]})
    cpu = {name: round(median(r["cpu_ms_per_notification"].get(name, 0.0) for r in runs), 3) for name in names}
    return {
        "notifications_per_s": round(median(r["notifications_per_s"] for r in runs), 1),
        "runs": [round(r["notifications_per_s"], 1) for r in runs],
        "cpu_ms_per_notification": cpu,
    }


async def measure(bench: Bench) -> dict[str, Any]:
    args = bench.args
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "load_before": round(os.getloadavg()[0], 2), "date": dt.date.today().isoformat(),
        },
        "settings": {"events": args.events, "runs": args.runs, "latency_seconds": args.latency_seconds, "broadcast_users": args.broadcast_users, "celery_concurrency": args.celery_concurrency},
    }
    await bench.add_users(args.users)
    await bench.open_kafka()
    try:
        log(f"warm-up: {args.warmup} events")
        await bench.herald_throughput(args.warmup)
        idle = await bench.idle(args.idle_seconds)
        runs = []
        for n in range(args.runs):
            runs.append(await bench.herald_throughput(args.events, profile=args.profile and n == 0))
            log(f"Herald throughput run {n + 1}: {runs[-1]['notifications_per_s']:,.0f} notifications/s")
        herald = summarise_runs(runs)
        herald["idle_cpu_percent"] = idle
        if bench.profiles:
            herald["profile_own_cpu_percent"] = bench.profiles
        capacity = herald["notifications_per_s"] / len(CHANNELS)  # events/s
        herald["latency"] = []
        for fraction in FRACTIONS:
            figures = await bench.herald_latency(capacity * fraction, args.latency_seconds)
            figures["fraction_of_capacity"] = fraction
            herald["latency"].append(figures)
            log(f"Herald latency at {figures['events_per_s']:.0f} events/s: p50 {figures['p50_ms']:.0f} ms, p99 {figures['p99_ms']:.0f} ms")
        for rate in args.rates:
            figures = await bench.herald_latency(rate, args.latency_seconds)
            herald["latency"].append(figures)
            log(f"Herald latency at {rate:.0f} events/s: p50 {figures['p50_ms']:.0f} ms, p99 {figures['p99_ms']:.0f} ms")
        if args.broadcast_users:
            log(f"broadcast to {args.broadcast_users:,} users")
            result["broadcast"] = await bench.broadcast(args.broadcast_users)
            log(f"broadcast: decided in {result['broadcast']['decided_s']} s, in-app stored in {result['broadcast']['inapp_stored_s']} s")
        assert bench.stack is not None
        herald["peak_rss_mb"] = {name: round(Processes.peak_rss_mb(proc.pid), 1) for name, proc in bench.stack.procs.items()}
        result["herald"] = herald
    finally:
        await bench.close_kafka()
    if args.celery:
        bench.stop_services()  # idle services would take CPU from the worker
        bench.start_celery()
        log(f"Celery worker ({args.celery_concurrency} processes) warm-up")
        await bench.celery_throughput(args.warmup)
        runs = []
        for n in range(args.runs):
            runs.append(await bench.celery_throughput(args.events))
            log(f"Celery throughput run {n + 1}: {runs[-1]['notifications_per_s']:,.0f} notifications/s")
        celery = summarise_runs(runs)
        celery["latency"] = []
        for figures in herald["latency"]:
            rate = figures["events_per_s"]
            if rate * len(CHANNELS) > 0.9 * celery["notifications_per_s"]:
                continue  # beyond what the worker can do: it would only measure its queue
            celery["latency"].append(await bench.celery_latency(rate, args.latency_seconds))
        result["celery"] = celery
    return result


# ---------------------------------------------------------------------- report


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The figures compared with the baseline, by name (only throughput is better higher: HIGHER_IS_BETTER)."""
    herald = result["herald"]
    out = {"herald notifications/s": herald["notifications_per_s"], "herald CPU ms/notification": sum(herald["cpu_ms_per_notification"].values())}
    for figures in herald["latency"]:
        if "fraction_of_capacity" in figures:
            out[f"herald p99 ms at {figures['fraction_of_capacity']:.0%} of capacity"] = figures["p99_ms"]
    if result.get("broadcast") and result["broadcast"].get("inapp_stored_s"):
        out["broadcast in-app s per 100k users"] = result["broadcast"]["inapp_stored_s"] / result["broadcast"]["users"] * 100_000
    return out


HIGHER_IS_BETTER = {"herald notifications/s"}


def report(result: dict[str, Any], baseline: dict[str, Any] | None) -> list[str]:
    herald = result["herald"]
    lines = [f"machine: {result['machine']}"]
    lines.append(f"Herald: {herald['notifications_per_s']:,.0f} notifications/s (median of {herald['runs']})")
    services = herald["cpu_ms_per_notification"]
    lines.append("  CPU ms per notification: " + ", ".join(f"{n} {v:.2f}" for n, v in sorted(services.items(), key=lambda kv: -kv[1])) + f"; all {sum(services.values()):.2f}")
    for f in herald["latency"]:
        lines.append(f"  latency at {f['events_per_s']:,.0f} events/s: p50 {f['p50_ms']:.0f} ms, p95 {f['p95_ms']:.0f}, p99 {f['p99_ms']:.0f}, max {f['max_ms']:.0f}")
        if f.get("hops_mean_ms"):
            lines.append("    mean per hop (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(f["hops_mean_ms"].items())))
    lines.append("  idle, % of a core: " + ", ".join(f"{n} {v:.1f}" for n, v in sorted(herald.get("idle_cpu_percent", {}).items(), key=lambda kv: -kv[1])))
    for name, top in herald.get("profile_own_cpu_percent", {}).items():
        lines.append(f"  profile of {name} (own CPU, % of its samples):")
        lines += [f"    {share:5.1f}  {frame}" for frame, share in top]
    lines.append("  peak RSS MB: " + ", ".join(f"{n} {v:.0f}" for n, v in herald["peak_rss_mb"].items()))
    if result.get("broadcast"):
        b = result["broadcast"]
        def seconds(value: float | None) -> str:
            return "(not within the timeout)" if value is None else f"{value:.1f} s"

        lines.append(f"broadcast to {b['users']:,}: decided in {seconds(b['decided_s'])}, in-app stored in {seconds(b['inapp_stored_s'])}, {b['email_sent_by_then']:,} emails sent by then")
    if result.get("celery"):
        c = result["celery"]
        lines.append(f"Celery: {c['notifications_per_s']:,.0f} notifications/s (median of {c['runs']}); Herald is {herald['notifications_per_s'] / c['notifications_per_s']:.2f}x")
        total_c, total_h = sum(c["cpu_ms_per_notification"].values()), sum(herald["cpu_ms_per_notification"].values())
        lines.append("  CPU ms per notification: " + ", ".join(f"{n} {v:.2f}" for n, v in sorted(c["cpu_ms_per_notification"].items(), key=lambda kv: -kv[1])) + f"; all {total_c:.2f} (Herald's is {total_h / total_c:.2f}x)")
        for f in c["latency"]:
            lines.append(f"  latency at {f['events_per_s']:,.0f} events/s: p50 {f['p50_ms']:.0f} ms, p95 {f['p95_ms']:.0f}, p99 {f['p99_ms']:.0f}, max {f['max_ms']:.0f}")
    if baseline:
        lines.append(f"against the baseline of {baseline['machine'].get('date')}:")
        old = headline(baseline)
        for name, value in headline(result).items():
            if name not in old or not old[name]:
                continue
            change = value / old[name] - 1
            worse = change < -0.2 if name in HIGHER_IS_BETTER else change > 0.2
            lines.append(f"  {name}: {value:,.2f} (baseline {old[name]:,.2f}, {change:+.0%}){'  <- worse by more than 20 %' if worse else ''}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=4000, help="events per throughput run (two notifications each)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--users", type=int, default=10000, help="recipients the events go to")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--rates", type=float, nargs="*", default=[100.0, 200.0], help="further fixed rates (events/s) to measure latency at")
    parser.add_argument("--broadcast-users", type=int, default=100_000, help="directory size of the broadcast (0: none)")
    parser.add_argument("--broadcast-timeout", type=float, default=900.0)
    parser.add_argument("--celery", action=argparse.BooleanOptionalAction, default=True, help="compare with a Celery worker")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="how long idle CPU is measured")
    parser.add_argument("--profile", action="store_true", help="py-spy the router, email and in-app services during the first throughput run")
    parser.add_argument("--celery-concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--set", action="append", metavar="HERALD_X=value", help="a setting for every service (repeatable)")
    parser.add_argument("--quick", action="store_true", help="small figures: a smoke run of the benchmark itself")
    parser.add_argument("--save-baseline", action="store_true", help=f"store this result as {BASELINE.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.runs, args.warmup, args.users, args.latency_seconds, args.broadcast_users, args.rates, args.timeout = 500, 1, 200, 1000, 4.0, 2000, [], 120.0
    bench = Bench(args)
    log(f"run {bench.run_id}: logs in {bench.log_dir.relative_to(ROOT)}")
    try:
        bench.start_infrastructure()
        log("infrastructure and services ready")
        result = asyncio.run(measure(bench))
    finally:
        bench.stop_infrastructure()
    baseline = json.loads(BASELINE.read_text()) if BASELINE.exists() else None
    lines = report(result, baseline)
    print("\n".join(lines), flush=True)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.save_baseline:
        BASELINE.write_text(json.dumps(result, indent=2) + "\n")
        print(f"stored as {BASELINE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
