"""Several fake upstreams behind one gateway: config builders and a raw HTTP client."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import orjson

from tests.support.fakes import FakeOpenAI
from tests.support.gateway import Running

KEY = "sk-test-fleet-0001"
FAST_HEALTH = {"interval_seconds": 0.05, "ejection_seconds": 0.2, "probe_timeout_seconds": 0.5}


def backend(fake: FakeOpenAI, *, metrics: bool = False, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"provider": "openai", "url": fake.url, **extra}
    if metrics:
        doc["metrics_url"] = fake.metrics_url
    return doc


def members(*names: str, model: str = "llama") -> list[dict[str, Any]]:
    return [{"backend": n, "model": model} for n in names]


def fleet_config(
    backends: dict[str, dict[str, Any]],
    pools: dict[str, dict[str, Any]],
    routes: list[dict[str, Any]] | None = None,
    *,
    retries: dict[str, Any] | None = None,
    health: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One model ``chat`` routed over ``pools`` (in order), one team ``t``, key :data:`KEY`."""
    doc: dict[str, Any] = {
        "backends": backends,
        "pools": pools,
        "models": {"chat": {"routes": routes or [{"name": "main", "pools": list(pools)}]}},
        "teams": {"t": {}},
        "keys": [{"id": "k", "team": "t", "key": KEY}],
        "routing": {"health": {**FAST_HEALTH, **(health or {})}, "retries": retries or {}},
        "logging": {"requests": False},
    }
    for k, v in extra.items():
        doc[k] = {**doc[k], **v} if isinstance(doc.get(k), dict) else v
    return doc


class Reply:
    def __init__(self, status: int, headers: Any, body: bytes, elapsed: float) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.elapsed = elapsed

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def backend(self) -> str | None:
        return self.headers.get("x-spillway-backend")

    @property
    def pool(self) -> str | None:
        return self.headers.get("x-spillway-pool")


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": "hello there"}], **extra}


async def post(
    session: aiohttp.ClientSession, gw: Running | str, *, key: str = KEY,
    headers: dict[str, str] | None = None, **extra: Any,
) -> Reply:  # fmt: skip
    url = gw if isinstance(gw, str) else gw.url
    started = time.monotonic()
    async with session.post(
        url + "/v1/chat/completions",
        json=chat_body(**extra),
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
    ) as resp:
        body = await resp.read()
        return Reply(resp.status, resp.headers, body, time.monotonic() - started)


async def wait_for(check: Any, within: float = 5.0, what: str = "condition") -> None:
    end = time.monotonic() + within
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def metric(gw: Running, name: str, **labels: str) -> float:
    value = gw.gateway.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@contextmanager
def blackhole() -> Iterator[int]:
    """A port whose TCP handshakes never complete: a listener with a full accept queue
    that never accepts, so new SYNs are dropped and connects hang until a timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = int(srv.getsockname()[1])
    fillers = []
    try:
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        time.sleep(0.05)
        yield port
    finally:
        for c in fillers:
            c.close()
        srv.close()


def sse_events(body: bytes) -> list[Any]:
    """``data:`` payloads of an SSE body: JSON objects, and ``"[DONE]"``."""
    out: list[Any] = []
    for block in body.split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block[6:]
            out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out
