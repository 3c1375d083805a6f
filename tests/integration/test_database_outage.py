"""The key database failing under a running gateway, each way a database fails.

Crashed (its backends send a FATAL error, then close), hung (every PostgreSQL
process SIGSTOPped: connections open, nothing answered), cut off by the network (a
silent peer), a FATAL error whose close never arrives, a connection dropped by the
server. Each time the outage is seen within the documented bound
(``health_check_seconds + connect_timeout_seconds``), cached keys keep working,
``/readyz`` stays ready and says "unreachable", the admin API answers 503, recovery
is seen, and the gateway shuts down cleanly in whatever state the database is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from router.config import Config
from tests.support.gateway import Running, make_config, start_gateway
from tests.support.keys import Admin, chat_status, identity_config, seed_key
from tests.support.metrics import value
from tests.support.postgres import PostgresServer, postgres_server
from tests.support.tcpproxy import CuttableProxy

HEALTH = 0.5  # database.health_check_seconds in these tests
TIMEOUT = 2.0  # database.connect_timeout_seconds: also each query's bound
BOUND = HEALTH + TIMEOUT  # a silent database is seen as down within this
SLACK = 10.0  # what a loaded machine may add; the old code needed a 30 s resync


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """A PostgreSQL of this module's own: the tests crash and freeze it."""
    with postgres_server() as pg:
        yield pg


@pytest.fixture
def pg(server: PostgresServer) -> Iterator[PostgresServer]:
    """The server, left running for the next test whatever this one did to it."""
    yield server
    server.thaw()
    if server.proc is None or server.proc.poll() is not None:
        server.start()


@pytest.fixture
async def proxy(pg: PostgresServer) -> AsyncIterator[CuttableProxy]:
    relay = await CuttableProxy(pg.port).start()
    yield relay
    await relay.stop()


def outage_config(url: str, schema: str, **database: Any) -> Config:
    doc = identity_config(url, schema)
    doc["database"].update(health_check_seconds=HEALTH, connect_timeout_seconds=TIMEOUT, **database)
    return make_config(doc)


def via(relay: CuttableProxy) -> str:
    return f"postgresql://postgres@127.0.0.1:{relay.port}/postgres"


class Watch:
    """One gateway, as its clients and its operator see it."""

    def __init__(self, session: aiohttp.ClientSession, running: Running) -> None:
        self.session = session
        self.running = running
        self.admin = Admin(session, f"http://127.0.0.1:{running.gateway.identity.admin_port}")

    async def key_database(self) -> dict[str, Any]:
        async with self.session.get(self.running.url + "/readyz") as r:
            doc = await r.json()
        assert r.status == 200, doc  # a key database down never makes a replica unready
        return dict(doc["key_database"])

    async def gauge(self) -> float:
        async with self.session.get(self.running.url + "/metrics") as r:
            return value(await r.text(), "spillway_key_store_up", store="postgresql")

    async def until(self, status: str, within: float) -> float:
        """Seconds until /readyz says the key database is ``status``."""
        started = time.monotonic()
        while (await self.key_database())["status"] != status:
            if time.monotonic() - started > within:
                raise AssertionError(f"key database not {status!r} after {within} s")
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    async def serves_from_cache(self, secret: str) -> None:
        doc = await self.key_database()
        assert doc["status"] == "unreachable" and doc["serving"] == "from cache", doc
        assert doc["keys"] >= 1 and doc["error"], doc
        assert (await chat_status(self.session, self.running.url, secret))[0] == 200
        assert await self.gauge() == 0.0
        status, body = await self.admin.call("POST", "", {"team": "eng"})
        assert status == 503 and body["error"]["code"] == "database_unreachable", body

    async def recovered(self) -> None:
        await self.until("ok", within=SLACK)
        assert await self.gauge() == 1.0
        made = await self.admin.create(team="eng")
        assert (await chat_status(self.session, self.running.url, made["secret"]))[0] == 200


