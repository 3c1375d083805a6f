"""The process's identity services: JWKS sets, the database key cache, the admin API.

Owned by the gateway and started with it; each runtime (config) gets its view
through :meth:`Identity.sources`: the database keys (refused when their team is
not in that config) and a JWT verifier for that config's issuers. Key sets and
the key cache outlive reloads. ``database``, ``admin`` and the JWKS HTTP
client take effect at start (a reload keeps them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from router.auth import Principal
from router.config import Config
from router.errors import PermissionDenied
from router.identity.admin import AdminApi
from router.identity.jwks import Jwks
from router.identity.keystore import DB_ERRORS, KeyCache, KeySync
from router.identity.sso import JwtVerifier

log = logging.getLogger("spillway.identity")


class DatabaseKeys:
    """The database keys as one config sees them (a key's team must exist there)."""

    __slots__ = ("_cache", "_teams")

    def __init__(self, cache: KeyCache, cfg: Config) -> None:
        self._cache = cache
        self._teams = frozenset(cfg.teams)

    def lookup(self, digest: bytes) -> Principal | None:
        principal = self._cache.lookup(digest)
        if principal is not None and principal.team not in self._teams:
            raise PermissionDenied(
                f"This key's team {principal.team!r} is not configured on this gateway.",
                code="unknown_team",
            )
        return principal


class Identity:
    def __init__(self, cfg: Config, on_key_store: Callable[[bool], None]) -> None:
        self.cfg = cfg
        self.jwks: dict[str, Jwks] = {}
        self.cache: KeyCache | None = KeyCache() if cfg.database.url else None
        self.sync: KeySync | None = None
        if self.cache is not None:
            self.sync = KeySync(cfg.database, self.cache, on_key_store)
        self._session: aiohttp.ClientSession | None = None
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._admin: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._current: Callable[[], tuple[Config, JwtVerifier | None]] | None = None
        self.admin_port: int | None = None

    def sources(self, cfg: Config) -> tuple[DatabaseKeys | None, JwtVerifier | None]:
        """(database keys, JWT verifier) for a runtime of ``cfg``."""
        keys = DatabaseKeys(self.cache, cfg) if self.cache is not None else None
        if not cfg.auth.jwt:
            return keys, None
        for issuer in cfg.auth.jwt:
            name = issuer.jwks_url or str(issuer.jwks_file)
            jwks = self.jwks.get(name)
            if jwks is None:
                jwks = self.jwks[name] = Jwks(issuer)
            else:
                jwks.configure(issuer)
        return keys, JwtVerifier(cfg, self.jwks, self._refresh_unknown)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=30), headers={"Accept": "application/json"}
            )
        return self._session

    async def _refresh_unknown(self, jwks: Jwks) -> None:
        await jwks.refresh_for_unknown(self.session)

    async def start(self, current: Callable[[], tuple[Config, JwtVerifier | None]]) -> None:
        """Read the key sets and the key table (waiting a little for each), start the
        followers and the admin listener."""
        self._current = current
        if self.jwks:
            await asyncio.gather(*(j.refresh(self.session) for j in self.jwks.values()))
            self._tasks.append(asyncio.create_task(self._refresh_jwks(), name="spillway-jwks"))
        if self.sync is not None:
            self._tasks.append(asyncio.create_task(self.sync.run(), name="spillway-key-sync"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.database.connect_timeout_seconds):
                    await self.sync.ready.wait()
        if self.cfg.admin is not None and self.cache is not None:
            await self._start_admin()

    async def _start_admin(self) -> None:
        admin = self.cfg.admin
        sync = self.sync
        assert admin is not None and self.cache is not None and sync is not None
        api = AdminApi(
            admin, self._db_pool, self.cache, reachable=lambda: sync.up,
            config=lambda: self._view()[0], verifier=lambda: self._view()[1],
            timeout=self.cfg.database.connect_timeout_seconds,
        )  # fmt: skip
        self._admin = web.AppRunner(api.app(), access_log=None)
        await self._admin.setup()
        # workers of one pod (--workers) share the port like the main listener
        site = web.TCPSite(
            self._admin, admin.listen.host, admin.listen.port,
            reuse_port=True if "SPILLWAY_WORKER" in os.environ else None,
        )  # fmt: skip
        await site.start()
        for address in self._admin.addresses:
            if isinstance(address, tuple):
                self.admin_port = int(address[1])
        log.info("admin API listening on %s:%s", admin.listen.host, self.admin_port)

    def _view(self) -> tuple[Config, JwtVerifier | None]:
        assert self._current is not None
        return self._current()

    async def _db_pool(self) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is None:
                s = self.cfg.database
                self._pool = await asyncpg.create_pool(
                    s.url, min_size=0, max_size=4, timeout=s.connect_timeout_seconds,
                    command_timeout=s.connect_timeout_seconds,
                    server_settings={"search_path": s.schema_name,
                                     "application_name": "spillway-admin"},
                )  # fmt: skip
            return self._pool

    async def _refresh_jwks(self) -> None:
        while True:
            now = time.monotonic()
            waits = [j.due_in(now) for j in self.jwks.values()]
            await asyncio.sleep(max(0.2, min(waits, default=60.0)))
            now = time.monotonic()
            due = [j for j in self.jwks.values() if j.due_in(now) <= 0]
            await asyncio.gather(*(j.refresh(self.session) for j in due))

    def status(self) -> dict[str, Any]:
        """For ``/readyz``'s body: the key database and the identity providers."""
        doc: dict[str, Any] = {}
        if self.sync is not None:
            doc["key_database"] = self.sync.status()
        if self.jwks:
            doc["identity_providers"] = {
                j.name: {"keys": len(j.keys), "status": "ok" if not j.last_error else "stale",
                         **({"error": j.last_error} if j.last_error else {})}
                for j in self.jwks.values()
            }  # fmt: skip
        return doc

    async def stop(self) -> None:
        """Stop the listener, the followers and the pool. Never fails and never waits
        long, whatever state the database or the identity providers are in: a shutdown
        must not depend on the database that may be why the pod is restarted."""
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        ended = await asyncio.gather(*tasks, return_exceptions=True)
        for task, outcome in zip(tasks, ended, strict=True):
            if isinstance(outcome, Exception):  # cancelled is the normal end
                log.error("%s had failed: %r", task.get_name(), outcome, exc_info=outcome)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            if self.sync is not None and not self.sync.up:
                pool.terminate()  # nobody to say goodbye to
            else:
                try:  # close() terminates the pool if it fails or runs out of time
                    await asyncio.wait_for(pool.close(), self.cfg.database.connect_timeout_seconds)
                except DB_ERRORS as exc:
                    log.warning("admin database pool terminated, not closed (%r)", exc)
        if self._session is not None:
            await self._session.close()
            self._session = None
