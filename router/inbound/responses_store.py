"""Where responses are kept for ``previous_response_id`` and ``GET /v1/responses/{id}``.

Configured by ``responses.store`` (off by default). A kept response is its
conversation so far (the input items it was made from, the previous
responses' included) and the Response object, as one JSON value with the team
that made it: another team reading the id finds nothing (a 404, as for an id
that never existed). In Redis (the quota Redis, ``SET ... EX ttl_seconds``)
when quotas are kept there, so every replica sees it; else in process memory,
at most ``max_entries`` (the oldest go first), each for ``ttl_seconds``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from router.errors import SpillwayError

log = logging.getLogger("spillway.responses")


class Progress(Protocol):
    """An attempt's answer translator or watcher: ends a broken stream in-band."""

    def failure(self, exc: SpillwayError) -> bytes: ...


@dataclass(slots=True)
class CallState:
    """What the Responses codec keeps about one call."""

    keep: bool  # the response is to be kept (a store is configured; store was not false)
    team: str = ""
    previous: str | None = None  # the client's previous_response_id
    input: list[Any] | None = None  # the conversation's input items (previous ones too)
    final: dict[str, Any] | None = None  # the Response, once complete
    progress: Progress | None = None  # the current attempt's stream state


@dataclass(slots=True)
class Stored:
    team: str
    input: list[Any]
    response: dict[str, Any]

    def dumps(self) -> bytes:
        return orjson.dumps({"team": self.team, "input": self.input, "response": self.response})

    @classmethod
    def loads(cls, raw: bytes) -> Stored | None:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("response"), dict):
            return None
        return cls(str(doc.get("team")), list(doc.get("input") or []), doc["response"])


class ResponseStore(Protocol):
    async def put(self, rid: str, stored: Stored) -> None: ...

    async def get(self, rid: str, team: str) -> Stored | None:
        """The response ``rid`` made by ``team`` (None: none, or another team's)."""
        ...

    async def delete(self, rid: str, team: str) -> bool: ...


class MemoryResponses:
    """Responses in this process (quotas without Redis): bounded, expiring."""

    def __init__(self, ttl_seconds: int, max_entries: int) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def put(self, rid: str, stored: Stored) -> None:
        items = self._items
        items[rid] = (time.monotonic() + self.ttl, stored.dumps())
        items.move_to_end(rid)
        while len(items) > self.max_entries:
            items.popitem(last=False)

    async def get(self, rid: str, team: str) -> Stored | None:
        entry = self._items.get(rid)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._items[rid]
            return None
        stored = Stored.loads(entry[1])
        return stored if stored is not None and stored.team == team else None

    async def delete(self, rid: str, team: str) -> bool:
        if await self.get(rid, team) is None:
            return False
        del self._items[rid]
        return True


class RedisResponses:
    """Responses in the quota Redis, one key each with a TTL."""

    def __init__(self, client: Any, key_prefix: str, ttl_seconds: int) -> None:
        self.client = client
        self.prefix = f"{key_prefix}:responses:"
        self.ttl = ttl_seconds

    async def put(self, rid: str, stored: Stored) -> None:
        await self.client.set(self.prefix + rid, stored.dumps(), ex=self.ttl)

    async def get(self, rid: str, team: str) -> Stored | None:
        raw = await self.client.get(self.prefix + rid)
        if raw is None:
            return None
        stored = Stored.loads(raw)
        return stored if stored is not None and stored.team == team else None

    async def delete(self, rid: str, team: str) -> bool:
        if await self.get(rid, team) is None:
            return False
        return bool(await self.client.delete(self.prefix + rid))
