"""Budget checkpoints: a Redis that comes back empty gets its budget counters back.

Every ``quota.checkpoint_seconds`` each gateway process reads the current
window of every budget counter (hour, day and month budgets; rate limits and
concurrency are not kept: they refill within a minute) together with a
*generation marker* of each hash tag, and keeps them in memory (and in
``quota.checkpoint_file`` when set, so a restarted gateway remembers too).

A Redis restarted without its data has no marker: the first read after it sets
a fresh one, and the first process holding a checkpoint of the old generation
adds its saved amounts to the counters, in one script call that also replaces
the marker, so exactly one process restores each tag, once. What is lost is
the usage of the last checkpoint interval before the restart (and, for requests
in flight across it, their reservations stand in for their usage). A Redis
that keeps its data (AOF, a replica promoted by Sentinel) keeps its marker and
nothing is restored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from router.quota.plan import Check
from router.quota.redis_store import RedisStore

log = logging.getLogger("spillway.quota")


@dataclass(slots=True)
class Saved:
    generation: str
    counters: dict[str, tuple[int, str]]  # window key -> (amount, window)


class BudgetCheckpoint:
    def __init__(self, store: RedisStore, path: str = "") -> None:
        self._store = store
        self._path = path
        self._saved: dict[str, Saved] = {}
        self._written = b""
        if path:
            self._saved = _load(path)

    @property
    def saved(self) -> dict[str, Saved]:
        return self._saved

    async def run_once(self, checks: Sequence[Check]) -> int:
        """Read (and when needed restore) every budget counter once; the tags restored."""
        groups: dict[str, dict[str, Check]] = {}
        for c in checks:
            if c.kind == "b":
                groups.setdefault(c.tag, {}).setdefault(c.key, c)
        restored = 0
        for tag, by_key in groups.items():
            marker = f"{self._store.prefix}:{tag}:generation"
            group = list(by_key.values())
            generation, counters = await self._read(marker, group)
            saved = self._saved.get(tag)
            lost = saved is not None and saved.generation != generation and saved.counters
            if lost and saved is not None and await self._restore(marker, saved):
                restored += 1
                log.warning(
                    "redis came back without the budget counters of %s; restored them "
                    "from the checkpoint (usage since it is lost)", tag,
                )  # fmt: skip
                generation, counters = await self._read(marker, group)
            self._saved[tag] = Saved(generation, counters)
        if self._path:
            await asyncio.to_thread(self._write)
        return restored

    async def _read(
        self, marker: str, group: list[Check]
    ) -> tuple[str, dict[str, tuple[int, str]]]:
        script = self._store.checkpoint_script
        args: list[Any] = ["read", os.urandom(8).hex(), *(c.window for c in group)]
        raw = await self._store.call(script, [marker, *(c.key for c in group)], args)
        generation = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
        counters: dict[str, tuple[int, str]] = {}
        for c, i in zip(group, range(3, len(raw), 2), strict=True):
            key = raw[i].decode() if isinstance(raw[i], bytes) else str(raw[i])
            counters[key] = (int(raw[i + 1]), c.window)
        return generation, counters

    async def _restore(self, marker: str, saved: Saved) -> bool:
        args: list[Any] = ["restore", saved.generation, os.urandom(8).hex()]
        for key, (amount, window) in saved.counters.items():
            args += [key, amount, window]
        return bool(await self._store.call(self._store.checkpoint_script, [marker], args))

    def _write(self) -> None:
        doc = {tag: {"generation": s.generation, "counters": s.counters}
               for tag, s in self._saved.items()}  # fmt: skip
        data = orjson.dumps(doc)
        if data == self._written:
            return
        folder = os.path.dirname(os.path.abspath(self._path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".spillway-checkpoint-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self._path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._written = data


def _load(path: str) -> dict[str, Saved]:
    try:
        doc = orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as exc:
        log.warning("budget checkpoint %s not read: %s", path, exc)
        return {}
    saved: dict[str, Saved] = {}
    try:
        for tag, entry in doc.items():
            counters = {str(k): (int(v[0]), str(v[1])) for k, v in entry["counters"].items()}
            saved[str(tag)] = Saved(str(entry["generation"]), counters)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        log.warning("budget checkpoint %s not used: %s", path, exc)
        return {}
    return saved
