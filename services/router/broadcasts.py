"""Broadcasts: an event to every user, walked through the directory outside the event's consumer.

The consumer only writes the broadcast's shards (``repo.create_broadcast``) and goes on. Walkers,
``HERALD_BROADCAST_WALKERS`` per router instance, take shards under a lease and route them a page
at a time, moving the shard's cursor only after the page's dispatches are on Kafka and its trace
rows in PostgreSQL. A walker that dies leaves its cursor at its last finished page; when its lease
runs out another walker (of any instance) resumes there. A page done twice (the walker died
between publishing it and moving the cursor) yields the same notification ids, which the senders
deliver once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from aiokafka import ConsumerRecord

from shared import InvalidMessage, Resources, header
from shared._kafka import REPLAY_HEADER

from . import logic, repo
from .catalogue import Catalogue, Notification
from .directory import recipients_of
from .routing import BatchRouter, Chunk, Item
from .settings import Settings

log = logging.getLogger(__name__)


class Broadcasts:
    """This instance's broadcast walkers, and the start of every broadcast its consumer sees."""

    def __init__(self, settings: Settings, catalogue: Catalogue, router: BatchRouter) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.router = router
        self.owner = f"{settings.service_name}-{uuid.uuid4().hex[:12]}"
        self.wakeup = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, item: Item, notification: Notification, res: Resources) -> None:
        """Write the shards of ``item``'s broadcast of ``notification`` (once per event) and wake the walkers."""
        event = item.event
        assert event is not None
        record = item.record
        generation = header(record, REPLAY_HEADER) or ""
        async with res.pool.acquire() as conn:
            if await repo.broadcast_exists(
                conn=conn, namespace=self.settings.kafka_topic_namespace, event_source=event.source, event_id=event.id,
                template=notification.template, generation=generation,
            ):
                return  # a redelivery: its walk is under way or done
            bounds = await repo.shard_bounds(conn=conn, shards=self.settings.broadcast_shards)
            created = await repo.create_broadcast(
                conn=conn, namespace=self.settings.kafka_topic_namespace, event_source=event.source, event_id=event.id,
                template=notification.template, generation=generation, event=record.value or b"", origin=f"{record.topic}/{record.partition}@{record.offset}", bounds=bounds,
            )
        if created:
            log.info("broadcast %s %s in %d shards", event.type, notification.template, len(bounds), extra=item.about)
        self.wakeup.set()

    # ------------------------------------------------------------------ walking

    def run(self, res: Resources) -> None:
        self.tasks = [asyncio.create_task(self._walker(res, f"{self.owner}-{n}"), name=f"broadcast-walker-{n}") for n in range(self.settings.broadcast_walkers)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _walker(self, res: Resources, owner: str) -> None:
        """One walker; ``owner`` is its own, so two walkers of one instance never hold one shard together."""
        while True:
            try:
                self.wakeup.clear()  # before looking: a broadcast written meanwhile wakes this walker again
                async with res.pool.acquire() as conn:
                    shard = await repo.claim_shard(
                        conn=conn, namespace=self.settings.kafka_topic_namespace, owner=owner, lease_seconds=self.settings.broadcast_lease_seconds
                    )
                if shard is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wakeup.wait(), self.settings.broadcast_poll_seconds)
                    continue
                await self.walk(shard, res, owner)
            except asyncio.CancelledError:
                raise
            except Exception:  # PostgreSQL or Kafka away: the shard stays leased until its lease runs out, then is tried again
                log.exception("walking a broadcast failed; trying again")
                await asyncio.sleep(self.settings.broadcast_poll_seconds)

    async def walk(self, shard: dict[str, Any], res: Resources, owner: str) -> None:
        """Route a shard page by page from its cursor; give it back if stopped in the middle.

        A shard that fails keeps its lease until it runs out, so other broadcasts go on meanwhile
        rather than every walker taking the failing one again.
        """
        after, finished = shard["after_user"], False
        try:
            item, notification = self.item_of(shard)
            while not finished:
                page: list[str] = []
                if notification is not None:
                    async with res.pool.acquire() as conn:
                        page = await repo.shard_page(conn=conn, after=after, upto=shard["upto_user"], limit=self.settings.broadcast_page)
                if page:
                    assert notification is not None
                    profiles = await recipients_of(res).profiles(page)
                    chunk = Chunk()
                    self.router.collect(item, [notification], {notification: page}, profiles, chunk, res)
                    chunk.count(res)
                    await self.router.finish(chunk, res)
                    after = page[-1]
                finished = len(page) < self.settings.broadcast_page
                async with res.pool.acquire() as conn:
                    kept = await repo.advance_shard(
                        conn=conn, shard=shard["id"], owner=owner, after=after, routed=len(page), finished=finished,
                        lease_seconds=self.settings.broadcast_lease_seconds,
                    )
                if not kept:
                    log.warning("broadcast %s shard %d: lease lost at user %s; another walker goes on", shard["event_id"], shard["shard"], after)
                    return
        except asyncio.CancelledError:  # stopped (a drain): give it back now rather than when the lease runs out
            with contextlib.suppress(Exception):
                async with res.pool.acquire() as conn:
                    await repo.release_shard(conn=conn, shard=shard["id"], owner=owner)
            raise
        log.info("broadcast %s %s shard %d/%d done", shard["event_id"], shard["template"], shard["shard"] + 1, shard["shards"], extra=item.about)

    def item_of(self, shard: dict[str, Any]) -> tuple[Item, Notification | None]:
        """The broadcast's event, parsed again as the consumer did, and its notification in today's catalogue."""
        topic, _, rest = shard["origin"].rpartition("/")
        partition, _, offset = rest.partition("@")
        value = bytes(shard["event"])
        record = ConsumerRecord(topic, int(partition), int(offset), 0, 0, None, value, None, 0, len(value), [])
        item = Item(record)
        try:
            item.event = event = logic.parse_event(value)
            item.data = logic.validate_data(event)
        except InvalidMessage as exc:  # the catalogue or schema changed since it was accepted
            log.error("broadcast %s can no longer be read (%s); it ends here", shard["event_id"], exc)
            return item, None
        found = [n for n in self.catalogue.get(event.type) or () if n.template == shard["template"]]
        if not found:
            log.error("broadcast %s: the catalogue no longer has %s for %s; it ends here", shard["event_id"], shard["template"], event.type)
        return item, found[0] if found else None
