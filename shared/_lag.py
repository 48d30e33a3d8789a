"""Consumer lag of a service's own consumer groups, as the ``herald_consumer_lag`` gauge.

Every ``interval`` seconds the collector asks Kafka, for each consumer group the
service's subscribers use, which offset the group has committed on each
partition of the topics it reads (named topics, or those matching its pattern)
and where each partition ends. The difference is the lag. A partition the group
has never committed on counts from its first offset (the subscribers start at
``earliest``). Every instance of a service reports the same figures for its
group, so queries take ``max by (group, topic, partition)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker

from ._metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchedGroup:
    """One consumer group and what it reads: topics by name, or a pattern."""

    group: str
    topics: tuple[str, ...] = ()
    pattern: str | None = None

    def reads(self, topic: str) -> bool:
        """Whether the group consumes ``topic``."""
        return topic in self.topics or (self.pattern is not None and re.fullmatch(self.pattern, topic) is not None)


def watched_groups(broker: KafkaBroker) -> list[WatchedGroup]:
    """The consumer groups of a broker's subscribers (subscribers without a group are not watched)."""
    found: dict[str, WatchedGroup] = {}
    for sub in broker.subscribers:
        group = getattr(sub, "group_id", None)
        if not group:
            continue
        pattern = sub.pattern.broker_address if getattr(sub, "pattern", None) else None
        known = found.get(group, WatchedGroup(group))
        found[group] = WatchedGroup(group, tuple(dict.fromkeys((*known.topics, *sub.topic_names_for_subscribe))), pattern or known.pattern)
    return list(found.values())


def lag_of(
    committed: Mapping[TopicPartition, int], first: Mapping[TopicPartition, int], end: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Messages left per partition: end offset minus the committed offset (the first offset when none is committed)."""
    lag: dict[TopicPartition, int] = {}
    for tp, last in end.items():
        position = committed.get(tp, -1)
        if position is None or position < 0:
            position = first.get(tp, 0)
        lag[tp] = max(last - position, 0)
    return lag


class LagCollector:
    """Reads committed and end offsets of some consumer groups and sets the lag gauge."""

    def __init__(self, bootstrap: str | Mapping[str, Any], groups: Iterable[WatchedGroup], metrics: Metrics) -> None:
        # the bootstrap servers, or every connection option (kafka_options: TLS, SASL)
        self.connection = {"bootstrap_servers": bootstrap} if isinstance(bootstrap, str) else dict(bootstrap)
        self.groups = list(groups)
        self.metrics = metrics
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._offsets is None:
            admin = AIOKafkaAdminClient(**self.connection, client_id="herald-lag")
            offsets = AIOKafkaConsumer(**self.connection, client_id="herald-lag", group_id=None, enable_auto_commit=False)
            try:
                await admin.start()
                await offsets.start()
            except BaseException:
                await admin.close()
                await offsets.stop()
                raise
            self._admin, self._offsets = admin, offsets
        return self._admin, self._offsets

    async def close(self) -> None:
        """Close the Kafka clients."""
        if self._offsets is not None:
            await self._offsets.stop()
        if self._admin is not None:
            await self._admin.close()
        self._admin = self._offsets = None

    async def collect(self) -> dict[tuple[str, str, int], int]:
        """Measure every watched group once, set the gauge, and return ``{(group, topic, partition): lag}``."""
        admin, offsets = await self._clients()
        described = await admin.describe_topics()
        partitions_of = {t["topic"]: [p["partition"] for p in t["partitions"]] for t in described if not t.get("error_code")}
        result: dict[tuple[str, str, int], int] = {}
        for watched in self.groups:
            tps = [TopicPartition(topic, p) for topic, parts in partitions_of.items() if watched.reads(topic) for p in parts]
            if not tps:
                continue
            committed = await admin.list_consumer_group_offsets(watched.group, partitions=tps)
            first = await offsets.beginning_offsets(tps)
            end = await offsets.end_offsets(tps)
            for tp, lag in lag_of({tp: meta.offset for tp, meta in committed.items()}, first, end).items():
                self.metrics.consumer_lag.labels(watched.group, tp.topic, str(tp.partition)).set(lag)
                result[(watched.group, tp.topic, tp.partition)] = lag
        return result

    async def run(self, interval: float) -> None:
        """Collect every ``interval`` seconds until cancelled; a failed round is logged and retried."""
        failing = False
        while True:
            try:
                await self.collect()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka unreachable: keep the last figures, say so once, try again
                if not failing:
                    log.warning("consumer lag not measured: %s: %s", type(exc).__name__, exc)
                failing = True
                await self.close()
            await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def consumer_lag(bootstrap: str | Mapping[str, Any], broker: KafkaBroker, metrics: Metrics, *, interval: float) -> AsyncIterator[LagCollector | None]:
    """Run a ``LagCollector`` for the broker's consumer groups in the background (none when ``interval`` <= 0)."""
    groups = watched_groups(broker)
    if interval <= 0 or not groups:
        yield None
        return
    collector = LagCollector(bootstrap, groups, metrics)
    task = asyncio.create_task(collector.run(interval), name="herald-consumer-lag")
    try:
        yield collector
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await collector.close()
