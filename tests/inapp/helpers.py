"""Helpers of the inapp tests: real uvicorn servers, an SSE reader, dispatches."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from herald.infra import free_port
from shared import Channel, Dispatch, Recipient

from ..support import ServerThread, eventually


def dispatch(user_id: str, **overrides: Any) -> Dispatch:
    values: dict[str, Any] = dict(
        notification_id=uuid.uuid4(),
        event_id=uuid.uuid4().hex,
        event_source="tests",
        event_type="system.update",
        category="system_updates",
        channel=Channel.inapp,
        recipient=Recipient(user_id=user_id),
        template="system_update",
        data={"title": "Maintenance tonight", "body": "Back by 02:00."},
        url="https://app.example/status",
    )
    values.update(overrides)
    return Dispatch(**values)


class Server(ServerThread):
    """A real uvicorn server running an app in a thread of its own, entered once it answers ``/readyz``."""

    ready_path = "/readyz"

    def __init__(self, app: Any) -> None:
        super().__init__(app, graceful_seconds=3)

    async def __aenter__(self) -> Server:
        self.thread.start()

        async def ready() -> bool:
            if not self.thread.is_alive():
                raise AssertionError("the server thread ended during start-up")
            if not self.server.started:
                return False
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{self.url}{self.ready_path}")).status_code == 200

        await eventually(ready, timeout=60, interval=0.2, what=f"server on {self.port} ready")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await asyncio.to_thread(self.thread.join, 30)


@dataclass
class Event:
    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SSE:
    """Reads a server-sent-event stream in the background; events and comments are kept in order."""

    response: httpx.Response
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    comments: list[str] = field(default_factory=list)
    last_event_id: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def pump(self) -> None:
        try:
            await self._read()
        finally:
            self.ended.set()

    async def _read(self) -> None:
        event, data, event_id = "message", [], None
        async for line in self.response.aiter_lines():
            if line == "":
                if data or event != "message":
                    if event_id is not None:
                        self.last_event_id = event_id
                    await self.events.put(Event(event, "\n".join(data), event_id))
                event, data, event_id = "message", [], None
            elif line.startswith(":"):
                self.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    event_id = value

    async def next(self, kind: str | None = None, *, timeout: float = 20.0) -> Event:
        """The next event (of ``kind``, skipping others)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind or 'event'} within {timeout}s")
            try:
                event = await asyncio.wait_for(self.events.get(), remaining)
            except TimeoutError:
                raise AssertionError(f"no {kind or 'event'} within {timeout}s") from None
            if kind is None or event.event == kind:
                return event

    async def notifications(self, count: int, *, timeout: float = 20.0) -> list[Event]:
        return [await self.next("notification", timeout=timeout) for _ in range(count)]


@contextlib.asynccontextmanager
async def sse(url: str, *, headers: dict[str, str] | None = None, params: dict[str, str] | None = None) -> AsyncIterator[SSE]:
    """Open a stream; fails unless it answers 200 with text/event-stream."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as client:
        async with client.stream("GET", url, headers=headers or {}, params=params) as response:
            if response.status_code != 200:
                await response.aread()
                raise AssertionError(f"stream answered {response.status_code}: {response.text}")
            assert response.headers["content-type"].startswith("text/event-stream")
            reader = SSE(response)
            task = asyncio.create_task(reader.pump())
            try:
                yield reader
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                    await task


class TcpProxy:
    """A TCP relay to a real server that a test can cut (drop connections, refuse new ones) and restore."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        self.writers.clear()
        await self.server.wait_closed()

    async def stop(self) -> None:
        await self.cut()
