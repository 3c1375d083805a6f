"""Database keys: each replica's cache of the ``keys`` table, kept current.

:class:`KeyCache` answers the request path from memory (digest -> key, a dict
lookup). :class:`KeySync` keeps it current: it LISTENs on the schema's channel
(every change to a row notifies the key id, see :mod:`router.identity.schema`),
re-reads the rows named, and re-reads the whole table every
``resync_seconds`` in case a notification was lost (and after every
reconnect). A quiet connection is asked ``SELECT 1`` every
``health_check_seconds``, so a database that hangs is noticed as surely as one
that closes. While the database is unreachable the cache keeps serving the keys
it holds; ``status()`` says so (``/readyz``'s body, ``spillway_key_store_up``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from pydantic import TypeAdapter, ValidationError

from router.auth import Principal
from router.config import Budget, DatabaseSettings, Limits
from router.errors import AuthenticationFailed
from router.identity import schema

log = logging.getLogger("spillway.identity")

COLUMNS = (
    "id, team, sha256, previous_sha256, previous_valid_until, models, limits, budgets, "
    "description, expires_at, revoked_at, created_at, created_by, updated_at"
)
_BUDGETS = TypeAdapter(list[Budget])
# the database cannot answer now: connection errors, server errors, timeouts, and the
# driver's own errors about a connection left unusable (InternalClientError: e.g. the
# server's FATAL error arrived between queries and its close has not, yet or ever)
DB_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    TimeoutError,
)


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


@dataclass(frozen=True, slots=True, eq=False)
class StoredKey:
    """One row of ``keys``; ``principal`` is built once per row version."""

    id: str
    team: str
    digest: bytes
    previous: bytes | None
    previous_until: float | None
    models: tuple[str, ...] | None
    limits: Limits | None
    budgets: tuple[Budget, ...]
    description: str | None
    expires_at: float | None
    revoked_at: float | None
    created_at: float
    created_by: str
    updated_at: float
    principal: Principal

    @classmethod
    def from_record(cls, row: asyncpg.Record) -> StoredKey:
        models = _json(row["models"])
        limits = _json(row["limits"])
        key_limits = Limits.model_validate(limits) if limits is not None else None
        budgets = tuple(_BUDGETS.validate_python(_json(row["budgets"]) or []))
        model_list = tuple(str(m) for m in models) if models is not None else None
        return cls(
            id=row["id"], team=row["team"], digest=bytes(row["sha256"]),
            previous=bytes(row["previous_sha256"]) if row["previous_sha256"] else None,
            previous_until=_epoch(row["previous_valid_until"]), models=model_list,
            limits=key_limits, budgets=budgets, description=row["description"],
            expires_at=_epoch(row["expires_at"]), revoked_at=_epoch(row["revoked_at"]),
            created_at=row["created_at"].timestamp(), created_by=row["created_by"],
            updated_at=row["updated_at"].timestamp(),
            principal=Principal(
                key_id=row["id"], team=row["team"], key_limits=key_limits, key_budgets=budgets,
                models=model_list, source="database",
            ),
        )  # fmt: skip

    def public(self) -> dict[str, Any]:
        """What the admin API shows: everything but the secrets' digests."""

        def stamp(t: float | None) -> str | None:
            return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()

        return {
            "id": self.id, "object": "key", "team": self.team,
            "models": list(self.models) if self.models is not None else None,
            "limits": self.limits.model_dump(exclude_none=True) if self.limits else None,
            "budgets": [b.model_dump(exclude_none=True) for b in self.budgets],
            "description": self.description, "expires_at": stamp(self.expires_at),
            "revoked_at": stamp(self.revoked_at),
            "previous_secret_valid_until": stamp(self.previous_until),
            "created_at": stamp(self.created_at), "created_by": self.created_by,
            "updated_at": stamp(self.updated_at),
        }  # fmt: skip


class KeyCache:
    """The usable (not revoked) database keys, by id and by secret digest."""

    __slots__ = ("by_digest", "by_id")

    def __init__(self) -> None:
        self.by_id: dict[str, StoredKey] = {}
        self.by_digest: dict[bytes, StoredKey] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    def put(self, key: StoredKey) -> None:
        self.drop(key.id)
        if key.revoked_at is not None:
            return
        self.by_id[key.id] = key
        self.by_digest[key.digest] = key
        if key.previous is not None:
            self.by_digest[key.previous] = key

    def drop(self, key_id: str) -> None:
        old = self.by_id.pop(key_id, None)
        if old is None:
            return
        for digest in (old.digest, old.previous):
            if digest is not None and self.by_digest.get(digest) is old:
                del self.by_digest[digest]

    def replace(self, keys: Iterable[StoredKey]) -> None:
        by_id: dict[str, StoredKey] = {}
        by_digest: dict[bytes, StoredKey] = {}
        for key in keys:
            if key.revoked_at is not None:
                continue
            by_id[key.id] = key
            by_digest[key.digest] = key
            if key.previous is not None:
                by_digest[key.previous] = key
        self.by_id, self.by_digest = by_id, by_digest

    def lookup(self, digest: bytes) -> Principal | None:
        key = self.by_digest.get(digest)
        if key is None:
            return None
        now = time.time()
        if key.digest != digest and (key.previous_until is None or now >= key.previous_until):
            return None  # the secret before a rotation, its grace over
        if key.expires_at is not None and now >= key.expires_at:
            raise AuthenticationFailed("This API key has expired.", code="expired_api_key")
        return key.principal


