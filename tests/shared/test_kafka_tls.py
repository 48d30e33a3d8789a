"""Every Kafka client connects over TLS when told to, verifying the broker's certificate.

The embedded broker serves plain text only (Tansu's --cert/--key are not wired to its listener), so a
TLS terminator stands in front of it, as a load balancer or a TLS-enabled listener would in production,
and the broker advertises the terminator's port. SASL cannot be tried here: this Tansu build offers
SCRAM and OAUTHBEARER but stores no credentials, and no PLAIN (docs/security.md)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from herald import infra as local
from shared import HeraldSettings, create_topics
from shared._kafka import kafka_options, kafka_security, make_broker
from shared._lag import LagCollector, WatchedGroup
from shared._metrics import Metrics

from ..support import tls_certificate

pytestmark = [pytest.mark.real_clock, pytest.mark.timeout(120)]  # OpenSSL checks the certificate against the real clock


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return tls_certificate(tmp_path_factory.mktemp("tls"))


@contextlib.asynccontextmanager
async def tls_terminator(port: int, upstream: int, cert, key):
    """Accept TLS on ``port`` and pass the bytes to the plain-text broker on ``upstream``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def pipe(reader, writer):
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(client_reader, client_writer):
        broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(pipe(client_reader, broker_writer), pipe(broker_reader, client_writer), return_exceptions=True)

    server = await asyncio.start_server(serve, "127.0.0.1", port, ssl=context)
    try:
        yield
    finally:
        server.close()


@pytest.fixture
async def tls_broker(certificate):
    plain, secured = local.free_port(), local.free_port()
    proc = local.start_tansu(plain, advertised_port=secured)
    try:
        async with tls_terminator(secured, plain, *certificate):
            yield f"127.0.0.1:{secured}"
    finally:
        local.stop(proc)


async def test_topics_the_service_broker_and_the_lag_collector_all_speak_tls(tls_broker, certificate):
    settings = HeraldSettings(
        environment="test", kafka_bootstrap=tls_broker, kafka_security_protocol="SSL", kafka_ssl_ca_file=str(certificate[0]),
        kafka_topic_namespace=f"tls{uuid.uuid4().hex[:6]}.", kafka_partitions=1,
    )
    topic = settings.status_topic
    assert topic in await create_topics(settings, [topic])  # the admin client, over TLS
    broker = make_broker(settings)  # FastStream, with kafka_security
    await broker.connect()
    try:
        await broker.publish(b"over tls", topic=topic)
    finally:
        await broker.stop()
    consumer = AIOKafkaConsumer(topic, **kafka_options(settings), group_id="tls-readers", auto_offset_reset="earliest")
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert record.value == b"over tls"
    collector = LagCollector(kafka_options(settings), [WatchedGroup("tls-readers", topics=(topic,))], Metrics(CollectorRegistry()))
    admin, _ = await collector._clients()  # connects over TLS, or raises
    assert "tls-readers" in {g[0] for g in await admin.list_consumer_groups()}
    await collector.close()


async def test_an_unverified_certificate_or_plain_text_does_not_connect(tls_broker):
    untrusted = HeraldSettings(environment="test", kafka_bootstrap=tls_broker, kafka_security_protocol="SSL", kafka_request_timeout_ms=5000)
    with pytest.raises(Exception) as refused:  # aiokafka reports the failed handshake as a failure to bootstrap
        await asyncio.wait_for(create_topics(untrusted, ["never"]), 30)
    assert "bootstrap" in str(refused.value).lower() or "certificate" in str(refused.value).lower()
    plain = HeraldSettings(environment="test", kafka_bootstrap=tls_broker)
    with pytest.raises(Exception):
        await asyncio.wait_for(create_topics(plain, ["never"]), 30)


def test_sasl_settings_reach_both_kinds_of_client():
    settings = HeraldSettings(
        environment="test", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="herald", kafka_sasl_password="a-long-sasl-password",
    )
    options = kafka_options(settings)
    assert (options["security_protocol"], options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "SASL_SSL", "SCRAM-SHA-256", "herald", "a-long-sasl-password")
    assert isinstance(options["ssl_context"], ssl.SSLContext) and options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    security = kafka_security(settings)
    assert type(security).__name__ == "SASLScram256" and security.use_ssl
    assert kafka_security(HeraldSettings(environment="test")) is None
