"""The sandbox (Twilio stand-in) served by uvicorn in a thread, sms settings and apps on the test infrastructure."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import phonenumbers
import pytest
from aiokafka import AIOKafkaProducer

from sandbox.app import create_app as create_sandbox
from services.sms.app import create_app
from services.sms.settings import Settings
from shared import Channel, Dispatch, Recipient

from ..support import STARTS, ServerThread, TopicReader, eventually, make_topics, running, settings_for


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[ServerThread]:
    with ServerThread(create_sandbox()) as server:
        yield server


class Sandbox:
    """Talks to the sandbox over HTTP, as an operator would."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=10)

    async def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        found = (await self.http.get("/api/messages", params={"provider": "twilio"})).json()
        return [m for m in found if to in (None, m["to"])]

    async def fail(self, status: int, count: int = 1, retry_after: int | None = None) -> None:
        response = await self.http.post("/api/faults", json={"provider": "twilio", "status": status, "count": count, "retry_after": retry_after})
        response.raise_for_status()

    async def receipt(self, to: str, status: str, error_code: int | None = None) -> None:
        (await self.http.post("/api/twilio/receipts", json={"to": to, "status": status, "error_code": error_code})).raise_for_status()


@pytest.fixture
async def sandbox(sandbox_server: ServerThread) -> AsyncIterator[Sandbox]:
    client = Sandbox(sandbox_server.url)
    await client.http.delete("/api/messages")
    await client.http.delete("/api/twilio/receipts")
    yield client
    await client.http.delete("/api/messages")
    await client.http.aclose()


def new_phone(prefix: str = "+1415", digits: int = 7) -> str:
    """A valid, unused-looking number (each test uses its own)."""
    for _ in range(1000):
        candidate = prefix + str(random.randint(2 * 10 ** (digits - 1), 10**digits - 1))
        if phonenumbers.is_valid_number(phonenumbers.parse(candidate, None)):
            return candidate
    raise AssertionError(f"no valid number found under {prefix}")


@pytest.fixture
def sms_settings(infra, namespace, sandbox_server):
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            twilio_api_base=sandbox_server.url,
            twilio_status_callbacks=False,
            sms_redis_prefix=f"{namespace}sms:",
            sms_provider_mps=1000,
            public_url="http://test",
            sms_allowed_costly_types="personal_number",  # Twilio's magic test numbers are NANP 500 (personal) numbers
        )
        values.update(overrides)
        return settings_for(Settings, infra, namespace, **values)

    return make


@contextlib.asynccontextmanager
async def sms_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    await make_topics(settings)
    async with running(create_app(settings)) as client:
        yield client


def dispatch(phone: str | None, *, user_id: str | None = None, **overrides: Any) -> Dispatch:
    values: dict[str, Any] = dict(
        notification_id=uuid.uuid4(), event_id=uuid.uuid4().hex, event_source="tests", event_type="booking.confirmed",
        category="lesson_updates", channel=Channel.sms, recipient=Recipient(user_id=user_id or f"u-{uuid.uuid4().hex[:8]}", phone=phone),
        template="booking_confirmed_student", url="https://app.example.com/bookings/b_42",
        data={"booking_id": "b_42", "student_id": "u_1", "instructor_id": "u_2", "title": "Piano lesson", "starts_at": STARTS.iso},
    )
    values.update(overrides)
    return Dispatch(**values)


async def produce_all(bootstrap: str, topic: str, dispatches: list[Dispatch]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for d in dispatches:
            await producer.send(topic, d.model_dump_json().encode(), key=d.recipient.user_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def statuses_of(infra, settings: Settings, ids: set[uuid.UUID], *, final: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Statuses of ``ids`` on notify.status, once ``final`` of them are not 'retrying'."""
    wanted = {str(i) for i in ids}
    async with TopicReader(infra.kafka_bootstrap, settings.status_topic) as reader:

        async def enough() -> list[dict[str, Any]] | None:
            await reader.poll()
            mine = [s for s in reader.json() if s["notification_id"] in wanted]
            return mine if sum(1 for s in mine if s["status"] != "retrying") >= final else None

        return await eventually(enough, timeout=timeout, what=f"{final} final status(es)")


class Captured(logging.Handler):
    """Every log record of the process, formatted, for privacy and warning checks."""

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(f"{r.getMessage()} {json.dumps({k: str(v) for k, v in r.__dict__.items()})}" for r in self.records)


@contextlib.contextmanager
def captured_logs(level: int = logging.INFO) -> Iterator[Captured]:
    handler = Captured(level)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