def parse_rows(rows: Iterable[asyncpg.Record]) -> list[StoredKey]:
    out = []
    for row in rows:
        try:
            out.append(StoredKey.from_record(row))
        except (ValidationError, ValueError, TypeError) as exc:
            log.error("database key %r skipped: unusable row (%s)", row["id"], exc)
    return out


class KeySync:
    """Keeps a :class:`KeyCache` in step with the database (a background task).

    Whatever way the database fails, the state turns to down within a bound and the
    connection is dropped, never reused: a connection ended by the server is seen at
    once; a database that hangs, or a network that drops everything (no close ever
    arrives), is seen by the health query sent whenever the connection has been quiet
    ``health_check_seconds``, each query bounded by ``connect_timeout_seconds``.
    """

    def __init__(
        self, settings: DatabaseSettings, cache: KeyCache, on_state: Callable[[bool], None]
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.channel = schema.channel(settings.schema_name)
        self.up = False
        self.ever_synced = False
        self.last_sync = 0.0  # epoch seconds of the last full read
        self.down_since = 0.0  # epoch seconds the database became unreachable
        self.last_error = ""
        self._on_state = on_state
        self._resync_at = 0.0  # monotonic: the next full read
        self.ready = asyncio.Event()  # set after the first full read

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "status": "ok" if self.up else "unreachable",
            "keys": len(self.cache),
        }
        if self.last_sync:
            doc["synced_at"] = _stamp(self.last_sync)
        if not self.up:
            doc["serving"] = "from cache" if self.ever_synced else "no database keys yet"
            if self.down_since:
                doc["since"] = _stamp(self.down_since)
            if self.last_error:
                doc["error"] = self.last_error
        return doc

    def _state(self, up: bool, error: str = "") -> None:
        if up != self.up:
            if up:
                log.info("key database reachable; %d keys loaded", len(self.cache))
            else:
                log.error(
                    "key database unreachable (%s); serving %d cached keys", error, len(self.cache)
                )
        if not up and (self.up or not self.down_since):
            self.down_since = time.time()
        self.up = up
        self.last_error = error
        self._on_state(up)

    async def connect(self) -> asyncpg.Connection:
        s = self.settings
        return await asyncpg.connect(
            s.url, timeout=s.connect_timeout_seconds, command_timeout=s.connect_timeout_seconds,
            server_settings={"search_path": s.schema_name, "application_name": "spillway"},
        )  # fmt: skip

    async def run(self) -> None:
        """Follow the table until cancelled. A failure of any kind (the database's, the
        network's, the driver's) marks the store down and drops the connection; a new
        one is tried every ``retry_seconds``. This task never ends on an error: if it
        did, the store would read "ok" forever and the cache would silently go stale."""
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self.connect()
                await schema.apply(conn, self.settings.schema_name)
                await self._follow(conn)
            except (*DB_ERRORS, schema.SchemaTooNew) as exc:
                self._state(False, _describe(exc))
            except Exception as exc:  # a fault of ours: say so, and keep following
                if _describe(exc) != self.last_error:
                    log.exception("key database follower failed")
                self._state(False, _describe(exc))
            finally:
                if conn is not None:
                    # after a failure the connection's state is unknown (a query may
                    # still run, a cancel may be pending): never reuse it, never wait on it
                    conn.terminate()
            await asyncio.sleep(self.settings.retry_seconds)

    async def _follow(self, conn: asyncpg.Connection) -> None:
        changed: asyncio.Queue[str | None] = asyncio.Queue()  # key ids; None: connection lost

        def notified(_c: object, _pid: int, _channel: str, key_id: object) -> None:
            changed.put_nowait(str(key_id))

        def lost(_c: object) -> None:
            changed.put_nowait(None)

        conn.add_termination_listener(lost)
        await conn.add_listener(self.channel, notified)
        await self.resync(conn)  # after LISTEN: no change can fall between the two
        self._state(True)
        quiet = self.settings.health_check_seconds
        answered = time.monotonic()  # the database's last answer on this connection
        while True:
            wait = min(self._resync_at, answered + quiet) - time.monotonic()
            try:
                first = await asyncio.wait_for(changed.get(), max(0.0, wait))
            except TimeoutError:
                if time.monotonic() >= self._resync_at:
                    await self.resync(conn)
                else:
                    await conn.execute("SELECT 1")  # still there?
                answered = time.monotonic()
                continue
            ids = {first}
            while not changed.empty():
                ids.add(changed.get_nowait())
            if None in ids:
                raise ConnectionResetError("the database connection was lost")
            await self.refetch(conn, [i for i in ids if i is not None])
            answered = time.monotonic()

    async def resync(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch(f"SELECT {COLUMNS} FROM keys WHERE revoked_at IS NULL")
        self.cache.replace(parse_rows(rows))
        self.last_sync = time.time()
        self._resync_at = time.monotonic() + self.settings.resync_seconds
        self.ever_synced = True
        self.ready.set()

    async def refetch(self, conn: asyncpg.Connection, ids: list[str]) -> None:
        rows = await conn.fetch(f"SELECT {COLUMNS} FROM keys WHERE id = ANY($1::text[])", ids)
        found = {k.id: k for k in parse_rows(rows)}
        for key_id in ids:
            key = found.get(key_id)
            if key is None:
                self.cache.drop(key_id)
            else:
                self.cache.put(key)


def _stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _describe(exc: BaseException) -> str:
    """An error as ``/readyz`` shows it (a timeout's text is empty)."""
    text = str(exc)
    if isinstance(exc, TimeoutError) and not text:
        text = "no answer in time"
    return f"{type(exc).__name__}: {text}"
