"""`make chaos`: Herald under faults, checked for lost and duplicated notifications.

Starts its own infrastructure (a private PostgreSQL cluster and Redis on free ports, the embedded
Kafka broker Tansu), migrates, creates topics, starts the sandbox and the six services as processes,
then runs one scenario per fault on a fresh load, and one with all of them together:

  baseline   no fault (the harness checking itself)
  sigkill    SIGKILL of the router and of each sender at random moments, restarted after 1-2 s
  resend     email through Resend (which takes Herald's idempotency key), answering slowly, its sender
             SIGKILLed four times: no email may arrive twice
  sigterm    a rolling restart (SIGTERM, drain, start) of every service
  postgres   `pg_ctl restart -m fast`, then PostgreSQL down for 8 s
  redis      a Redis restart, then Redis down for 8 s
  provider   30 % transient errors (4xx/5xx, 429 with Retry-After, hangs into timeouts) on SMTP, Twilio and Web Push
  outage     the SMTP relay answering 421 to everything for 2 minutes
  misconfig  the SMTP relay answering 535 5.7.8 to everything for a minute (Herald's credentials refused), then normal
  poison     a message.received event whose preview holds a NUL, and unreadable bytes on every notify.<channel>
  all        all of the above at once (shorter)

Load: CloudEvents written straight to Kafka at a steady rate, `booking.confirmed` (the student gets
email, SMS, push and in-app; the instructor email and in-app) and `auth.new_device_login` (critical:
email, SMS, in-app), every event carrying a unique token that the SMS, the email and the in-app row show.

Checks, per expected notification (the router's decision trace, compared with the catalogue): exactly
one final status on `notify.status` (`replayed` copies aside), a final `sent` or `suppressed` (else
lost, with its reason), what the providers received (SMTP messages per notification id header, Twilio
messages per number and token, decrypted push payloads per notification id, in-app rows). Duplicates
on SMTP, Twilio and Web Push are allowed only when a SIGKILL of that channel's sender explains them;
on Resend (email sent with an idempotency key) and in-app never. Prints a table, writes it to .artifacts/chaos.md, exits 1 when something is lost or
duplicated without excuse.

    python scripts/chaos.py                   # every scenario (about 15 minutes)
    python scripts/chaos.py --only sigkill    # one or more (comma-separated)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import jwt  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from herald import infra  # noqa: E402
from herald.cli import fresh_database  # noqa: E402
from herald.stack import SANDBOX, SERVICES, ServiceSpec, Stack, port_of  # noqa: E402
from shared import HeraldSettings, create_topics, notification_id  # noqa: E402
from shared._settings import DEV_API_KEYS, DEV_JWT_SECRET  # noqa: E402

ARTIFACTS = ROOT / ".artifacts"
FINAL = {"sent", "suppressed", "failed", "expired", "dead_lettered"}
DELIVERED = {"sent", "suppressed"}
PROVIDER_CHANNELS = ("email", "sms", "push")
CHANNELS = ("email", "sms", "push", "inapp")
SOURCE = "chaos"
TOKEN = re.compile(r"cx[0-9a-f]{10}")
BY_NAME = {spec.name: spec for spec in (*SERVICES, SANDBOX)}
SENDERS = ("email", "sms", "push", "inapp")
#: What the catalogue (services/router/catalogue.yaml) routes for the two event types of the load.
EXPECTED_CHANNELS = {
    "booking.confirmed": {"student_id": ("email", "sms", "push", "inapp"), "instructor_id": ("email", "inapp")},
    "auth.new_device_login": {"user_id": ("email", "sms", "inapp")},
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---------------------------------------------------------------------------- load


@dataclasses.dataclass
class Expected:
    notification_id: str
    event_id: str
    event_type: str
    user_id: str
    channel: str
    token: str


@dataclasses.dataclass
class Event:
    id: str
    type: str
    topic: str
    key: bytes
    body: dict[str, Any]
    token: str
    expected: list[Expected]
    published: bool = False


@dataclasses.dataclass
class User:
    id: str
    email: str
    phone: str


# ---------------------------------------------------------------------------- results


@dataclasses.dataclass
class Loss:
    notification_id: str
    channel: str
    event_type: str
    why: str


@dataclasses.dataclass
class Duplicate:
    channel: str
    key: str  # notification id, or number + token for SMS
    copies: int
    cause: str  # "SIGKILL" or "unexplained"
    at: list[str] = dataclasses.field(default_factory=list)  # when the provider received each copy


@dataclasses.dataclass
class Result:
    name: str
    fault: str
    events: int = 0
    expected: int = 0
    lost: list[Loss] = dataclasses.field(default_factory=list)
    status_duplicates: list[str] = dataclasses.field(default_factory=list)
    duplicates: list[Duplicate] = dataclasses.field(default_factory=list)
    settle_seconds: float | None = None  # None: did not settle before the deadline
    load_seconds: float = 0.0
    wall_seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)  # failures other than losses and duplicates
    suppressed: Counter = dataclasses.field(default_factory=Counter)
    evidence: list[str] = dataclasses.field(default_factory=list)
    skipped: str = ""
    received: str = ""  # what the providers received of the expected notifications, per channel

    def duplicates_on(self, channel: str) -> str:
        found = [d for d in self.duplicates if d.channel == channel]
        if not found:
            return "0"
        causes = Counter(d.cause for d in found)
        return f"{len(found)} (" + ", ".join(f"{n} {c}" for c, n in sorted(causes.items())) + ")"

    @property
    def failed(self) -> bool:
        bad_dups = [d for d in self.duplicates if d.channel == "inapp" or d.cause != "SIGKILL"]
        return bool(self.lost or self.status_duplicates or bad_dups or self.problems or self.settle_seconds is None)

    @property
    def verdict(self) -> str:
        if self.skipped:
            return f"skipped ({self.skipped})"
        return "FAIL" if self.failed else "ok"


# ---------------------------------------------------------------------------- the harness


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = ARTIFACTS / "chaos" / f"{stamp}-{self.run_id}"
        self.log_dir = self.run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"herald-chaos-{self.run_id}-"))
        os.chmod(self.tmp, 0o755)  # the postgres OS user runs the private cluster inside
        self.pg = infra.PrivatePostgres(self.tmp / "pg")
        self.redis = infra.PrivateRedis(self.tmp / "redis")
        self.kafka_port = infra.free_port()
        self.tansu: Any = None
        self.stack: Stack | None = None
        self.namespace = f"chaos{self.run_id}."
        self.env: dict[str, str] = {}
        self.settings: HeraldSettings | None = None
        self.rng = random.Random(args.seed)
        self.users: list[User] = []
        self.statuses: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.dlq: list[tuple[dict[str, str], bytes]] = []
        self.messages: list[dict[str, Any]] = []
        self.message_cursor = 0
        self.kills: list[tuple[str, float]] = []  # (service, epoch seconds) of every SIGKILL
        self.locks: dict[str, asyncio.Lock] = {}
        self.timeline: list[str] = []
        self.scenario_started = 0.0
        self.restarting: set[str] = set()
        self.producer: AIOKafkaProducer | None = None
        self.http: httpx.AsyncClient | None = None
        self.pool: asyncpg.Pool | None = None

    # ------------------------------------------------------------------ infrastructure

    def start_infrastructure(self) -> None:
        log(f"run {self.run_id}: logs in {self.run_dir.relative_to(ROOT)}")
        self.pg.start()
        log(f"private PostgreSQL on 127.0.0.1:{self.pg.port} ({self.pg.bin})")
        self.redis.start()
        log(f"private Redis on 127.0.0.1:{self.redis.port}")
        self.tansu = infra.start_tansu(self.kafka_port, log_path=self.log_dir / "tansu.log")
        log(f"Tansu on 127.0.0.1:{self.kafka_port}")
        ports = {spec.name: infra.free_port() for spec in (*SERVICES, SANDBOX)}
        smtp_port = infra.free_port()
        sandbox = f"http://127.0.0.1:{ports['sandbox']}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env.update({BY_NAME[name].port_variable: str(port) for name, port in ports.items()})
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "HERALD_ENVIRONMENT": "development",
                "HERALD_LOG_JSON": "true",
                "HERALD_KAFKA_BOOTSTRAP": f"127.0.0.1:{self.kafka_port}",
                "HERALD_DATABASE_URL": self.pg.url(),
                "HERALD_REDIS_URL": self.redis.url(),
                "HERALD_KAFKA_TOPIC_NAMESPACE": self.namespace,
                "HERALD_KAFKA_GROUP_PREFIX": f"herald-chaos{self.run_id}",
                "HERALD_KAFKA_PARTITIONS": str(self.args.partitions),
                "HERALD_KAFKA_SESSION_TIMEOUT_MS": "6000",
                "HERALD_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
                "HERALD_KAFKA_METADATA_MAX_AGE_MS": "5000",
                "HERALD_DELIVERY_LEASE_SECONDS": "15",
                "HERALD_RETRY_TIERS": "2,10,60",
                "HERALD_BREAKER_OPEN_SECONDS": "1",
                "HERALD_BREAKER_OPEN_MAX_SECONDS": "8",
                "HERALD_DRAIN_TIMEOUT_SECONDS": "20",
                "HERALD_OUTAGE_BACKOFF_MAX_SECONDS": "5",
                "HERALD_EMAIL_PROVIDER": "smtp",
                "HERALD_SMTP_HOST": "127.0.0.1",
                "HERALD_SMTP_PORT": str(smtp_port),
                "HERALD_SANDBOX_SMTP_PORT": str(smtp_port),
                "HERALD_SMTP_TIMEOUT_SECONDS": "10",
                "HERALD_RESEND_API_BASE": sandbox,
                "HERALD_TWILIO_API_BASE": sandbox,
                "HERALD_TWILIO_TIMEOUT_SECONDS": "10",
                "HERALD_TWILIO_STATUS_CALLBACKS": "false",  # receipts are not under test; they would double the sandbox's work
                "HERALD_PUSH_DEV_HOSTS": f"127.0.0.1:{ports['sandbox']}",
                "HERALD_PUSH_TIMEOUT_SECONDS": "10",
                "HERALD_PUSH_MAX_FAILURES": "100000",  # a 30 % error rate must not drop the load's subscriptions
                "HERALD_VAPID_PRIVATE_KEY": _vapid_key(),
                "HERALD_SMS_DAILY_CAP": "1000000",  # the load sends many SMS to few users
                "HERALD_SMS_DAILY_CAP_CRITICAL": "1000000",
                "HERALD_SMS_PROVIDER_MPS": "500",
                "HERALD_ROUTER_URL": f"http://127.0.0.1:{ports['router']}",
                "HERALD_UNSUBSCRIBE_URL": f"http://127.0.0.1:{ports['email']}/v1/unsubscribe",
            }
        )
        for channel in ("EMAIL", "SMS", "PUSH"):
            env[f"HERALD_{channel}_RETRY_BASE_SECONDS"] = "0.5"
            env[f"HERALD_{channel}_RETRY_CAP_SECONDS"] = "10"
        self.env = env
        self.settings = HeraldSettings(**{k.removeprefix("HERALD_").lower(): v for k, v in env.items() if k.startswith("HERALD_") and k.removeprefix("HERALD_").lower() in HeraldSettings.model_fields})
        asyncio.run(fresh_database(self.pg.url()))
        created = asyncio.run(create_topics(self.settings))
        log(f"database migrated, {len(created)} topics created (namespace {self.namespace})")
        self.stack = Stack(env=env, log_dir=self.log_dir)
        self.stack.service_env["sms"] = {"HERALD_PUBLIC_URL": f"http://127.0.0.1:{ports['sms']}"}
        started = time.monotonic()
        self.stack.start_all((SANDBOX, *SERVICES), timeout=180)
        log(f"sandbox and services ready in {time.monotonic() - started:.0f}s")

    def stop_infrastructure(self) -> None:
        if self.stack is not None:
            self.stack.stop_all()
        if self.tansu is not None:
            infra.stop(self.tansu)
        self.redis.stop()
        with contextlib.suppress(Exception):
            self.pg.stop()
        for name in ("pg/postgres.log", "redis/redis.log"):
            if (self.tmp / name).exists():
                shutil.copy(self.tmp / name, self.log_dir / Path(name).name)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def url(self, name: str) -> str:
        assert self.stack is not None
        return self.stack.url(BY_NAME[name])

    # ------------------------------------------------------------------ service faults

    def lock(self, name: str) -> asyncio.Lock:
        return self.locks.setdefault(name, asyncio.Lock())

    def mark(self, what: str) -> None:
        at = time.time() - self.scenario_started
        self.timeline.append(f"t+{at:5.1f}s {what}")
        log(f"  {what}")

    async def kill(self, name: str, *, down: float | None = None) -> None:
        """SIGKILL a service, start it again after 1-2 s, wait until it is ready."""
        assert self.stack is not None
        async with self.lock(name):
            proc = self.stack.procs[name]
            self.restarting.add(name)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
                self.kills.append((name, time.time()))
                await asyncio.to_thread(proc.wait, 10)
                self.mark(f"SIGKILL {name}")
                await asyncio.sleep(down if down is not None else self.rng.uniform(1.0, 2.0))
                await self._start(name)
            finally:
                self.restarting.discard(name)

    async def term(self, name: str) -> None:
        """SIGTERM a service (it drains), wait for it to exit, start it again, wait until it is ready."""
        assert self.stack is not None
        async with self.lock(name):
            proc = self.stack.procs[name]
            self.restarting.add(name)
            try:
                began = time.monotonic()
                os.killpg(proc.pid, signal.SIGTERM)
                self.mark(f"SIGTERM {name}")
                try:
                    await asyncio.to_thread(proc.wait, 45)
                    self.mark(f"{name} exited ({proc.returncode}) after {time.monotonic() - began:.1f}s")
                except Exception:
                    self.current.problems.append(f"{name} did not exit within 45 s of SIGTERM; killed")
                    os.killpg(proc.pid, signal.SIGKILL)
                    self.kills.append((name, time.time()))
                    await asyncio.to_thread(proc.wait, 10)
                await self._start(name)
            finally:
                self.restarting.discard(name)

    async def email_provider(self, provider: str) -> None:
        """Restart the email sender (SIGTERM, so it drains) sending through ``provider``."""
        assert self.stack is not None
        self.stack.service_env.setdefault("email", {})["HERALD_EMAIL_PROVIDER"] = provider
        await self.term("email")
        self.mark(f"email sends through {provider}")

    async def _start(self, name: str) -> None:
        assert self.stack is not None
        spec = BY_NAME[name]
        began = time.monotonic()
        self.stack.start(spec)
        await asyncio.to_thread(self.stack.wait_ready, spec, timeout=180)
        self.mark(f"{name} ready again after {time.monotonic() - began:.1f}s")

    async def restart_postgres(self, *, down: float = 0.0) -> None:
        if down:
            await asyncio.to_thread(self.pg.stop)
            self.mark(f"PostgreSQL stopped (fast), down for {down:.0f}s")
            await asyncio.sleep(down)
            await asyncio.to_thread(self.pg.start)
            self.mark("PostgreSQL started")
        else:
            await asyncio.to_thread(self.pg.restart, mode="fast")
            self.mark("PostgreSQL restarted (pg_ctl restart -m fast)")

    async def restart_redis(self, *, down: float = 0.0) -> None:
        await asyncio.to_thread(self.redis.stop)
        self.mark(f"Redis stopped{f', down for {down:.0f}s' if down else ''}")
        await asyncio.sleep(down)
        await asyncio.to_thread(self.redis.start)
        self.mark("Redis started (empty)")

    # ------------------------------------------------------------------ provider faults

    async def fault(self, provider: str, status: int, **fields: Any) -> None:
        assert self.http is not None
        body = {"provider": provider, "status": status, "until_cleared": True, **fields}
        (await self.http.post(f"{self.url('sandbox')}/api/faults", json=body)).raise_for_status()

    async def clear_faults(self, provider: str | None = None, status: int | None = None) -> None:
        assert self.http is not None
        params = {k: v for k, v in (("provider", provider), ("status", status)) if v is not None}
        (await self.http.delete(f"{self.url('sandbox')}/api/faults", params=params)).raise_for_status()

    FLAKY = {"smtp": (451, 452), "twilio": (503, 429), "webpush": (503, 429)}

    async def flaky_providers(self) -> None:
        """About 30 % of calls fail: half 5xx (SMTP 451), a third 429 with Retry-After 2 (SMTP 452), a sixth hang into a timeout."""
        for provider, (busy, slow) in self.FLAKY.items():
            await self.fault(provider, busy, probability=0.15)
            await self.fault(provider, slow, probability=0.10 / 0.85, retry_after=2)
            await self.fault(provider, 0, probability=0.05 / 0.75)
        self.mark("providers flaky: 30 % transient errors on SMTP, Twilio and Web Push (5xx/451, 429 Retry-After 2/452, hangs)")

    async def smtp_fault(self, status: int, message: str, what: str) -> None:
        await self.fault("smtp", status, message=message)
        self.mark(what)

    async def smtp_clear(self, status: int, what: str) -> None:
        await self.clear_faults("smtp", status)
        self.mark(what)

    async def steady_providers(self) -> None:
        for provider, statuses in self.FLAKY.items():
            for status in (*statuses, 0):
                await self.clear_faults(provider, status)
        self.mark("provider faults cleared")

    # ------------------------------------------------------------------ users and load

    async def create_users(self, count: int) -> None:
        assert self.http is not None
        headers = {"Authorization": f"ApiKey {DEV_API_KEYS.split('=', 1)[1]}"}
        verified = now_utc().isoformat()

        async def one(n: int) -> None:
            user = User(id=f"chaos-{self.run_id}-u{n:03d}", email=f"u{n:03d}.{self.run_id}@example.com", phone=f"+1415555{1000 + n:04d}")
            answer = await self.http.put(
                f"{self.url('router')}/v1/recipients/{user.id}",
                json={"email": user.email, "phone": user.phone, "phone_verified_at": verified},
                headers=headers,
            )
            if answer.status_code != 200:
                raise infra.InfraError(f"router refused recipient {user.id}: {answer.status_code} {answer.text}")
            token = jwt.encode({"sub": user.id, "aud": "herald", "exp": now_utc() + dt.timedelta(hours=2)}, DEV_JWT_SECRET, algorithm="HS256")
            sub = await self.http.post(
                f"{self.url('sandbox')}/webpush/subscriptions",
                json={"label": user.id, "herald": {"herald_url": self.url("push"), "authorization": f"Bearer {token}"}},
            )
            registered = sub.json().get("registered") or {}
            if sub.status_code != 201 or registered.get("status") not in (200, 201):
                raise infra.InfraError(f"push subscription of {user.id} not registered: {sub.status_code} {sub.text[:300]}")
            self.users.append(user)

        await asyncio.gather(*(one(n) for n in range(count)))
        self.users.sort(key=lambda u: u.id)
        log(f"{count} users in the router's directory, each with an email, a verified phone and a Web Push subscription")

    def make_event(self, scenario: str, n: int) -> Event:
        assert self.settings is not None
        token = f"cx{uuid.uuid4().hex[:10]}"
        event_id = f"{scenario}-{n}-{token}"
        if self.rng.random() < 0.5:
            student, instructor = self.rng.sample(self.users, 2)
            data = {
                "booking_id": f"b-{token}",
                "student_id": student.id,
                "instructor_id": instructor.id,
                "title": f"Lesson {token}",
                "starts_at": (now_utc() + dt.timedelta(days=7)).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            }
            kind, key, who = "booking.confirmed", data["booking_id"], {"student_id": student.id, "instructor_id": instructor.id}
        else:
            user = self.rng.choice(self.users)
            data = {"user_id": user.id, "device": f"Device {token}", "ip": "203.0.113.9", "at": now_utc().isoformat()}
            kind, key, who = "auth.new_device_login", user.id, {"user_id": user.id}
        expected = [
            Expected(str(notification_id(source=SOURCE, event_id=event_id, user_id=who[field], channel=ch)), event_id, kind, who[field], ch, token)
            for field, channels in EXPECTED_CHANNELS[kind].items()
            for ch in channels
        ]
        body = {
            "specversion": "1.0",
            "id": event_id,
            "source": SOURCE,
            "type": kind,
            "time": now_utc().isoformat(),
            "datacontenttype": "application/json",
            "subject": key,
            "data": data,
        }
        return Event(event_id, kind, self.settings.domain_topic(kind), key.encode(), body, token, expected)

    async def load(self, scenario: str, seconds: float, rate: float) -> list[Event]:
        """Publish events at ``rate`` per second for ``seconds``; the ones Kafka acknowledged."""
        assert self.producer is not None
        events: list[Event] = []
        sends: list[asyncio.Future] = []
        loop = asyncio.get_running_loop()
        began = loop.time()
        n = 0
        while loop.time() - began < seconds:
            due = began + n / rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            event = self.make_event(scenario, n)
            events.append(event)
            try:
                sends.append(await self.producer.send(event.topic, json.dumps(event.body).encode(), key=event.key))
            except Exception as exc:  # the broker refused at once: this event was never published
                log(f"  publish of {event.id} failed: {exc}")
                sends.append(loop.create_future())
                sends[-1].set_exception(exc)
            n += 1
        results = await asyncio.gather(*sends, return_exceptions=True)
        for event, outcome in zip(events, results, strict=True):
            event.published = not isinstance(outcome, BaseException)
        published = [e for e in events if e.published]
        self.mark(f"load over: {len(published)} events published in {loop.time() - began:.0f}s ({len(events) - len(published)} refused by Kafka)")
        return published

    async def publish_raw(self, topic: str, value: bytes, key: bytes) -> None:
        assert self.producer is not None
        await self.producer.send_and_wait(topic, value, key=key)

    # ------------------------------------------------------------------ observation

    async def tail(self, topic: str, on_record: Callable[[Any], None]) -> None:
        """Read ``topic`` from its beginning, forever (cancelled at the end)."""
        assert self.settings is not None
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.settings.kafka_bootstrap, group_id=None, auto_offset_reset="earliest", metadata_max_age_ms=5000)
        await consumer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                for records in batches.values():
                    for record in records:
                        on_record(record)
        finally:
            await consumer.stop()

    def on_status(self, record: Any) -> None:
        try:
            status = json.loads(record.value)
            self.statuses[str(status["notification_id"])].append(status)
        except (ValueError, KeyError, TypeError):
            pass

    def on_dead_letter(self, record: Any) -> None:
        headers = {k: v.decode(errors="replace") for k, v in (record.headers or ())}
        self.dlq.append((headers, record.value or b""))

    async def sync_messages(self) -> None:
        """What the sandbox received since the last look (briefly: no HTML, mail unparsed)."""
        assert self.http is not None
        for _ in range(5):
            try:
                answer = await self.http.get(f"{self.url('sandbox')}/api/messages", params={"after": self.message_cursor, "brief": "true"}, timeout=120)
                answer.raise_for_status()
                break
            except httpx.HTTPError as exc:
                log(f"  reading the sandbox failed ({exc!r}); again")
                await asyncio.sleep(2)
        else:
            raise infra.InfraError("the sandbox does not answer /api/messages")
        found = answer.json()
        self.messages.extend(found)
        if found:
            self.message_cursor = max(m["id"] for m in found)

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """A query on the private database, tried again while PostgreSQL restarts."""
        for attempt in range(60):
            try:
                if self.pool is None:
                    self.pool = await asyncpg.create_pool(self.pg.url(), min_size=0, max_size=3)
                async with self.pool.acquire() as conn:
                    return await conn.fetch(sql, *args)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if attempt == 59:
                    raise
                if self.pool is not None:
                    with contextlib.suppress(Exception):
                        self.pool.terminate()
                    self.pool = None
                log(f"  database query failed ({type(exc).__name__}); again") if attempt % 10 == 0 else None
                await asyncio.sleep(1)
        raise AssertionError("unreachable")

    def settled(self, expected: dict[str, Expected]) -> list[str]:
        """The expected notifications without a final status yet."""
        return [nid for nid in expected if not any(s["status"] in FINAL for s in self.statuses.get(nid, ()))]

    async def settle(self, events: list[Event], deadline: float) -> float | None:
        """Wait until every expected notification has a final status (and every event a decision); seconds, or None."""
        began = time.monotonic()
        expected = {e.notification_id: e for ev in events for e in ev.expected}
        ids = [ev.id for ev in events]
        last_report = began
        while True:
            waiting = self.settled(expected)
            undecided = 0
            if not waiting:
                rows = await self.query("SELECT count(DISTINCT event_id) FROM router.decisions WHERE event_id = ANY($1::text[])", ids)
                undecided = len(ids) - rows[0][0]
                if not undecided:
                    return time.monotonic() - began
            if time.monotonic() > deadline:
                log(f"  not settled: {len(waiting)} notification(s) without a final status, {undecided} event(s) without a decision")
                return None
            if time.monotonic() - last_report > 20:
                last_report = time.monotonic()
                log(f"  settling: {len(waiting)} of {len(expected)} notifications without a final status")
            self.check_services()
            await asyncio.sleep(1)

    def check_services(self) -> None:
        """A service that died on its own (not one a fault is restarting) is a finding; start it again."""
        assert self.stack is not None
        for name in self.stack.dead():
            if name in self.restarting:
                continue
            code = self.stack.procs[name].returncode
            self.current.problems.append(f"{name} exited by itself (code {code}); see logs/{name}.log")
            self.mark(f"{name} died by itself (exit {code}); starting it again")
            self.restarting.add(name)

            async def again(name: str = name) -> None:
                try:
                    await self._start(name)
                finally:
                    self.restarting.discard(name)

            asyncio.get_running_loop().create_task(again())

    async def probe(self) -> None:
        """How long the sandbox and the services take to answer /healthz (a stalled event loop shows here), every half second."""
        async with httpx.AsyncClient(timeout=30) as client:
            while True:
                for name in ("sandbox", "sms", "push", "email"):
                    if name in self.restarting:
                        continue
                    began = time.monotonic()
                    try:
                        await client.get(f"{self.url(name)}/healthz")
                    except httpx.HTTPError:
                        continue
                    took = time.monotonic() - began
                    if took > self.slowest.get(name, 0.0):
                        self.slowest[name] = took
                    if took > 2:
                        self.mark(f"{name} took {took:.1f}s to answer /healthz")
                await asyncio.sleep(0.5)

    # ------------------------------------------------------------------ checking

    async def evaluate(self, result: Result, events: list[Event]) -> None:
        """Losses, duplicates and trace differences of a scenario's events."""
        await self.sync_messages()
        expected = {e.notification_id: e for ev in events for e in ev.expected}
        result.events, result.expected = len(events), len(expected)
        # The trace: what the router decided, against the catalogue.
        rows = await self.query(
            "SELECT notification_id::text AS nid, event_id, user_id, channel, decision, reason FROM router.decisions WHERE event_id = ANY($1::text[])",
            [ev.id for ev in events],
        )
        decided = {r["nid"]: r for r in rows}
        not_routed = [nid for nid in expected if nid not in decided or decided[nid]["decision"] != "routed"]
        extra = [r for r in rows if r["nid"] not in expected and r["decision"] == "routed"]
        for nid in not_routed[:20]:
            e = expected[nid]
            row = decided.get(nid)
            why = f"{row['decision']} ({row['reason']})" if row else "no decision"
            result.problems.append(f"trace: {e.event_type} {e.channel} for {e.user_id} was {why}, the catalogue routes it")
        if len(not_routed) > 20:
            result.problems.append(f"trace: {len(not_routed) - 20} more not routed")
        for r in extra[:10]:
            result.problems.append(f"trace: routed {r['channel']} for {r['user_id']} of {r['event_id']}, not in the catalogue's expectation")
        # Statuses.
        sent: set[str] = set()
        for nid, e in expected.items():
            statuses = self.statuses.get(nid, [])
            finals = [s for s in statuses if s["status"] in FINAL]
            fresh = [s for s in finals if not s.get("replayed")]
            if len(fresh) > 1:
                result.status_duplicates.append(f"{e.channel} {nid}: " + ", ".join(f"{s['status']}@{s.get('attempt')}" for s in fresh))
            if any(s["status"] == "sent" for s in finals):
                sent.add(nid)
            if any(s["status"] in DELIVERED for s in finals):
                for s in finals:
                    if s["status"] == "suppressed":
                        result.suppressed[f"{e.channel}:{s.get('reason')}"] += 1
                        break
                continue
            if finals:
                last = finals[-1]
                why = f"{last['status']} ({last.get('reason')})"
            elif statuses:
                last = statuses[-1]
                why = f"no final status; last {last['status']} ({last.get('reason')}) at attempt {last.get('attempt')}"
            else:
                why = "no status at all"
            result.lost.append(Loss(nid, e.channel, e.event_type, why))
        # What the providers received.
        ours = {e.notification_id for e in expected.values()}
        tokens = {ev.token for ev in events}
        phone_of = {u.id: u.phone for u in self.users}
        email_copies: dict[str, list[str]] = defaultdict(list)
        through_resend: set[str] = set()
        push_copies: dict[str, list[str]] = defaultdict(list)
        sms_copies: dict[tuple[str, str], list[str]] = defaultdict(list)
        for m in self.messages:
            if m["provider"] == "smtp":
                nid = m["meta"].get("notification_id")
                if nid in ours:
                    email_copies[nid].append(m["at"])
            elif m["provider"] == "resend":
                headers = {k.lower(): v for k, v in (m["meta"].get("headers") or {}).items()}
                nid = headers.get("x-herald-notification-id")
                if nid in ours:
                    email_copies[nid].append(m["at"])
                    through_resend.add(nid)
            elif m["provider"] == "webpush":
                nid = str((m["meta"].get("notification") or {}).get("notification_id"))
                if nid in ours:
                    push_copies[nid].append(m["at"])
            elif m["provider"] == "twilio":
                for token in set(TOKEN.findall(m.get("text") or "")):
                    if token in tokens:
                        sms_copies[(m["to"], token)].append(m["at"])
        inapp_ids = [nid for nid, e in expected.items() if e.channel == "inapp"]
        inapp_rows = await self.query("SELECT id::text AS id, user_id, type, data::text AS data FROM inapp.notifications WHERE id = ANY($1::uuid[])", inapp_ids)
        rows_by_id = Counter(r["id"] for r in inapp_rows)
        users = sorted({e.user_id for e in expected.values() if e.channel == "inapp"})
        since = dt.datetime.fromtimestamp(self.scenario_started - 60, dt.UTC)
        user_rows = await self.query(
            "SELECT id::text AS id, user_id, type, data::text AS data FROM inapp.notifications WHERE user_id = ANY($1::text[]) AND created_at > $2", users, since
        )
        rows_by_token: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        for r in user_rows:
            for token in set(TOKEN.findall(r["data"])):
                if token in tokens:
                    rows_by_token[(r["user_id"], r["type"], token)].add(r["id"])
        received: Counter = Counter()
        for nid, e in expected.items():
            if e.channel == "email":
                copies = email_copies.get(nid, [])
                key = nid
            elif e.channel == "push":
                copies = push_copies.get(nid, [])
                key = nid
            elif e.channel == "sms":
                copies = sms_copies.get((phone_of[e.user_id], e.token), [])
                key = f"{phone_of[e.user_id]} {e.token}"
            else:
                copies = ["row"] * rows_by_id.get(nid, 0)
                others = rows_by_token.get((e.user_id, e.event_type, e.token), set())
                if len(others) > 1:
                    result.duplicates.append(Duplicate("inapp", nid, len(others), f"{len(others)} rows for one event and user"))
                key = nid
            received[e.channel] += len(copies)
            if nid in sent and not copies:
                result.lost.append(Loss(nid, e.channel, e.event_type, "status sent, but the provider has nothing"))
            if len(copies) > 1:
                if e.channel == "inapp":
                    cause = "unexplained"
                elif nid in through_resend:
                    cause = "Resend took it twice despite the idempotency key"
                else:
                    cause = self.cause(e.channel, copies, self.statuses.get(nid, []))
                result.duplicates.append(Duplicate(e.channel, key, len(copies), cause, sorted(copies)))
        retried = Counter((e.channel, s.get("reason")) for nid, e in expected.items() for s in self.statuses.get(nid, []) if s["status"] == "retrying")
        if retried:
            result.notes.append("retry attempts (channel/reason): " + ", ".join(f"{ch}/{why} {n}" for (ch, why), n in sorted(retried.items(), key=str)))
        wanted = Counter(e.channel for e in expected.values())
        result.received = ", ".join(f"{ch} {received[ch]}/{wanted[ch]}" for ch in CHANNELS)
        if result.lost or result.status_duplicates or any(d.cause != "SIGKILL" for d in result.duplicates):
            result.evidence += self.evidence(result, expected)

    def cause(self, channel: str, copies: list[str], statuses: list[dict[str, Any]]) -> str:
        """Why a provider got a notification more than once.

        SIGKILL when the channel's sender was killed between an accepted copy (within 20 s of it) and the next;
        else "retried after <reason>" naming the failure Herald reported for the attempt that had in fact
        reached the provider (the first ``retrying`` status after that copy; a timeout means the provider
        answered too late, a dependency outage that a write after the send failed); else "unexplained".
        """
        times = sorted(dt.datetime.fromisoformat(at).timestamp() for at in copies)
        retries = sorted(
            (dt.datetime.fromisoformat(s["at"].replace("Z", "+00:00")).timestamp(), s.get("reason") or "?")
            for s in statuses
            if s["status"] == "retrying" or (s["status"] == "dead_lettered" and not s.get("replayed"))
        )
        causes = []
        for first, second in zip(times, times[1:], strict=False):
            if any(name == channel and first - 1 <= at <= min(second, first + 20) for name, at in self.kills):
                causes.append("SIGKILL")
                continue
            after = [reason for at, reason in retries if first - 1 <= at <= second + 1]
            causes.append(f"retried after {after[0]}" if after else "unexplained")
        return "SIGKILL" if all(c == "SIGKILL" for c in causes) else next(c for c in causes if c != "SIGKILL")

    def evidence(self, result: Result, expected: dict[str, Expected]) -> list[str]:
        """Log lines and statuses about the first few lost or duplicated notifications."""
        lines: list[str] = []
        picked = [(loss.notification_id, f"lost {loss.channel} {loss.event_type}: {loss.why}") for loss in result.lost[:5]]
        picked += [(d.key, f"duplicate {d.channel} x{d.copies} ({d.cause}), received at {', '.join(a[11:23] for a in d.at)}") for d in result.duplicates if d.cause != "SIGKILL"][:5]
        picked += [(s.split(": ")[0].split(" ")[1], f"status duplicate {s}") for s in result.status_duplicates[:3]]
        logs = {p.name: p.read_text(errors="replace").splitlines() for p in sorted(self.log_dir.glob("*.log"))}
        for key, what in picked:
            lines.append(f"{what} — {key}")
            nid = key if key in expected else next((n for n, e in expected.items() if e.channel == "sms" and key.endswith(e.token)), key)
            for s in self.statuses.get(nid, []):
                lines.append(f"    status {s['status']} attempt={s.get('attempt')} reason={s.get('reason')} replayed={s.get('replayed')} at={s.get('at')}")
            shown = 0
            for name, content in logs.items():
                for line in content:
                    if nid in line and shown < 12:
                        lines.append(f"    {name}: {line[:400]}")
                        shown += 1
        return lines

    # ------------------------------------------------------------------ scenarios

    async def scenario(self, name: str, fault: str, load_seconds: float, faults: Callable[[], Awaitable[None]] | None, *, settle_for: float) -> Result:
        result = Result(name, fault)
        self.current = result
        self.timeline = []
        self.slowest = {}
        log(f"scenario {name}: {fault}")
        began = time.monotonic()
        self.scenario_started = time.time()
        await self.clear_faults()
        load = asyncio.create_task(self.load(name, load_seconds, self.args.rate))
        fault_task = asyncio.create_task(faults()) if faults else None
        events = await load
        result.load_seconds = load_seconds
        if fault_task is not None:
            await fault_task
        await self.clear_faults()
        quiet = time.monotonic()
        result.settle_seconds = await self.settle(events, quiet + settle_for)
        await asyncio.sleep(3)  # a late copy of anything
        await self.evaluate(result, events)
        result.notes += self.timeline
        result.notes.append("slowest /healthz answers: " + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(self.slowest.items())))
        result.wall_seconds = time.monotonic() - began
        self.results_events[name] = events
        log(
            f"scenario {name}: {result.verdict}: {result.events} events, {result.expected} notifications, {len(result.lost)} lost, "
            f"{len(result.duplicates)} duplicated, settled {'never' if result.settle_seconds is None else f'{result.settle_seconds:.0f}s'} after the faults; "
            f"{result.wall_seconds:.0f}s in all"
        )
        log(f"  received (copies/expected): {result.received}")
        for problem in result.problems[:10]:
            log(f"  problem: {problem}")
        return result

    async def at(self, delay: float, action: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(delay)
        await action()

    def scenarios(self) -> dict[str, Callable[[], Awaitable[Result]]]:
        a = self.args
        seconds = a.load_seconds

        async def baseline() -> Result:
            return await self.scenario("baseline", "none", min(seconds, 20), None, settle_for=120)

        async def sigkill() -> Result:
            async def faults() -> None:
                targets = ["router", *SENDERS]
                await asyncio.gather(*(self.at(self.rng.uniform(3, seconds - 5), lambda n=n: self.kill(n)) for n in targets))
                # and the senders a second time, at other moments
                await asyncio.gather(*(self.at(self.rng.uniform(0, 10), lambda n=n: self.kill(n)) for n in self.rng.sample(SENDERS, 2)))

            return await self.scenario("sigkill", "SIGKILL router, email, sms, push, inapp at random moments (two senders twice), restart after 1-2 s", seconds, faults, settle_for=240)

        async def resend() -> Result:
            assert self.http is not None
            sandbox = self.url("sandbox")
            before = (await self.http.get(f"{sandbox}/api/resend/replays")).json()["replays"]
            await self.email_provider("resend")
            # Every answer 150 ms late: a kill often lands after Resend took a mail and before Herald heard.
            (await self.http.put(f"{sandbox}/api/resend/delay", json={"ms": 150})).raise_for_status()

            async def faults() -> None:
                for moment in sorted(self.rng.uniform(3, seconds - 3) for _ in range(4)):
                    await asyncio.sleep(max(0.0, moment - (time.time() - self.scenario_started)))
                    await self.kill("email")

            try:
                result = await self.scenario("resend", "email through Resend (answers 150 ms late), the email sender SIGKILLed 4 times", seconds, faults, settle_for=240)
            finally:
                (await self.http.put(f"{sandbox}/api/resend/delay", json={"ms": 0})).raise_for_status()
                await self.email_provider("smtp")
            replays = (await self.http.get(f"{sandbox}/api/resend/replays")).json()["replays"] - before
            result.notes.append(f"Resend answered {replays} repeated send(s) from the idempotency key instead of sending again")
            return result

        async def sigterm() -> Result:
            async def faults() -> None:
                await asyncio.sleep(5)
                for spec in SERVICES:
                    await self.term(spec.name)
                    await asyncio.sleep(2)

            return await self.scenario("sigterm", "SIGTERM rolling restart of every service", seconds, faults, settle_for=240)

        async def postgres() -> Result:
            async def faults() -> None:
                await self.at(8, self.restart_postgres)
                await self.at(12, lambda: self.restart_postgres(down=8))

            return await self.scenario("postgres", "PostgreSQL restart (pg_ctl restart -m fast), then stopped for 8 s", seconds, faults, settle_for=240)

        async def redis() -> Result:
            async def faults() -> None:
                await self.at(8, self.restart_redis)
                await self.at(12, lambda: self.restart_redis(down=8))

            return await self.scenario("redis", "Redis restart, then stopped for 8 s (its data gone)", seconds, faults, settle_for=240)

        async def provider() -> Result:
            async def faults() -> None:
                await self.flaky_providers()
                await asyncio.sleep(seconds)
                await self.steady_providers()

            return await self.scenario("provider", "30 % transient errors, 429 + Retry-After and timeouts on SMTP, Twilio, Web Push", seconds, faults, settle_for=240)

        async def outage() -> Result:
            async def faults() -> None:
                await asyncio.sleep(5)
                await self.fault("smtp", 421, message="4.3.2 Service not available, closing transmission channel")
                self.mark("SMTP relay down: 421 to every message")
                await asyncio.sleep(a.outage_seconds)
                await self.clear_faults("smtp")
                self.mark("SMTP relay back")

            return await self.scenario("outage", f"SMTP outage for {a.outage_seconds:.0f} s (421 to everything)", seconds, faults, settle_for=360)

        async def misconfig() -> Result:
            async def faults() -> None:
                await asyncio.sleep(5)
                await self.fault("smtp", 535, message="5.7.8 Authentication credentials invalid")
                self.mark("SMTP relay refuses Herald's credentials: 535 5.7.8 to every message")
                await asyncio.sleep(60)
                await self.clear_faults("smtp")
                self.mark("SMTP credentials fixed")

            return await self.scenario("misconfig", "SMTP misconfigured (535 5.7.8) for 60 s, then fixed", seconds, faults, settle_for=360)

        async def poison() -> Result:
            async def faults() -> None:
                await asyncio.sleep(5)
                await self.poison()

            result = await self.scenario("poison", "a message.received with a NUL in its preview; unreadable bytes on every notify.<channel>", min(seconds, 30), faults, settle_for=240)
            await self.check_poison(result)
            return result

        async def everything() -> Result:
            async def faults() -> None:
                s = max(seconds, 50)
                await asyncio.gather(
                    self.at(2, self.flaky_providers),
                    self.at(s - 2, self.steady_providers),
                    self.at(6, self.poison),
                    self.at(10, lambda: self.smtp_fault(535, "5.7.8 Authentication credentials invalid", "SMTP misconfigured: 535 5.7.8")),
                    self.at(30, lambda: self.smtp_clear(535, "SMTP credentials fixed")),
                    self.at(35, lambda: self.smtp_fault(421, "4.3.2 Service not available", "SMTP relay down: 421")),
                    self.at(65, lambda: self.smtp_clear(421, "SMTP relay back")),
                    self.at(12, self.restart_postgres),
                    self.at(28, self.restart_redis),
                    *(self.at(self.rng.uniform(4, s - 10), lambda n=n: self.kill(n)) for n in ["router", *SENDERS]),
                    self.at(15, self.rolling_term),
                )

            result = await self.scenario(
                "all",
                "all at once: flaky providers, SMTP 535 then 421, PostgreSQL and Redis restarts, SIGKILLs, a SIGTERM rolling restart, poison",
                max(seconds, 50),
                faults,
                settle_for=360,
            )
            await self.check_poison(result)
            return result

        return {
            "baseline": baseline,
            "sigkill": sigkill,
            "resend": resend,
            "sigterm": sigterm,
            "postgres": postgres,
            "redis": redis,
            "provider": provider,
            "outage": outage,
            "misconfig": misconfig,
            "poison": poison,
            "all": everything,
        }

    async def rolling_term(self) -> None:
        for spec in SERVICES:
            await self.term(spec.name)

    async def poison(self) -> None:
        assert self.settings is not None
        user = self.users[0]
        event_id = f"poison-nul-{uuid.uuid4().hex[:10]}"
        data = {"message_id": "m-poison", "conversation_id": "c-poison", "sender_id": self.users[1].id, "sender_name": "Mallory", "recipient_id": user.id, "preview": "hello\x00world"}
        body = {"specversion": "1.0", "id": event_id, "source": SOURCE, "type": "message.received", "time": now_utc().isoformat(), "datacontenttype": "application/json", "data": data}
        await self.publish_raw(self.settings.domain_topic("message.received"), json.dumps(body).encode(), user.id.encode())
        self.poisoned.append(("router", event_id))
        for channel in CHANNELS:
            marker = f"poison-{channel}-{uuid.uuid4().hex[:8]}"
            await self.publish_raw(self.settings.notify_topic(channel), b'{"notification_id": "' + marker.encode() + b'", oops', user.id.encode())
            self.poisoned.append((channel, marker))
        self.mark("poison: message.received with a NUL in data.preview on domain.message; invalid JSON on notify.email, .sms, .push, .inapp")

    async def check_poison(self, result: Result) -> None:
        """Each poison record is dead-lettered by the stage that read it, and the NUL event is routed nowhere."""
        deadline = time.monotonic() + 30
        while True:
            missing = []
            for stage, marker in self.poisoned:
                if not any(h.get("herald-stage") == stage and marker.encode() in value for h, value in self.dlq):
                    missing.append((stage, marker))
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        for stage, marker in self.poisoned:
            found = [h for h, value in self.dlq if h.get("herald-stage") == stage and marker.encode() in value]
            if found:
                result.notes.append(f"poison {marker}: dead-lettered by {stage} ({found[0].get('herald-reason')}) x{len(found)}")
            else:
                result.problems.append(f"poison {marker} was not dead-lettered by {stage}")
        nul_events = [marker for stage, marker in self.poisoned if stage == "router"]
        routed = await self.query("SELECT count(*) FROM router.decisions WHERE event_id = ANY($1::text[]) AND decision = 'routed'", nul_events)
        if routed[0][0]:
            result.problems.append(f"the NUL event was routed to {routed[0][0]} channel(s)")
        self.poisoned.clear()

    # ------------------------------------------------------------------ the run

    async def main(self, names: list[str]) -> list[Result]:
        assert self.settings is not None
        self.http = httpx.AsyncClient(timeout=30)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all", linger_ms=5)
        self.poisoned: list[tuple[str, str]] = []
        self.results_events: dict[str, list[Event]] = {}
        self.current = Result("setup", "")
        self.slowest: dict[str, float] = {}
        await self.producer.start()
        tails = [
            asyncio.create_task(self.tail(self.settings.status_topic, self.on_status)),
            asyncio.create_task(self.tail(self.settings.dlq_topic, self.on_dead_letter)),
            asyncio.create_task(self.probe()),
        ]
        results: list[Result] = []
        try:
            await self.create_users(self.args.users)
            available = self.scenarios()
            budget_end = self.started + self.args.budget_minutes * 60
            for name in names:
                if time.monotonic() > budget_end:
                    skipped = Result(name, "", skipped="time budget spent")
                    results.append(skipped)
                    continue
                results.append(await available[name]())
            # Late copies: look at everything the providers received once more.
            await asyncio.sleep(2)
            for result in results:
                if result.skipped:
                    continue
                again = Result(result.name, result.fault)
                self.scenario_started = time.time() - 3600 * 2
                await self.evaluate(again, self.results_events[result.name])
                known = {(d.channel, d.key) for d in result.duplicates}
                late = [d for d in again.duplicates if (d.channel, d.key) not in known]
                if late:
                    result.duplicates += late
                    result.notes.append(f"{len(late)} duplicate(s) arrived after the scenario ended")
                late_status = sorted(set(again.status_duplicates) - set(result.status_duplicates))
                result.status_duplicates += late_status
        finally:
            for task in tails:
                task.cancel()
            await asyncio.gather(*tails, return_exceptions=True)
            await self.producer.stop()
            await self.http.aclose()
            if self.pool is not None:
                self.pool.terminate()
        return results


def _vapid_key() -> str:
    from cryptography.hazmat.primitives.asymmetric import ec

    raw = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value.to_bytes(32, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# ---------------------------------------------------------------------------- report


def table(results: list[Result]) -> list[str]:
    head = ["scenario", "fault", "events", "expected", "lost", "status dups", "dup email", "dup sms", "dup push", "dup inapp", "settle", "took", "result"]
    rows = [head, ["---"] * len(head)]
    for r in results:
        if r.skipped:
            rows.append([r.name, r.fault, "", "", "", "", "", "", "", "", "", "", r.verdict])
            continue
        settle = "never" if r.settle_seconds is None else f"{r.settle_seconds:.0f}s"
        rows.append(
            [r.name, r.fault, str(r.events), str(r.expected), str(len(r.lost)), str(len(r.status_duplicates)),
             *(r.duplicates_on(ch) for ch in CHANNELS), settle, f"{r.wall_seconds / 60:.1f} min", r.verdict]
        )
    return ["| " + " | ".join(cells) + " |" for cells in rows]


def markdown(results: list[Result], harness: Harness, total: float) -> str:
    lines = [
        "# make chaos",
        "",
        f"Run {harness.run_id}, {time.strftime('%Y-%m-%d %H:%M:%S')}, {total / 60:.1f} minutes; "
        f"{harness.args.rate:g} events/s, {harness.args.users} users, {harness.args.partitions} partitions per topic; "
        f"logs in `{harness.run_dir.relative_to(ROOT)}/logs`.",
        "",
        "*lost*: an expected notification (the router's trace, checked against the catalogue) without a final `sent` or `suppressed` "
        "when the scenario settled, or `sent` with nothing at the provider. *status dups*: more than one final status not marked `replayed`. "
        "*dup*: what the provider received more than once for one notification (SMTP and Resend by `X-Herald-Notification-Id`, Twilio by number and the "
        "event's token, Web Push by the payload's notification id, in-app rows by id and by event), with its cause: SIGKILL when the "
        "channel's sender was killed right after the first copy was accepted (never an excuse on Resend or in-app). *settle*: from the end of the load and faults until "
        "every expected notification had a final status.",
        "",
        *table(results),
        "",
    ]
    for r in results:
        if r.skipped:
            continue
        lines += [f"## {r.name}: {r.verdict}", "", f"{r.fault}. Load {r.load_seconds:.0f}s. Received (copies/expected): {r.received}.", ""]
        if r.suppressed:
            lines.append("Suppressed: " + ", ".join(f"{k} {v}" for k, v in sorted(r.suppressed.items())))
            lines.append("")
        for problem in r.problems:
            lines.append(f"- problem: {problem}")
        for loss in r.lost[:30]:
            lines.append(f"- lost {loss.channel} {loss.event_type} `{loss.notification_id}`: {loss.why}")
        if len(r.lost) > 30:
            lines.append(f"- … {len(r.lost) - 30} more lost")
        for s in r.status_duplicates[:20]:
            lines.append(f"- status duplicate {s}")
        for d in r.duplicates[:30]:
            lines.append(f"- duplicate {d.channel} `{d.key}` x{d.copies}: {d.cause}")
        if r.notes:
            lines += ["", "```", *r.notes, "```"]
        if r.evidence:
            lines += ["", "Evidence:", "", "```", *r.evidence[:150], "```"]
        lines.append("")
    return "\n".join(lines)


ALL = ["baseline", "sigkill", "resend", "sigterm", "postgres", "redis", "provider", "outage", "misconfig", "poison", "all"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated scenarios, in this order: {', '.join(ALL)}")
    parser.add_argument("--rate", type=float, default=15.0, help="events per second during a load (default 15)")
    parser.add_argument("--load-seconds", type=float, default=40.0, help="seconds of load per scenario (default 40)")
    parser.add_argument("--outage-seconds", type=float, default=120.0, help="how long the SMTP outage lasts (default 120)")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--budget-minutes", type=float, default=38.0, help="skip the scenarios that would start after this long")
    args = parser.parse_args(argv)
    names = ALL if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(ALL)}")

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    harness = Harness(args)
    harness.started = time.monotonic()
    results: list[Result] = []
    code = 0
    try:
        harness.start_infrastructure()
        results = asyncio.run(harness.main(names))
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        code = 130
    except (infra.InfraError, OSError) as exc:
        log(f"chaos: {exc}")
        code = 2
    finally:
        log("stopping the services, Tansu, Redis and PostgreSQL")
        harness.stop_infrastructure()
    total = time.monotonic() - harness.started
    if results:
        text = markdown(results, harness, total)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "chaos.md").write_text(text + "\n")
        shutil.copy(ARTIFACTS / "chaos.md", harness.run_dir / "chaos.md")
        print()
        print("\n".join(table(results)))
        print(f"\n{total / 60:.1f} minutes; the report with details: .artifacts/chaos.md; logs: {harness.log_dir.relative_to(ROOT)}")
        if any(r.failed and not r.skipped for r in results):
            code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
