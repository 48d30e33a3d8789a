"""Stopping `make run` without losing what was accepted: close intake, wait for every consumer group, then stop.

The embedded broker keeps everything in memory, so whatever a consumer group has not
finished when the broker stops is gone. ``herald run`` therefore stops in this order on
Ctrl-C: ingress stops taking events (503 with ``Retry-After``), then this module waits,
printing the backlog, until every consumer group has committed everything it reads
(bounded by ``HERALD_RUN_DRAIN_SECONDS``), then the services stop (each drains its own
in-flight messages on SIGTERM) and the broker stops last.

Retries waiting on a delay topic are reported but not waited for past the bound: they may
be due in an hour. With a real Kafka cluster nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared import Channel, HeraldSettings

#: How long `make run` waits on Ctrl-C for every consumer group to catch up (HERALD_RUN_DRAIN_SECONDS).
RUN_DRAIN_SECONDS = 120
from shared._kafka import kafka_options
from shared._lag import LagCollector, WatchedGroup
from shared._metrics import Metrics

from .stack import SERVICES


def herald_groups(settings: HeraldSettings) -> list[WatchedGroup]:
    """Every consumer group Herald's services use, with what each reads."""
    groups = [
        WatchedGroup(settings.group_id("router"), pattern=settings.domain_pattern()),
        WatchedGroup(settings.group_id("router-status"), (settings.status_topic,)),
        WatchedGroup(settings.group_id("router-erasure-status"), (settings.erasure_status_topic,)),
        # every service applies erasures in a group of its own
        *(WatchedGroup(settings.group_id(f"{spec.name}-erasure"), (settings.erasure_topic,)) for spec in SERVICES),
    ]
    for channel in Channel:
        ch = channel.value
        tiers = settings.retry_tiers_seconds
        groups += [
            WatchedGroup(settings.group_id(ch), (settings.notify_topic(ch),)),
            WatchedGroup(settings.group_id(f"{ch}-critical"), (settings.notify_topic(ch, critical=True),)),
            WatchedGroup(settings.group_id(f"{ch}-retry"), tuple(settings.retry_topic(ch, tier=t) for t in tiers)),
            WatchedGroup(settings.group_id(f"{ch}-retry-critical"), tuple(settings.retry_topic(ch, critical=True, tier=t) for t in tiers)),
        ]
    return groups


def is_delay_group(group: str) -> bool:
    return group.endswith(("-retry", "-retry-critical"))


@dataclass(frozen=True)
class Backlog:
    waiting: dict[str, int]  # group → messages not yet finished (live lanes)
    delayed: int  # retries waiting on delay topics

    @property
    def done(self) -> bool:
        return not any(self.waiting.values())


async def measure(collector: LagCollector) -> Backlog:
    per_group: dict[str, int] = {}
    for (group, _topic, _partition), lag in (await collector.collect()).items():
        per_group[group] = per_group.get(group, 0) + lag
    delayed = sum(n for g, n in per_group.items() if is_delay_group(g))
    return Backlog({g: n for g, n in per_group.items() if not is_delay_group(g)}, delayed)


async def wait_until_drained(settings: HeraldSettings, *, timeout: float, say: Callable[[str], None] = print, quiet_checks: int = 3) -> Backlog:
    """Wait until no live consumer group has a backlog, ``quiet_checks`` times in a row a second apart (or ``timeout``)."""
    from prometheus_client import CollectorRegistry

    collector = LagCollector(kafka_options(settings), herald_groups(settings), Metrics(CollectorRegistry()))
    deadline = time.monotonic() + timeout
    quiet = 0
    last_said = 0.0
    backlog = Backlog({}, 0)
    try:
        while True:
            backlog = await measure(collector)
            quiet = quiet + 1 if backlog.done else 0
            if quiet >= quiet_checks:
                return backlog
            if time.monotonic() - last_said >= 2:  # shown also when the time is up: what is left behind
                busy = ", ".join(f"{g.removeprefix(settings.kafka_group_prefix + '-')} {n}" for g, n in sorted(backlog.waiting.items()) if n)
                say(f"herald: draining: {busy or 'settling'}" + (f"; {backlog.delayed} retries waiting on delay topics" if backlog.delayed else ""))
                last_said = time.monotonic()
            if time.monotonic() >= deadline:
                return backlog
            await asyncio.sleep(1.0)
    finally:
        await collector.close()
