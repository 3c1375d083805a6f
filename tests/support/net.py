"""Ports and waiting."""

from __future__ import annotations

import asyncio
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, below 55536."""
    for _ in range(200):
        port = random.randint(20000, 30000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def wait_http(url: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > end:
                raise TimeoutError(f"{url} did not come up") from None
            time.sleep(0.05)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 2.0) -> None:
    """Poll an async predicate until it holds (settlements are queued off the response)."""
    end = time.monotonic() + within
    while not await check():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
