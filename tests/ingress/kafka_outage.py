"""A broker of the test's own behind a TCP relay, so it can be stopped and a new one started where clients look."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

from herald import infra


def start_broker(port: int, advertised: int, log_path: Path) -> subprocess.Popen:
    """Tansu listening on ``port`` but telling clients to connect to ``advertised`` (the relay)."""
    url, public = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{advertised}"
    log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [infra.tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", public, "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    infra.wait_port("127.0.0.1", port, timeout=20, proc=proc)
    return proc


class Relay:
    """Forwards every connection on ``port`` to the current broker port; refuses them while there is none."""

    def __init__(self, port: int, target: int | None) -> None:
        self.port, self.target = port, target
        self.server: asyncio.base_events.Server | None = None
        self.tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> Relay:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            if self.target is None:
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            except OSError:
                return
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        finally:
            writer.close()
            self.tasks.discard(task)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        finally:
            with contextlib.suppress(Exception):
                sink.close()
