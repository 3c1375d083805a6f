"""A raw HTTP/1.1 client over a socket: sends exactly the bytes given (header bytes
that are not UTF-8, odd methods and paths), which ordinary clients refuse to send."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass

import orjson
from multidict import CIMultiDict


@dataclass
class RawReply:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def request_bytes(
    method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> bytes:
    """One request, closing the connection after the answer."""
    head = [method + b" " + path + b" HTTP/1.1", b"Host: gateway"]
    head += [name + b": " + value for name, value in headers]
    head += [b"Content-Length: %d" % len(body), b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def parse_reply(data: bytes) -> RawReply:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.add(name.decode("latin-1"), value.strip().decode("latin-1"))
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return RawReply(status, headers, body)


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        data = rest[size + 2 :]
    return b"".join(out)


async def send_raw(port: int, data: bytes, seconds: float = 10.0) -> bytes:
    """Send ``data``, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(seconds):
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def raw_request(
    port: int, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
) -> RawReply:  # fmt: skip
    return parse_reply(await send_raw(port, request_bytes(method, path, headers, body)))


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
