"""Real-time fan-out: inbox changes published on Redis pub/sub, delivered to this instance's open streams.

Any instance may store a notification; any instance may hold the user's
stream. Each change is published on the user's channel
(``<prefix>user:<id>``) after it is committed. Each instance keeps one pub/sub
connection, subscribed to the channels of the users with a stream open here,
and hands each message to those streams' bounded queues.

Pub/sub is only the fast path: a stream that finds a gap in the sequence
numbers, or whose queue overflowed, or that resumes after a reconnect, reads
what it missed from ``inapp.notifications``, which is the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
import logging
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from . import logic

log = logging.getLogger(__name__)


class Subscriber:
    """One open stream's inbox of pub/sub messages; bounded, and it remembers when it dropped one."""

    def __init__(self, user_id: str, size: int) -> None:
        self.user_id = user_id
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=size)
        self.overflowed = False

    def offer(self, message: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            # Memory stays bounded; the stream catches up from the table instead.
            self.overflowed = True

    async def get(self, timeout: float | None) -> dict[str, Any] | None:
        """The next message, or None after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                return await self.queue.get()
        except TimeoutError:
            return None

    def take_overflow(self) -> bool:
        """Whether messages were dropped since the last call (and the queue is drained when so)."""
        if not self.overflowed:
            return False
        self.overflowed = False
        while not self.queue.empty():
            self.queue.get_nowait()
        return True


# One user's open streams across instances: a sorted set of stream ids scored by when each lapses unless renewed.
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


class TooManyStreams(Exception):
    """The user holds as many streams as allowed (``where``: this instance, or all instances)."""

    def __init__(self, where: str) -> None:
        self.where = where
        super().__init__(where)


class Slot:
    """A stream's place under the caps, taken before the response starts and given back once (however it ends)."""

    def __init__(self, hub: StreamHub, user_id: str, stream_id: str) -> None:
        self.hub, self.user_id, self.stream_id = hub, user_id, stream_id
        self.released = False

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.hub._release_local(self)
        if self.hub.max_per_user_total:
            # Its own task: a stream ends by cancellation, and an await in a cancelled scope would be cancelled too.
            self.hub._spawn(self.hub.redis.zrem(self.hub._slots_key(self.user_id), self.stream_id))


class StreamHub:
    """This instance's pub/sub subscription, shared by all its open streams."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        queue_size: int,
        subscribe_timeout: float = 10.0,
        max_per_user: int = 20,
        max_per_user_total: int = 0,
        slot_ttl_seconds: float = 60.0,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.queue_size = queue_size
        self.subscribe_timeout = subscribe_timeout
        self.max_per_user = max_per_user
        self.max_per_user_total = max_per_user_total  # 0: no cap across instances
        self.slot_ttl = slot_ttl_seconds
        self._slots: dict[str, dict[str, Slot]] = {}  # user → stream id → slot, on this instance
        self._renewer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pubsub = redis.pubsub()
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._confirmations: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._control = f"{prefix}hub"
        self._connected = asyncio.Event()
        self._lost = False

    async def start(self, timeout: float = 5.0) -> None:
        """Start reading; wait a little for Redis, but start without it (streams answer 503 until it is back)."""
        self._reader = asyncio.create_task(self._read(), name="inbox-pubsub-reader")
        if self.max_per_user_total:
            self._renewer = asyncio.create_task(self._renew(), name="inbox-stream-slots")
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            log.warning("Redis pub/sub not reachable yet; in-app streams are unavailable until it is")

    @property
    def connected(self) -> bool:
        """Whether this instance currently receives the published changes."""
        return self._connected.is_set()

    async def stop(self) -> None:
        for task in (self._reader, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()

    @property
    def open_streams(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def streams_of(self, user_id: str) -> int:
        """How many streams of this user are open (or being opened) on this instance."""
        return len(self._slots.get(user_id, ()))

    async def reserve(self, user_id: str) -> Slot:
        """A place for one more stream of the user, or TooManyStreams. The check and the taking of the place on this
        instance happen without a pause between them, so concurrent connects cannot both see room for one."""
        mine = self._slots.setdefault(user_id, {})
        if len(mine) >= self.max_per_user:
            raise TooManyStreams("on this instance")
        slot = Slot(self, user_id, uuid.uuid4().hex)
        mine[slot.stream_id] = slot  # taken before any await
        if self.max_per_user_total:
            try:
                now = time.time()
                taken = await self.redis.eval(
                    _RESERVE, 1, self._slots_key(user_id), now, now + self.slot_ttl, slot.stream_id, self.max_per_user_total, int(self.slot_ttl * 2000)
                )
            except BaseException:
                self._release_local(slot)
                raise
            if not int(taken):
                self._release_local(slot)
                slot.released = True
                raise TooManyStreams("across instances")
        return slot

    def _spawn(self, work: Any) -> None:
        async def quietly() -> None:
            with contextlib.suppress(Exception):  # a place left behind lapses on its own
                await work

        task = asyncio.get_running_loop().create_task(quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _release_local(self, slot: Slot) -> None:
        mine = self._slots.get(slot.user_id, {})
        mine.pop(slot.stream_id, None)
        if not mine:
            self._slots.pop(slot.user_id, None)

    def _slots_key(self, user_id: str) -> str:
        return f"{self.prefix}streams:{user_id}"

    async def _renew(self) -> None:
        """Push out the lapse time of this instance's streams, so that a crashed instance's streams lapse on their own."""
        while True:
            await asyncio.sleep(self.slot_ttl / 3)
            try:
                lapse = time.time() + self.slot_ttl
                async with self.redis.pipeline(transaction=False) as pipe:
                    for user_id, slots in list(self._slots.items()):
                        for stream_id in list(slots):
                            pipe.zadd(self._slots_key(user_id), {stream_id: lapse})
                        pipe.pexpire(self._slots_key(user_id), int(self.slot_ttl * 2000))
                    await pipe.execute()
            except Exception as exc:  # Redis away: the slots lapse and are taken again once it is back
                log.warning("could not renew the open streams' places in Redis: %s", exc)

    @contextlib.asynccontextmanager
    async def subscribe(self, user_id: str) -> AsyncIterator[Subscriber]:
        """Receive the user's changes until the block ends; subscribed on Redis before it yields."""
        subscriber = Subscriber(user_id, self.queue_size)
        channel = logic.channel_of(self.prefix, user_id)
        async with self._lock:
            first = channel not in self._subscribers
            self._subscribers.setdefault(channel, set()).add(subscriber)
            if first:
                try:
                    await self._subscribe(channel)
                    await self._wait_confirmed(channel)
                except BaseException:
                    self._subscribers.pop(channel, None)
                    with contextlib.suppress(Exception):
                        await self._pubsub.unsubscribe(channel)
                    raise
        try:
            yield subscriber
        finally:
            async with self._lock:
                group = self._subscribers.get(channel)
                if group is not None:
                    group.discard(subscriber)
                    if not group:
                        del self._subscribers[channel]
                        with contextlib.suppress(Exception):
                            await self._pubsub.unsubscribe(channel)

    async def _subscribe(self, channel: str) -> None:
        self._confirmations[channel] = asyncio.Event()
        await self._pubsub.subscribe(channel)

    async def _wait_confirmed(self, channel: str) -> None:
        event = self._confirmations[channel]
        try:
            async with asyncio.timeout(self.subscribe_timeout):
                await event.wait()
        finally:
            self._confirmations.pop(channel, None)

    async def _read(self) -> None:
        backoff = 0.1
        while True:
            try:
                if not self._pubsub.subscribed:
                    await self._pubsub.subscribe(self._control)
                message = await self._pubsub.get_message(timeout=None)
                backoff = 0.1
                if message is not None and self._dispatch(message):
                    # Redis answers in order: the PONG comes after every re-subscription sent on reconnect.
                    await self._pubsub.ping()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._connected.is_set():
                    log.warning("inbox pub/sub connection lost (%s); reconnecting", exc)
                self._connected.clear()
                self._lost = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _dispatch(self, message: dict[str, Any]) -> bool:
        """Route one pub/sub message; True when a PING should follow (reconnected after a loss)."""
        kind = message["type"]
        channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
        if kind == "pong" and self._lost:
            # Everything is subscribed again: streams catch up on what was published meanwhile.
            self._lost = False
            self._resync_all()
            self._connected.set()
            return False
        if kind == "subscribe":
            event = self._confirmations.get(channel)
            if event is not None:
                event.set()
            if channel == self._control:
                if self._lost:
                    return True
                self._connected.set()
            return False
        if kind != "message":
            return False
        try:
            payload = json.loads(message["data"])
        except (ValueError, TypeError):
            log.warning("ignoring a malformed inbox message on %s", channel)
            return False
        for subscriber in list(self._subscribers.get(channel, ())):
            subscriber.offer(payload)
        return False

    def _resync_all(self) -> None:
        """After a lost connection every stream may have missed messages: make each catch up from the table."""
        for group in self._subscribers.values():
            for subscriber in group:
                subscriber.overflowed = True
                subscriber.offer({"kind": "resync"})  # wakes the stream; a full queue wakes it anyway


async def publish(redis: Redis, prefix: str, user_id: str, message: bytes) -> None:
    """Announce one committed change of the user's inbox to every instance."""
    await redis.publish(logic.channel_of(prefix, user_id), message)
