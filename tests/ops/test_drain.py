"""Stopping `make run` without losing what was accepted: intake closes first, then every consumer group catches up."""

import os
import signal

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from herald.drain import herald_groups, is_delay_group, wait_until_drained
from herald.stack import SERVICES
from shared import HeraldSettings
from shared._lag import watched_groups

from ..support import make_topics, produce, settings_for
from .test_deploy_files import imported_app, settings_class


def test_the_drain_watches_exactly_the_groups_the_services_consume_in():
    settings = HeraldSettings(environment="test")
    used = {}
    for spec in SERVICES:
        app = imported_app(spec.app)(settings_class(spec.name)(**settings.model_dump()))
        for group in watched_groups(app.state.resources.broker):
            used[group.group] = (group.topics, group.pattern)
    assert {g.group: (g.topics, g.pattern) for g in herald_groups(settings)} == used
    assert {g for g in used if is_delay_group(g)} == {f"herald-{c}-retry{s}" for c in ("email", "sms", "push", "inapp") for s in ("", "-critical")}


async def test_the_backlog_is_waited_for_until_every_live_group_has_committed_it(infra, namespace):
    settings = settings_for(HeraldSettings, infra, namespace)
    await make_topics(settings)
    for i in range(3):
        await produce(infra.kafka_bootstrap, settings.notify_topic("inapp"), b"{}", key=f"k{i}".encode())
    await produce(infra.kafka_bootstrap, settings.retry_topic("email", tier=settings.retry_tiers_seconds[-1]), b"{}", key=b"r")
    said: list[str] = []
    waiting = await wait_until_drained(settings, timeout=3, say=said.append)
    assert not waiting.done and waiting.waiting[settings.group_id("inapp")] == 3 and waiting.delayed == 1
    assert any("inapp 3" in line for line in said)  # progress is shown
    # The inapp group finishes what it holds: committed at the end of every partition.
    consumer = AIOKafkaConsumer(bootstrap_servers=infra.kafka_bootstrap, group_id=settings.group_id("inapp"), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.notify_topic("inapp"), p) for p in range(settings.kafka_partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.commit({tp: OffsetAndMetadata(end, "") for tp, end in ends.items() if end})
    finally:
        await consumer.stop()
    drained = await wait_until_drained(settings, timeout=20, quiet_checks=2)
    assert drained.done and drained.delayed == 1  # a retry due later is reported, not waited for


async def test_sigusr1_closes_intake_with_503_and_retry_after():
    from services.ingress.app import INTAKE_RETRY_AFTER_SECONDS, create_app
    from services.ingress.settings import Settings

    from ..support import running

    app = create_app(Settings(environment="test", kafka_bootstrap="127.0.0.1:1"))  # never reached: refused before
    app.router.lifespan_context = _no_lifespan(app)
    async with running(app) as client:
        assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)  # the handler is in place
        os.kill(os.getpid(), signal.SIGUSR1)
        await _until(lambda: app.state.intake["closed"])
        refused = await client.post("/v1/events", json={"specversion": "1.0"})
        health = await client.get("/healthz")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == str(INTAKE_RETRY_AFTER_SECONDS)
    assert "stopping" in refused.json()["detail"] and health.status_code == 200


def _no_lifespan(app):
    """Only the intake hook of the lifespan: no broker, database or Redis is needed to test the door."""
    import contextlib

    from services.ingress.app import _intake_control

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        async with _intake_control(app.state.intake)(None):
            yield

    return lifespan


async def _until(probe, timeout: float = 5.0):
    import asyncio

    for _ in range(int(timeout / 0.05)):
        if probe():
            return
        await asyncio.sleep(0.05)
    pytest.fail("not reached")
