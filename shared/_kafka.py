"""Kafka wiring shared by the services: the broker, topics, publishing and the dead-letter writer."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import IncompatibleBrokerVersion, TopicAlreadyExistsError
from faststream.kafka import KafkaBroker
from faststream.kafka.subscriber.usecase import BatchSubscriber
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from ._logging import mask_text
from ._models import Channel
from ._settings import HeraldSettings
from .events import domain_areas

log = logging.getLogger(__name__)

#: Header names on ``dlq`` messages.
DLQ_STAGE = "herald-stage"
DLQ_REASON = "herald-reason"
DLQ_ERROR = "herald-error"
DLQ_TOPIC = "herald-original-topic"
DLQ_PARTITION = "herald-original-partition"
DLQ_OFFSET = "herald-original-offset"
#: On a message `herald dlq replay` re-published: where the dead letter was (``<partition>@<offset>`` of
#: ``dlq``). The router walks a replayed broadcast again rather than taking it for a redelivery.
REPLAY_HEADER = "herald-replay"


def kafka_ssl_context(settings: HeraldSettings) -> ssl.SSLContext | None:
    """The TLS context of every Kafka client, when the protocol is SSL or SASL_SSL: the broker's certificate verified."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(cafile=settings.kafka_ssl_ca_file)
    if settings.kafka_ssl_cert_file:
        context.load_cert_chain(settings.kafka_ssl_cert_file, settings.kafka_ssl_key_file)
    return context


def kafka_options(settings: HeraldSettings) -> dict[str, Any]:
    """Connection options for an aiokafka client (producer, consumer, admin): protocol, TLS, SASL."""
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap, "security_protocol": settings.kafka_security_protocol}
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None,
        )
    return options


def kafka_security(settings: HeraldSettings) -> BaseSecurity | None:
    """The same, as FastStream's broker takes it."""
    context = kafka_ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL"):
        kind = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}[settings.kafka_sasl_mechanism]
        password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
        return kind(settings.kafka_sasl_username or "", password, ssl_context=context, use_ssl=context is not None)
    if context is not None:
        return BaseSecurity(ssl_context=context, use_ssl=True)
    return None


def make_broker(settings: HeraldSettings, *, registry: CollectorRegistry | None = None) -> KafkaBroker:
    """A FastStream Kafka broker configured from settings (acks=all, idempotence as set)."""
    middlewares = [KafkaPrometheusMiddleware(registry=registry, app_name=settings.service_name)] if registry else []
    return KafkaBroker(
        settings.kafka_bootstrap,
        security=kafka_security(settings),
        client_id=f"herald-{settings.service_name}",
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        metadata_max_age_ms=settings.kafka_metadata_max_age_ms,
        graceful_timeout=settings.drain_timeout_seconds or None,  # stopping waits this long for handlers in flight
        middlewares=middlewares,
        logger=logging.getLogger(f"herald.{settings.service_name}.kafka"),
    )


async def _raw(message: Any) -> None:
    # Handlers read the records themselves (``msg.raw_message``), so a malformed
    # message reaches them, and the dead-letter topic, instead of failing in a decoder.
    return None


class _BatchSubscriber(BatchSubscriber):
    """FastStream's batch subscriber, without its pause after an empty read.

    FastStream's reads a batch with ``getmany(timeout_ms=batch_timeout_ms)`` and, when nothing came,
    sleeps ``batch_timeout_ms`` more before the next read: a record arriving in that sleep waited for
    it (up to 50 ms by default, on every hop of the pipeline). ``getmany`` already returns as soon as
    a fetch brings records, so nothing needs the sleep; an idle subscriber still wakes only every
    ``batch_timeout_ms``.
    """

    __slots__ = ()

    async def get_msg(self, consumer: AIOKafkaConsumer) -> tuple[ConsumerRecord, ...]:
        messages = await consumer.getmany(timeout_ms=self.batch_timeout_ms, max_records=self.max_records)
        return tuple(record for records in messages.values() for record in records)


