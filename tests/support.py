"""Test helpers: settings against the test infrastructure, running apps, waiting, Kafka peeking, tokens."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import FastAPI

from herald.infra import free_port
from shared import HeraldSettings, create_topics

S = TypeVar("S", bound=HeraldSettings)


@dataclass(frozen=True)
class Infra:
    """The broker, database and Redis database this test session owns."""

    kafka_bootstrap: str
    database_url: str
    redis_url: str

    def env(self, namespace: str = "") -> dict[str, str]:
        """``HERALD_*`` variables pointing a process at this infrastructure."""
        return {
            "HERALD_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "HERALD_DATABASE_URL": self.database_url,
            "HERALD_REDIS_URL": self.redis_url,
            "HERALD_KAFKA_TOPIC_NAMESPACE": namespace,
            "HERALD_KAFKA_GROUP_PREFIX": f"herald-{namespace or 'test'}",
            "HERALD_KAFKA_PARTITIONS": "3",
            "HERALD_KAFKA_SESSION_TIMEOUT_MS": "2000",
            "HERALD_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "HERALD_KAFKA_BATCH_TIMEOUT_MS": "20",
            "HERALD_KAFKA_METADATA_MAX_AGE_MS": "1000",
            # One delay tier (not four) per lane: every test namespace adds its topics to the session's
            # broker, and every client's metadata grows with them. Tests that need tiers set their own.
            "HERALD_RETRY_TIERS": "5",
            "HERALD_ENVIRONMENT": "test",
        }


def new_namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


def settings_for(cls: type[S], infra: Infra, namespace: str, **overrides: Any) -> S:
    """A service's settings on the test infrastructure, with its own topics and consumer groups."""
    values = {k.removeprefix("HERALD_").lower(): v for k, v in infra.env(namespace).items()}
    values.update(overrides)
    return cls(**values)


def production(**more: Any) -> dict[str, Any]:
    """Settings values of a production instance with real (random) shared secrets; add a service's own in ``more``."""
    return {"environment": "production", "jwt_secret": secrets.token_urlsafe(32), "api_keys": f"svc:admin={secrets.token_urlsafe(32)}", **more}


async def make_topics(settings: HeraldSettings) -> None:
    await create_topics(settings)


async def delete_topics(bootstrap: str, *, prefix: str) -> None:
    """Delete every topic whose name starts with ``prefix`` (best effort: a failure leaves them)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    except Exception as exc:  # the test's own outcome stands; the topics stay
        logging.getLogger(__name__).warning("topics of %s not deleted: %r", prefix, exc)
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run an app's lifespan in this process and talk to it over ASGI."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T]], *, timeout: float = 20.0, interval: float = 0.1, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


def user_token(settings: HeraldSettings, user_id: str, *, minutes: float = 10, **claims: Any) -> str:
    payload = {"sub": user_id, "aud": settings.jwt_audience, "exp": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes), **claims}
    assert settings.jwt_secret is not None
    return jwt.encode(payload, settings.jwt_secret.get_secret_value(), algorithm="HS256")


def bearer(settings: HeraldSettings, user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {user_token(settings, user_id)}"}


def api_key(settings: HeraldSettings) -> dict[str, str]:
    name, key = next(iter(settings.api_key_table().items()))
    return {"Authorization": f"ApiKey {key}"}


class Moment:
    """A whole hour a week ahead of the real clock (in UTC), for event data that names a time.

    Tests that talk to real services use it instead of a pinned date, so that features that
    compare such times with the clock (expiry, reminders) never turn the fixture stale.
    """

    def __init__(self, *, days: int = 7, hour: int = 15) -> None:
        today = dt.datetime.now(dt.UTC).replace(hour=hour, minute=0, second=0, microsecond=0)
        self.at = today + dt.timedelta(days=days)

    @property
    def iso(self) -> str:
        """As producers write it: ``2026-12-01T15:00:00Z``."""
        return self.at.strftime("%Y-%m-%dT%H:%M:%SZ")

    def local(self, zone: str = "UTC") -> str:
        """As Herald shows it to a recipient in ``zone``: ``2026-12-01 16:00``."""
        from zoneinfo import ZoneInfo

        return self.at.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


STARTS = Moment()


def cloud_event(event_type: str, data: Any, *, id: str | None = None, source: str = "tests", **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": id or uuid.uuid4().hex,
        "source": source,
        "type": event_type,
        "time": dt.datetime.now(dt.UTC).isoformat(),
        "datacontenttype": "application/json",
        "data": data,
        **extra,
    }


_producers: dict[str, AIOKafkaProducer] = {}
_session_loop: asyncio.AbstractEventLoop | None = None
_producers_lock = asyncio.Lock()


def share_producers_on(loop: asyncio.AbstractEventLoop) -> None:
    """Let ``produce`` keep one producer per broker on ``loop`` (the session's event loop)."""
    global _session_loop
    _session_loop = loop


async def close_producers() -> None:
    while _producers:
        _, producer = _producers.popitem()
        await producer.stop()


async def produce(bootstrap: str, topic: str, value: bytes | dict[str, Any], *, key: bytes | None = None) -> None:
    """Write one record and wait for the broker's acknowledgement.

    On the session's event loop one started producer per broker serves every call: tests that
    publish hundreds of records must not open (and bootstrap) a connection for each. Elsewhere
    (``asyncio.run`` inside a synchronous test) a producer lives for the one call.
    """
    payload = value if isinstance(value, bytes) else json.dumps(value).encode()
    if asyncio.get_running_loop() is not _session_loop:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, payload, key=key)
        finally:
            await producer.stop()
        return
    async with _producers_lock:  # two first calls at once must not start (and leak) two producers
        producer = _producers.get(bootstrap)
        if producer is None:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
            await producer.start()
            _producers[bootstrap] = producer
    await producer.send_and_wait(topic, payload, key=key)


