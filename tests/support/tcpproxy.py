"""A TCP relay between the gateway and a server (Redis, PostgreSQL) that a test can
cut, like a network does.

While cut, bytes stop flowing both ways and new connections are accepted but never
joined to the server: what was sent is neither answered nor refused (a partition, not
a refusal). ``restore()`` drops every connection held across the cut (as the peers'
timeouts or an RST would) and relays again.

With ``hold_closes`` set, a side's clean end is not passed on: what the server sent
before it closed reaches the client, and then the client's connection stays open and
silent (a middlebox that lost the FIN) until ``restore()`` or ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self

from tests.support.net import free_port


class CuttableProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.hold_closes = False
        self._target = (host, target_port)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    def cut(self) -> None:
        self._flowing.clear()

    def restore(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()
        self._flowing.set()

    async def stop(self) -> None:
        self.restore()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            await self._flowing.wait()
            if writer.transport.is_closing():
                return
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._open.add(up_writer)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        clean_end = False
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    clean_end = True
                    break
                await self._flowing.wait()
                if dst.transport.is_closing():
                    break
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not (clean_end and self.hold_closes):
                with contextlib.suppress(Exception):
                    dst.transport.abort()
                self._open.discard(dst)