async def start_broker(broker: KafkaBroker) -> None:
    """``broker.start()``, with every subscriber joining its consumer group at the same time.

    FastStream starts subscribers one after another, and each group join waits at the broker
    before it answers (Kafka's initial rebalance delay, 3 s by default; the embedded broker waits
    half the session timeout): a sender has four consumer groups, so it took four such waits to
    become ready after every start and restart.
    """
    for subscriber in broker.subscribers:
        if type(subscriber) is BatchSubscriber:
            subscriber.__class__ = _BatchSubscriber  # same fields (no slots of its own): only get_msg differs
    await broker.connect()
    async with asyncio.TaskGroup() as group:  # one failing cancels the others' joins
        for subscriber in broker.subscribers:
            group.create_task(subscriber.start())
    for publisher in broker.publishers:
        await publisher.start()
    broker.running = True


#: How long the broker may hold a fetch of a consumer whose latency does not matter (delay topics,
#: statuses): Kafka's default, so that idle such consumers cost the broker little.
BACKGROUND_FETCH_MAX_WAIT_MS = 500


def subscriber_options(settings: HeraldSettings, group: str, *, background: bool = False) -> dict[str, Any]:
    """Options of every Herald consumer: batches, commit after the batch is finished, earliest, no decoding.

    A ``background`` consumer (delay topics, statuses) fetches with Kafka's default wait; the others
    with ``kafka_fetch_max_wait_ms``, which bounds their latency on a broker that holds fetches.
    """
    from faststream import AckPolicy

    return {
        "decoder": _raw,
        "group_id": settings.group_id(group),
        "batch": True,
        "max_records": settings.kafka_max_batch,
        "batch_timeout_ms": settings.kafka_batch_timeout_ms,
        "fetch_max_wait_ms": BACKGROUND_FETCH_MAX_WAIT_MS if background else settings.kafka_fetch_max_wait_ms,
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka_heartbeat_interval_ms,
    }


def topic_roles(settings: HeraldSettings) -> dict[str, str]:
    """Every topic Herald reads or writes, with its role (the key of its retention in ``topic_retention_hours``)."""
    roles = {settings.area_topic(area): "domain" for area in domain_areas()}
    for channel in Channel:
        roles[settings.notify_topic(channel)] = "notify"
        roles[settings.notify_topic(channel, critical=True)] = "notify"
        roles.update(dict.fromkeys(settings.retry_topics(channel), "retry"))
    roles[settings.status_topic] = "status"
    roles[settings.dlq_topic] = "dlq"
    roles[settings.erasure_topic] = "erasure"
    roles[settings.erasure_status_topic] = "erasure_status"
    return roles


def all_topics(settings: HeraldSettings) -> list[str]:
    """Every topic Herald reads or writes, for ``herald topics``."""
    return list(topic_roles(settings))


def topic_config(settings: HeraldSettings, role: str) -> dict[str, str]:
    """The configuration a topic of ``role`` is created with, and brought back to by ``herald topics``."""
    config = {"cleanup.policy": "delete", "retention.ms": str(int(settings.topic_retention_table()[role] * 3_600_000))}
    if settings.kafka_min_insync_replicas:
        config["min.insync.replicas"] = str(settings.kafka_min_insync_replicas)
    return config


async def create_topics(settings: HeraldSettings, topics: Iterable[str] | None = None) -> list[str]:
    """Create the topics that do not exist yet, configured for their role; return the ones created."""
    roles = topic_roles(settings)
    wanted = list(topics if topics is not None else roles)
    admin = AIOKafkaAdminClient(**kafka_options(settings), client_id="herald-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [
                        NewTopic(
                            t,
                            num_partitions=settings.kafka_partitions,
                            replication_factor=settings.kafka_replication_factor,
                            topic_configs=topic_config(settings, roles[t]) if t in roles else {},
                        )
                        for t in missing
                    ]
                )
            except TopicAlreadyExistsError:
                pass
        return missing
    finally:
        await admin.close()


