"""Admission and settlement against Redis (standalone or Cluster).

Every admission is one ``EVALSHA`` of ``admit.lua``, written at once; queued
settlements ride along with it (or go on their own a few milliseconds later),
so a busy gateway pipelines them on one connection. Settlement never blocks a
response. A script missing after a restart or failover is reloaded and the
call resent; both scripts are idempotent per request id, so a resend after a
timeout is applied once.

Standalone Redis is spoken to by :mod:`router.quota.resp` with commands packed
from per-plan templates (only the request's numbers are encoded per call). On a
Cluster (redis-py), the checks of one hash tag (a team, a pool) run in one
script; a request touching two tags runs two scripts, and a refusal on one
gives back what the other reserved.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Coroutine, Sequence
from importlib import resources
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from router.config import RedisSettings
from router.quota.base import ADMITTED, Reply, StoreUnavailable
from router.quota.plan import Check
from router.quota.resp import RedisUnavailable, ReplyError, RespClient, bulk, command

log = logging.getLogger("spillway.quota")

SETTLE_DELAY = 0.002  # seconds a lone settlement waits for company
SETTLE_ATTEMPTS = 5


def _script(name: str) -> str:
    lua = resources.files("router.quota").joinpath("lua")
    return lua.joinpath("common.lua").read_text() + "\n" + lua.joinpath(name).read_text()


class _Script:
    __slots__ = ("sha", "text")

    def __init__(self, name: str) -> None:
        self.text = _script(name)
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()


class _Item:
    """One queued script call: packed for standalone, as arguments for a Cluster."""

    __slots__ = ("args", "attempts", "future", "keys", "packed", "script")

    def __init__(
        self, script: _Script, keys: list[str], args: list[Any], packed: bytes | None,
        future: asyncio.Future[Any] | None, attempts: int = 0,
    ) -> None:  # fmt: skip
        self.script, self.keys, self.args, self.packed = script, keys, args, packed
        self.future, self.attempts = future, attempts

    def pack(self) -> bytes:
        if self.packed is None:
            self.packed = command(
                "EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args
            )
        return self.packed


class _Template:
    """The constant bytes of one plan's admission and settlement commands, packed once;
    per call only the request id and its numbers are encoded."""

    __slots__ = ("_lease", "admit_head", "admit_mid", "admit_tail", "checks", "record",
                 "settle_head", "settle_mid")  # fmt: skip

    def __init__(self, admit_sha: str, settle_sha: str, record_prefix: str, pending: str,
                 checks: Sequence[Check], lease: int) -> None:  # fmt: skip
        self.checks = checks
        self.record = record_prefix.encode()
        spec = b"".join(bulk(a.encode()) for c in checks for a in c.script_args())
        lease_b = bulk(b"%d" % lease)
        keys = bulk(pending.encode()) + b"".join(bulk(c.key.encode()) for c in checks)
        nkeys = 2 + len(checks)
        # EVALSHA sha nkeys record pending keys.. | rid lease "out,min_out,prompt,n" checks..
        self.admit_head = (
            b"*%d\r\n" % (3 + nkeys + 3 + 6 * len(checks)) + bulk(b"EVALSHA")
            + bulk(admit_sha.encode())
            + bulk(b"%d" % nkeys)
        )  # fmt: skip
        self.admit_mid = keys
        self.admit_tail = spec
        # EVALSHA sha 2 record pending | rid lease "prompt,completion,refund" checks..
        self.settle_head = (
            b"*%d\r\n" % (8 + 6 * len(checks)) + bulk(b"EVALSHA") + bulk(settle_sha.encode())
            + bulk(b"2")
        )  # fmt: skip
        self.settle_mid = bulk(pending.encode())
        self._lease = lease_b

    def admit(self, rid: str, out: int, min_out: int, prompt: int, n: int) -> bytes:
        r = rid.encode()
        return b"".join((
            self.admit_head, bulk(self.record + r), self.admit_mid, bulk(r), self._lease,
            bulk(b"%d,%d,%d,%d" % (out, min_out, prompt, n)), self.admit_tail,
        ))  # fmt: skip

    def settle(self, rid: str, prompt: int, completion: int, refund: bool) -> bytes:
        r = rid.encode()
        return b"".join((
            self.settle_head, bulk(self.record + r), self.settle_mid, bulk(r), self._lease,
            bulk(b"%d,%d,%d" % (prompt, completion, refund)), self.admit_tail,
        ))  # fmt: skip


class RedisStore:
    def __init__(self, settings: RedisSettings) -> None:
        self._prefix = settings.key_prefix
        self._cluster = settings.cluster
        self._timeout = settings.socket_timeout_seconds
        self._resp: RespClient | None = None
        self._rc: Any = None
        if settings.cluster:
            self._rc = RedisCluster.from_url(
                settings.url,
                socket_timeout=settings.socket_timeout_seconds,
                socket_connect_timeout=settings.connect_timeout_seconds,
            )
        else:
            self._resp = RespClient(
                settings.url,
                timeout=settings.socket_timeout_seconds,
                connect_timeout=settings.connect_timeout_seconds,
            )
        self._admit = _Script("admit.lua")
        self._settle = _Script("settle.lua")
        self._status = _Script("status.lua")
        self._templates: dict[tuple[int, str, int], _Template] = {}
        self._queue: list[_Item] = []
        self._handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sent: set[asyncio.Future[list[Any]]] = set()  # written, not yet answered

    # ------------------------------------------------------------------ groups
    def _groups(self, checks: Sequence[Check]) -> list[tuple[str, list[int]]]:
        if not self._cluster:
            return [(checks[0].tag, list(range(len(checks))))]
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(checks):
            groups.setdefault(c.tag, []).append(i)
        return list(groups.items())

    def _record_keys(self, tag: str, rid: str) -> list[str]:
        return [f"{self._prefix}:{tag}:rec:{rid}", f"{self._prefix}:{tag}:pending"]

    def _template(self, checks: Sequence[Check], lease: int) -> _Template:
        key = (id(checks), checks[0].tag, lease)
        t = self._templates.get(key)
        if t is None or t.checks is not checks:
            tag = checks[0].tag
            t = self._templates[key] = _Template(
                self._admit.sha, self._settle.sha, f"{self._prefix}:{tag}:rec:",
                f"{self._prefix}:{tag}:pending", checks, lease,
            )  # fmt: skip
        return t

    # ---------------------------------------------------------------- admission
    async def admit(
        self, rid: str, checks: Sequence[Check], prompt: int, out: int, n: int,
        min_out: int, lease: int,
    ) -> Reply:  # fmt: skip
        if not checks:
            return Reply(ADMITTED, out, -1, 0.0, ())
        loop = asyncio.get_running_loop()
        if not self._cluster:
            fut: asyncio.Future[Any] = loop.create_future()
            packed = self._template(checks, lease).admit(rid, out, min_out, prompt, n)
            self._queue.append(_Item(self._admit, [], [], packed, fut))
            self._schedule(soon=True)
            try:
                return _parse(await fut)
            except asyncio.CancelledError:
                fut.add_done_callback(self._release_on_cancel(rid, checks, lease))
                raise
        groups = self._groups(checks)
        futures = []
        for tag, idx in groups:
            keys = self._record_keys(tag, rid) + [checks[i].key for i in idx]
            args: list[Any] = [rid, lease, f"{out},{min_out},{prompt},{n}"]
            for i in idx:
                args += checks[i].script_args()
            f: asyncio.Future[Any] = loop.create_future()
            self._queue.append(_Item(self._admit, keys, args, None, f))
            futures.append(f)
        self._schedule(soon=True)
        try:
            raw = [await f for f in futures]
        except asyncio.CancelledError:
            for (_, idx), f in zip(groups, futures, strict=True):
                f.add_done_callback(self._release_on_cancel(rid, [checks[i] for i in idx], lease))
            raise
        return self._merge(rid, groups, raw, checks, lease)

    def _release_on_cancel(self, rid: str, checks: Sequence[Check], lease: int) -> Any:
        """The waiter went away: give back what its admission reserved, if it did."""

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            if int(f.result()[0]) == ADMITTED:
                self._enqueue_settle(checks, rid, 0, 0, True, lease)

        return done

    def _merge(
        self, rid: str, groups: list[tuple[str, list[int]]], raw: list[Any],
        checks: Sequence[Check], lease: int,
    ) -> Reply:  # fmt: skip
        n = len(checks)
        replies = [_parse(r) for r in raw]
        used: list[float] = [0.0] * n
        for reply, (_, idx) in zip(replies, groups, strict=True):
            for j, i in enumerate(idx):
                if j < len(reply.used):
                    used[i] = reply.used[j]
        bad = next((r for r in replies if r.code != ADMITTED), None)
        if bad is None:
            return Reply(ADMITTED, min(r.out for r in replies), -1, replies[0].now, tuple(used))
        for reply, (_, idx) in zip(replies, groups, strict=True):
            if reply.code == ADMITTED:
                self._enqueue_settle([checks[i] for i in idx], rid, 0, 0, True, lease)
        bad_group = groups[replies.index(bad)][1]
        return Reply(bad.code, bad.out, bad_group[bad.failed], bad.now, tuple(used))

    # --------------------------------------------------------------- settlement
    def settle(
        self, rid: str, checks: Sequence[Check], prompt: int, completion: int, refund: bool,
        lease: int,
    ) -> None:  # fmt: skip
        if not checks:
            return
        if not self._cluster:
            self._enqueue_settle(checks, rid, prompt, completion, refund, lease)
            return
        for _tag, idx in self._groups(checks):
            group = [checks[i] for i in idx]
            self._enqueue_settle(group, rid, prompt, completion, refund, lease)

    def _enqueue_settle(
        self, checks: Sequence[Check], rid: str, prompt: int, completion: int, refund: bool,
        lease: int,
    ) -> None:  # fmt: skip
        if self._cluster:
            keys = self._record_keys(checks[0].tag, rid)
            args = [rid, lease, f"{prompt},{completion},{int(refund)}"]
            for c in checks:
                args += c.script_args()
            self._queue.append(_Item(self._settle, keys, args, None, None))
        else:
            packed = self._template(checks, lease).settle(rid, prompt, completion, refund)
            self._queue.append(_Item(self._settle, [], [], packed, None))
        self._schedule(soon=False)

    # ----------------------------------------------------------------- batching
    def _schedule(self, *, soon: bool) -> None:
        """An admission goes out at once, with whatever settlements are waiting; a
        settlement alone waits a little for company. (Holding admissions to the end
        of the loop iteration was measured slower: the batch's requests then all
        wait on Redis together while the process idles.)"""
        if soon:
            if self._handle is not None:
                self._handle.cancel()
            self._flush()
            return
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(SETTLE_DELAY, self._flush)

    def _flush(self) -> None:
        self._handle = None
        batch, self._queue = self._queue, []
        if not batch:
            return
        resp = self._resp
        if resp is not None and resp.connected:  # the usual case: write now, no task
            sent = resp.send_now([item.pack() for item in batch])
            self._sent.add(sent)
            sent.add_done_callback(lambda f: self._answered(batch, f))
            return
        self._spawn(self._send(batch))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _answered(self, batch: list[_Item], sent: asyncio.Future[list[Any]]) -> None:
        self._sent.discard(sent)
        exc = sent.exception()
        if exc is not None:
            self._failed(batch, exc)
        else:
            self._deliver(batch, sent.result(), reloaded=False)

    async def _execute(self, batch: list[_Item]) -> list[Any]:
        """One pipeline on standalone Redis; on a Cluster one call per item in parallel
        (a Cluster pipeline cannot carry EVALSHA)."""
        if self._resp is not None:
            return await self._resp.execute([item.pack() for item in batch])
        async with asyncio.timeout(self._timeout * 2):
            return list(
                await asyncio.gather(
                    *(self._rc.evalsha(i.script.sha, len(i.keys), *i.keys, *i.args) for i in batch),
                    return_exceptions=True,
                )
            )

    async def _send(self, batch: list[_Item], reloaded: bool = False) -> None:
        try:
            results = await self._execute(batch)
        except (RedisUnavailable, RedisError, OSError, TimeoutError) as exc:
            self._failed(batch, exc)
            return
        except Exception as exc:  # a bug: log it, and never leave a waiter hanging
            log.exception("redis batch failed")
            self._failed(batch, exc)
            return
        self._deliver(batch, results, reloaded)

    def _deliver(self, batch: list[_Item], results: list[Any], reloaded: bool) -> None:
        """Hand each result to its waiter; reload lost scripts and resend their calls."""
        missing = [i for i, r in zip(batch, results, strict=True) if _noscript(r)]
        if missing and not reloaded:
            self._spawn(self._reload_and_send(missing))
        errors: list[_Item] = []
        first_error: BaseException | None = None
        for item, result in zip(batch, results, strict=True):
            if _noscript(result) and not reloaded:
                continue
            if isinstance(result, Exception):
                errors.append(item)
                first_error = first_error or result
            elif item.future is not None and not item.future.done():
                item.future.set_result(result)
        if errors and first_error is not None:
            log.error("redis script failed: %s", first_error)
            self._failed(errors, first_error)

    async def _reload_and_send(self, batch: list[_Item]) -> None:
        try:
            await self._load_scripts()
        except (RedisUnavailable, RedisError, OSError, TimeoutError) as exc:
            self._failed(batch, exc)
            return
        await self._send(batch, reloaded=True)

    def _failed(self, batch: list[_Item], exc: BaseException) -> None:
        retry: list[_Item] = []
        for item in batch:
            if item.future is not None:
                if not item.future.done():
                    item.future.set_exception(StoreUnavailable(f"redis: {exc}"))
            elif item.attempts + 1 < SETTLE_ATTEMPTS:
                item.attempts += 1
                retry.append(item)
            else:
                log.error("giving up a settlement after %d attempts: %s", SETTLE_ATTEMPTS, exc)
        if retry:

            def requeue() -> None:
                self._queue.extend(retry)
                self._schedule(soon=False)

            asyncio.get_running_loop().call_later(0.05 * 2 ** retry[0].attempts, requeue)

    async def _load_scripts(self) -> None:
        scripts = (self._admit, self._settle, self._status)
        if self._resp is not None:
            replies = await self._resp.execute([command("SCRIPT", "LOAD", s.text) for s in scripts])
            for reply in replies:
                if isinstance(reply, ReplyError):
                    raise RedisUnavailable(f"SCRIPT LOAD failed: {reply}")
            return
        for script in scripts:
            await self._rc.script_load(script.text)

    # ------------------------------------------------------------------- other
    async def _call(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        item = _Item(script, keys, args, None, None)
        for attempt in range(2):
            try:
                result = (await self._execute([item]))[0]
            except (RedisUnavailable, RedisError, OSError, TimeoutError) as exc:
                raise StoreUnavailable(str(exc)) from None
            if _noscript(result) and attempt == 0:
                try:
                    await self._load_scripts()
                except (RedisUnavailable, RedisError, OSError, TimeoutError) as exc:
                    raise StoreUnavailable(str(exc)) from None
                continue
            if isinstance(result, Exception):
                raise StoreUnavailable(str(result))
            return result
        raise StoreUnavailable("script could not be loaded")

    async def status(self, checks: Sequence[Check]) -> tuple[float, list[float]]:
        if not checks:
            return 0.0, []
        used: list[float] = [0.0] * len(checks)
        now = 0.0
        for _tag, idx in self._groups(checks):
            keys = [checks[i].key for i in idx]
            args: list[Any] = [len(idx)]
            for i in idx:
                args += [checks[i].kind, checks[i].window]
            raw = await self._call(self._status, keys, args)
            now = float(raw[0])
            for j, i in enumerate(idx):
                used[i] = float(raw[1 + j])
        return now, used

    async def ping(self) -> bool:
        try:
            if self._resp is not None:
                return bool((await self._resp.execute([command("PING")]))[0] == b"PONG")
            async with asyncio.timeout(self._timeout * 2):
                return bool(await self._rc.ping())
        except (RedisUnavailable, RedisError, OSError, TimeoutError):
            return False

    async def aclose(self) -> None:
        """Send what is queued, wait for what is in flight, close the client."""
        for _ in range(3):
            if self._handle is not None:
                self._handle.cancel()
                self._flush()
            if not self._tasks and not self._sent:
                break
            await asyncio.gather(*self._tasks, *self._sent, return_exceptions=True)
            await asyncio.sleep(0)  # let the answers' callbacks run
        if self._resp is not None:
            await self._resp.close()
        else:
            await self._rc.aclose()


def _noscript(result: Any) -> bool:
    if isinstance(result, NoScriptError):
        return True
    return isinstance(result, ReplyError) and str(result).startswith("NOSCRIPT")


def _parse(raw: Any) -> Reply:
    code, out, failed, now = int(raw[0]), int(raw[1]), int(raw[2]), float(raw[3])
    used = tuple(map(float, raw[4:]))
    return Reply(code, out, failed, now, used)
