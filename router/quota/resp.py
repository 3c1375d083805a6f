"""A lean pipelining Redis client for the admission hot path (standalone Redis).

One connection, commands written back to back, replies matched in order and
parsed by hiredis' C reader. A batch of pre-packed commands costs one write and
one future; there is no per-command packing, per-read timeout context or pool
bookkeeping. A batch that gets no answer within the timeout fails, and the
connection is dropped (its state is unknown) and re-made by the next call.
Redis Cluster is served by redis-py instead (see ``redis_store``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.connection import parse_url


class RedisUnavailable(Exception):
    """Could not reach Redis, or it did not answer in time."""


class ReplyError(Exception):
    """Redis answered an error (``-ERR ...``, ``-NOSCRIPT ...``)."""


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def command(*args: bytes | str | int | float) -> bytes:
    """RESP encoding of one command."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(bulk(a if isinstance(a, bytes) else str(a).encode()))
    return b"".join(parts)


class _Batch:
    __slots__ = ("future", "handle", "remaining", "replies")

    def __init__(self, n: int, future: asyncio.Future[list[Any]]) -> None:
        self.remaining = n
        self.replies: list[Any] = []
        self.future = future
        self.handle: asyncio.TimerHandle | None = None


class _Protocol(asyncio.Protocol):
    def __init__(self, client: RespClient) -> None:
        self.client = client
        self.reader = hiredis.Reader(replyError=ReplyError)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[_Batch] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.pending
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not pending:  # an answer nobody asked for: the stream is out of step
                self.fail(RedisUnavailable("unexpected reply from redis"))
                return
            batch = pending[0]
            batch.replies.append(reply)
            batch.remaining -= 1
            if batch.remaining == 0:
                pending.popleft()
                if batch.handle is not None:
                    batch.handle.cancel()
                if not batch.future.done():
                    batch.future.set_result(batch.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisUnavailable(f"redis connection lost: {exc or 'closed'}"))

    def fail(self, exc: Exception) -> None:
        if self.client._proto is self:
            self.client._proto = None
        while self.pending:
            batch = self.pending.popleft()
            if batch.handle is not None:
                batch.handle.cancel()
            if not batch.future.done():
                batch.future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class RespClient:
    """``await client.execute([cmd, ...])`` -> replies (ReplyError for errors)."""

    def __init__(self, url: str, *, timeout: float, connect_timeout: float) -> None:
        opts: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._host = str(opts.get("host") or "127.0.0.1")
        self._port = int(opts.get("port") or 6379)
        self._path = opts.get("path")
        self._ssl: ssl.SSLContext | None = None
        if url.startswith("rediss://"):
            self._ssl = ssl.create_default_context()
        hello: list[bytes] = []
        if opts.get("password"):
            user = opts.get("username")
            hello.append(
                command("AUTH", user, opts["password"])
                if user
                else command("AUTH", opts["password"])
            )
        if opts.get("db"):
            hello.append(command("SELECT", int(opts["db"])))
        self._hello = hello
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._path:
                    _, proto = await loop.create_unix_connection(
                        lambda: _Protocol(self), str(self._path)
                    )
                else:
                    _, proto = await loop.create_connection(
                        lambda: _Protocol(self), self._host, self._port, ssl=self._ssl
                    )
        except (OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"cannot connect to redis: {exc}") from None
        if self._hello:
            replies = await self._send(proto, b"".join(self._hello), len(self._hello))
            for reply in replies:
                if isinstance(reply, ReplyError):
                    proto.fail(RedisUnavailable(f"redis refused the connection: {reply}"))
                    raise RedisUnavailable(f"redis refused the connection: {reply}")
        self._proto = proto
        return proto

    def _send(self, proto: _Protocol, packed: bytes, n: int) -> asyncio.Future[list[Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        batch = _Batch(n, future)
        batch.handle = loop.call_later(self._timeout, self._expire, proto, batch)
        proto.pending.append(batch)
        assert proto.transport is not None
        proto.transport.write(packed)
        return future

    def _expire(self, proto: _Protocol, batch: _Batch) -> None:
        if not batch.future.done():
            proto.fail(RedisUnavailable(f"redis did not answer within {self._timeout:g}s"))

    @property
    def connected(self) -> bool:
        return self._proto is not None

    def send_now(self, commands: Sequence[bytes]) -> asyncio.Future[list[Any]]:
        """Write now on the open connection (``connected`` must be true); no task needed."""
        proto = self._proto
        assert proto is not None
        return self._send(proto, b"".join(commands), len(commands))

    async def execute(self, commands: Sequence[bytes]) -> list[Any]:
        proto = await self._connection()
        return await self._send(proto, b"".join(commands), len(commands))

    async def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
            await asyncio.sleep(0)