async def reconfigure_topics(settings: HeraldSettings) -> list[str]:
    """Bring Herald's existing topics to their role's configuration (``herald topics``); the ones changed.

    Only topics whose configuration differs are altered. A broker that cannot change a topic's
    configuration (no AlterConfigs, like the embedded one) raises ``TopicConfigError`` naming them.
    """
    roles = topic_roles(settings)
    admin = AIOKafkaAdminClient(**kafka_options(settings), client_id="herald-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        return await configure_topics(admin, settings, [t for t in roles if t in existing], roles)
    finally:
        await admin.close()


async def configure_topics(admin: AIOKafkaAdminClient, settings: HeraldSettings, topics: Sequence[str], roles: dict[str, str]) -> list[str]:
    if not topics:
        return []
    described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    current: dict[str, dict[str, str]] = {}
    own: dict[str, dict[str, str]] = {}  # set on the topic itself (not a broker or built-in default)
    for response in described:
        for error_code, error_message, _type, name, entries in response.resources:
            if error_code:
                raise TopicConfigError(f"describing {name}: error {error_code} {error_message or ''}".strip())
            current[name] = {entry[0]: entry[1] for entry in entries}
            own[name] = {entry[0]: entry[1] for entry in entries if _set_on_topic(entry)}
    changed = [t for t in topics if any(current.get(t, {}).get(k) != v for k, v in topic_config(settings, roles[t]).items())]
    if changed:
        # AlterConfigs replaces a topic's whole dynamic configuration: what an operator set on it stays.
        wanted = {t: {**own.get(t, {}), **topic_config(settings, roles[t])} for t in changed}
        try:
            answers = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, t, wanted[t]) for t in changed])
        except IncompatibleBrokerVersion:
            raise TopicConfigError(f"this broker cannot change a topic's configuration (no AlterConfigs); these differ: {', '.join(changed)}") from None
        for answer in answers:
            for error_code, error_message, _type, name in answer.resources:
                if error_code:
                    raise TopicConfigError(f"configuring {name}: error {error_code} {error_message or ''}".strip())
    return changed


#: DescribeConfigs' config source of a value set on the topic itself (v1 and later).
DYNAMIC_TOPIC_CONFIG = 1


def _set_on_topic(entry: Sequence[Any]) -> bool:
    """Whether a DescribeConfigs entry is a value set on the topic (kept when altering), one that can be read back
    (not sensitive) and changed (not read-only). v0 entries: (name, value, read_only, is_default, is_sensitive);
    later: (name, value, read_only, config_source, is_sensitive, synonyms)."""
    name, value, read_only, source_or_default, sensitive = entry[:5]
    set_here = (not source_or_default) if len(entry) == 5 else source_or_default == DYNAMIC_TOPIC_CONFIG
    return bool(set_here and not read_only and not sensitive and value is not None)


class TopicConfigError(Exception):
    """The broker refused to describe or change a topic's configuration."""


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: a model (sent as JSON) or raw bytes."""

    topic: str
    value: BaseModel | bytes
    key: str | bytes | None = None
    headers: dict[str, str] | None = None


def _encode(value: BaseModel | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.model_dump_json().encode()


def _key(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


async def publish_many(broker: KafkaBroker, messages: Sequence[Outgoing]) -> None:
    """Publish all, then wait until Kafka has acknowledged every one (raises if any failed)."""
    futures = []
    for message in messages:
        futures.append(
            await broker.publish(
                _encode(message.value),
                message.topic,
                key=_key(message.key),
                headers=message.headers,
                no_confirm=True,
            )
        )
    if futures:
        await asyncio.gather(*futures)


def dead_letter(
    settings: HeraldSettings, record: ConsumerRecord, *, stage: str, reason: str, error: str = ""
) -> Outgoing:
    """The ``dlq`` message for a record: its original bytes and key, headers naming why."""
    headers = {k: v.decode(errors="replace") for k, v in (record.headers or ()) if not k.startswith("herald-")}
    headers.update(
        {
            DLQ_STAGE: stage,
            DLQ_REASON: reason,
            DLQ_ERROR: mask_text(error)[:2000],  # errors quote what they refused: no address or number in clear
            DLQ_TOPIC: record.topic,
            DLQ_PARTITION: str(record.partition),
            DLQ_OFFSET: str(record.offset),
        }
    )
    return Outgoing(settings.dlq_topic, record.value or b"", key=record.key, headers=headers)


def header(record: ConsumerRecord, name: str) -> str | None:
    """A header of a consumed record, decoded."""
    for key, value in record.headers or ():
        if key == name:
            return value.decode(errors="replace")
    return None
