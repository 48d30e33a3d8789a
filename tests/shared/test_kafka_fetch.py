"""How Herald's consumers read: fetch waits per kind of consumer, and no pause after an empty read."""

from __future__ import annotations

import pytest
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker
from faststream.kafka.subscriber.usecase import BatchSubscriber

from shared import Channel, HeraldSettings, Ledger, SenderPipeline
from shared._kafka import BACKGROUND_FETCH_MAX_WAIT_MS, _BatchSubscriber


def fetch_waits(broker: KafkaBroker) -> dict[str, int]:
    """Each subscriber's title -> the fetch_max_wait_ms its aiokafka consumer is built with."""
    return {sub.specification.config.title_: sub._connection_args["fetch_max_wait_ms"] for sub in broker.subscribers}


def test_lanes_and_the_router_fetch_with_the_setting_and_background_consumers_with_kafkas_default():
    from services.router.catalogue import load_catalogue
    from services.router.handlers import build_router
    from services.router.settings import Settings as RouterSettings

    settings = HeraldSettings(environment="test", kafka_fetch_max_wait_ms=37)

    async def deliver(dispatch, res) -> str:
        return "ok"

    broker = KafkaBroker()
    broker.include_routers(*SenderPipeline(settings, Channel.email, deliver, ledger=Ledger("email")).routers())
    router_settings = RouterSettings(environment="test", kafka_fetch_max_wait_ms=37)
    broker.include_router(build_router(router_settings, load_catalogue(router_settings.catalogue_path)))
    assert fetch_waits(broker) == {
        "email:normal": 37,
        "email:critical": 37,
        "email:retry": BACKGROUND_FETCH_MAX_WAIT_MS,
        "email:retry-critical": BACKGROUND_FETCH_MAX_WAIT_MS,
        "router:domain": 37,
        "router:status": BACKGROUND_FETCH_MAX_WAIT_MS,
        "router:erasure-status": BACKGROUND_FETCH_MAX_WAIT_MS,
    }


class StubConsumer:
    def __init__(self, *answers: dict) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[int, int | None]] = []

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        self.calls.append((timeout_ms, max_records))
        return self.answers.pop(0)


async def test_an_empty_read_returns_at_once_and_records_come_in_order(monkeypatch):
    import faststream.kafka.subscriber.usecase as usecase

    async def no_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds}s after an empty read: a record arriving meanwhile waits for it")

    monkeypatch.setattr(usecase.anyio, "sleep", no_sleep)
    broker = KafkaBroker()
    broker.subscriber("t", group_id="g", batch=True, batch_timeout_ms=40, max_records=7)(lambda _: None)
    subscriber = broker.subscribers[0]
    subscriber.__class__ = _BatchSubscriber  # what start_broker does to every batch subscriber
    a = ConsumerRecord("t", 0, 1, 0, 0, None, b"a", None, 0, 0, [])
    b = ConsumerRecord("t", 1, 5, 0, 0, None, b"b", None, 0, 0, [])
    consumer = StubConsumer({}, {"tp0": [a], "tp1": [b]})
    assert await subscriber.get_msg(consumer) == ()
    assert await subscriber.get_msg(consumer) == (a, b)
    assert consumer.calls == [(40, 7), (40, 7)]


async def test_start_broker_swaps_every_batch_subscriber(monkeypatch):
    from shared import _kafka

    broker = KafkaBroker()
    broker.subscriber("t", group_id="g", batch=True)(lambda _: None)
    broker.subscriber("u", group_id="h")(lambda _: None)  # not a batch: left alone

    async def connect() -> None:
        raise RuntimeError("stop here")

    monkeypatch.setattr(broker, "connect", connect)
    with pytest.raises(RuntimeError, match="stop here"):
        await _kafka.start_broker(broker)
    swapped = [s for s in broker.subscribers if type(s) is _BatchSubscriber]
    assert len(swapped) == 1 and swapped[0].batch_timeout_ms is not None
    assert [s for s in broker.subscribers if s not in swapped and isinstance(s, BatchSubscriber)] == []