class TopicReader:
    """Reads a topic from the beginning, accumulating what it has seen."""

    def __init__(self, bootstrap: str, topic: str | list[str]) -> None:
        topics = [topic] if isinstance(topic, str) else topic
        self.consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
        self.records: list[ConsumerRecord] = []

    async def __aenter__(self) -> TopicReader:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def poll(self) -> list[ConsumerRecord]:
        batches = await self.consumer.getmany(timeout_ms=200)
        for records in batches.values():
            self.records.extend(records)
        return self.records

    async def wait_for(self, count: int, *, timeout: float = 20.0) -> list[ConsumerRecord]:
        async def enough() -> list[ConsumerRecord] | None:
            records = await self.poll()
            return records if len(records) >= count else None

        return await eventually(enough, timeout=timeout, what=f"{count} record(s) on {self.consumer.subscription()}")

    def json(self) -> list[Any]:
        return [json.loads(r.value) for r in self.records]


def test_id() -> str:
    return os.environ.get("HERALD_TEST_ID", "main")


class ServerThread:
    """An ASGI app served by uvicorn on a loopback port (free unless given), in a thread and event loop
    of its own: a real HTTP server the test reaches over TCP."""

    def __init__(self, app: Any, port: int | None = None, *, timeout: float = 60.0, graceful_seconds: int = 5) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.timeout = timeout
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", timeout_graceful_shutdown=graceful_seconds)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def serve(app: Any, *, timeout: float = 60.0) -> Iterator[str]:
    """Serve ``app`` (see ``ServerThread``) until the block ends; yields its base URL."""
    with ServerThread(app, timeout=timeout) as server:
        yield server.url


def tls_certificate(directory: Path, *, common_name: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (valid a day, also its own CA) and its key, as PEM files in ``directory``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return directory / "cert.pem", directory / "key.pem"


def sender_schema_ddl(schema: str) -> str:
    """The DDL of a sender's own tables (ledger and erasure tombstones) in a scratch ``schema``: the inapp migrations'."""
    migrations = Path(__file__).resolve().parents[1] / "services/inapp/migrations"
    ledger = (migrations / "001_inapp.sql").read_text().split("CREATE TABLE inapp.ledger")[1]
    rest = [(migrations / name).read_text() for name in ("003_inapp_ledger_expired.sql", "004_inapp_erasures.sql")]
    return "\n".join([f"CREATE SCHEMA {schema};", f"CREATE TABLE inapp.ledger {ledger}", *rest]).replace("inapp.", f"{schema}.")