async def stop_cleanly(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    """Shutdown ends in bounded time, raises nothing, and the follower never died."""
    async with asyncio.timeout(3 * TIMEOUT + SLACK):
        await running.stop()
    crashed = [r for r in caplog.records if r.name == "spillway.identity" and r.exc_info]
    assert not crashed, [r.getMessage() for r in crashed]


async def outage_and_recovery(
    running: Running,
    secret: str,
    fail: Callable[[], None],
    heal: Callable[[], None],
    caplog: pytest.LogCaptureFixture,
    *,
    kept: bool = True,
) -> None:
    """``fail()`` the database under ``running``: the outage is seen and handled;
    ``heal()`` it: recovery is seen (and ``secret``'s key still works if the database
    ``kept`` it); then a clean shutdown."""
    try:
        async with aiohttp.ClientSession() as s:
            watch = Watch(s, running)
            fail()
            await watch.until("unreachable", within=BOUND + SLACK)
            await watch.serves_from_cache(secret)
            heal()
            await watch.recovered()
            if kept:
                assert (await chat_status(s, running.url, secret))[0] == 200
    finally:
        await stop_cleanly(running, caplog)


async def test_hung_database_is_seen_and_recovers(
    pg: PostgresServer, db_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every PostgreSQL process stopped: connections stay open, nothing is answered."""
    secret = await seed_key(pg.url, db_schema, "cached", "eng")
    running = await start_gateway(outage_config(pg.url, db_schema))
    await outage_and_recovery(running, secret, pg.freeze, pg.thaw, caplog)


@pytest.mark.parametrize("seen", [True, False], ids=["seen-down", "just-hung"])
async def test_shutdown_while_database_hung(
    pg: PostgresServer, db_schema: str, caplog: pytest.LogCaptureFixture, seen: bool
) -> None:
    """Seen down: the follower waits on a connect that never completes. Just hung: its
    health query may be waiting for an answer. Either way, with the admin pool holding
    a connection nobody answers, nothing holds up the shutdown."""
    await seed_key(pg.url, db_schema, "cached", "eng")
    running = await start_gateway(outage_config(pg.url, db_schema))
    try:
        async with aiohttp.ClientSession() as s:
            watch = Watch(s, running)
            status, listed = await watch.admin.call("GET")  # the admin pool holds a connection
            assert status == 200 and [k["id"] for k in listed["data"]] == ["cached"]
            pg.freeze()
            if seen:
                await watch.until("unreachable", within=BOUND + SLACK)
            else:
                await asyncio.sleep(HEALTH)
        await stop_cleanly(running, caplog)
    finally:
        pg.thaw()


async def test_shutdown_while_database_crashed(
    pg: PostgresServer, db_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = await seed_key(pg.url, db_schema, "cached", "eng")
    running = await start_gateway(outage_config(pg.url, db_schema))
    async with aiohttp.ClientSession() as s:
        watch = Watch(s, running)
        pg.kill()
        await watch.until("unreachable", within=BOUND + SLACK)
        await watch.serves_from_cache(secret)
    await stop_cleanly(running, caplog)


async def test_fatal_error_whose_close_never_arrives(
    pg: PostgresServer, proxy: CuttableProxy, db_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend's last words ("terminating connection due to unexpected postmaster
    exit") arrive, its close does not: the connection is left unusable, not closed.
    Before, the next query raised asyncpg's InternalClientError ("cannot switch to
    state 12; another operation (2) is in progress"), which ended the follower: the
    store stayed "ok" for good and the shutdown raised it."""
    proxy.hold_closes = True
    secret = await seed_key(pg.url, db_schema, "cached", "eng")
    running = await start_gateway(outage_config(via(proxy), db_schema, resync_seconds=1.0))
    # the test server runs with synchronous_commit=off: a crash may lose the last commits
    await outage_and_recovery(running, secret, pg.kill, pg.start, caplog, kept=False)


async def test_network_partition_is_seen_and_heals(
    pg: PostgresServer, proxy: CuttableProxy, db_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing arrives any more, not even a close: only the follower's own health
    query can tell."""
    secret = await seed_key(pg.url, db_schema, "cached", "eng")
    running = await start_gateway(outage_config(via(proxy), db_schema))
    await outage_and_recovery(running, secret, proxy.cut, proxy.restore, caplog)


async def test_connection_dropped_by_the_server_is_followed_again(
    pg: PostgresServer, db_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """pg_terminate_backend on the follower's connection: it reconnects, re-reads the
    table, and notifications reach it again."""
    caplog.set_level(logging.INFO, logger="spillway.identity")
    running = await start_gateway(outage_config(pg.url, db_schema))
    try:
        async with aiohttp.ClientSession() as s:
            watch = Watch(s, running)
            made = await watch.admin.create(id="dropped", team="eng")
            conn = await asyncpg.connect(pg.url)
            try:
                caplog.clear()
                ended = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'spillway'"
                )
                assert ended == 1

                def states() -> list[str]:
                    said = [r.getMessage() for r in caplog.records]
                    return [m.split(" (")[0].split(";")[0] for m in said
                            if m.startswith("key database ")]  # fmt: skip

                started = time.monotonic()
                while states() != ["key database unreachable", "key database reachable"]:
                    assert time.monotonic() - started < BOUND + SLACK, states()
                    await asyncio.sleep(0.05)
                await watch.until("ok", within=SLACK)
                await conn.execute(
                    f'UPDATE "{db_schema}".keys SET revoked_at = now() WHERE id = $1', "dropped"
                )
            finally:
                await conn.close()
            started = time.monotonic()
            while (await chat_status(s, running.url, made["secret"]))[0] != 401:
                assert time.monotonic() - started < SLACK, "revocation not followed"
                await asyncio.sleep(0.05)
    finally:
        await stop_cleanly(running, caplog)
