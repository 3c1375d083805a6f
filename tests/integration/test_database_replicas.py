"""Three gateway processes sharing one PostgreSQL: a key made, changed or revoked
through any replica's admin API is honoured by every replica within a second
(LISTEN/NOTIFY), and the database going away leaves cached keys working."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp

from tests.support.gateway import GatewayProcess
from tests.support.keys import Admin, chat_status, identity_config
from tests.support.net import free_port
from tests.support.postgres import postgres_server

WITHIN = 1.0  # seconds for a change to reach every replica (the bound)


@dataclass
class Replica:
    proc: GatewayProcess
    admin_url: str

    @property
    def url(self) -> str:
        return self.proc.url


@contextmanager
def replicas(database_url: str, schema: str, n: int = 3) -> Iterator[list[Replica]]:
    with ExitStack() as stack:
        procs = []
        for _ in range(n):
            port = free_port()
            proc = GatewayProcess(identity_config(database_url, schema, admin_port=port))
            stack.callback(proc.stop)
            procs.append(Replica(proc, f"http://127.0.0.1:{port}"))
        yield procs


async def until_all(
    session: aiohttp.ClientSession, procs: list[Replica], key: str, want: int
) -> float:
    """Seconds until every replica answers ``key`` with ``want`` (fails past WITHIN)."""
    start = time.monotonic()
    pending = list(procs)
    while pending:
        pending = [p for p in pending if (await chat_status(session, p.url, key))[0] != want]
        elapsed = time.monotonic() - start
        if pending and elapsed > WITHIN:
            got = [(await chat_status(session, p.url, key))[0] for p in pending]
            raise AssertionError(f"after {elapsed:.2f}s replicas still answer {got}, not {want}")
    return time.monotonic() - start


async def test_changes_reach_every_replica_within_a_second(
    database_url: str, db_schema: str
) -> None:
    with replicas(database_url, db_schema) as procs:
        a, b, c = procs
        async with aiohttp.ClientSession() as s:
            made = await Admin(s, a.admin_url).create(id="shared", team="eng")
            await until_all(s, [b, c], made["secret"], 200)
            assert (await chat_status(s, a.url, made["secret"]))[0] == 200

            # rotation on c with a grace period: both secrets work everywhere, then the old stops
            status, rotated = await Admin(s, c.admin_url).call(
                "POST", "/shared/rotate", {"grace_seconds": 3}
            )
            assert status == 200
            await until_all(s, procs, rotated["secret"], 200)
            for proc in procs:
                assert (await chat_status(s, proc.url, made["secret"]))[0] == 200
            await asyncio.sleep(3.0)
            await until_all(s, procs, made["secret"], 401)
            await until_all(s, procs, rotated["secret"], 200)

            # expiry set through a: refused by all
            past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
            status, _ = await Admin(s, a.admin_url).call("PATCH", "/shared", {"expires_at": past})
            assert status == 200
            await until_all(s, procs, rotated["secret"], 401)
            status, _ = await Admin(s, a.admin_url).call("PATCH", "/shared", {"expires_at": None})
            await until_all(s, procs, rotated["secret"], 200)

            # revoked through b: refused by all within a second
            status, _ = await Admin(s, b.admin_url).call("DELETE", "/shared")
            assert status == 200
            await until_all(s, procs, rotated["secret"], 401)


async def test_database_killed_mid_run_leaves_cached_keys_working(db_schema: str) -> None:
    with postgres_server() as server, replicas(server.url, db_schema) as procs:
        async with aiohttp.ClientSession() as s:
            made = await Admin(s, procs[0].admin_url).create(team="ops")
            await until_all(s, procs, made["secret"], 200)
            server.kill()
            for proc in procs:
                deadline = time.monotonic() + 10
                while True:
                    async with s.get(proc.url + "/readyz") as r:
                        assert r.status == 200  # readiness stays true
                        doc = await r.json()
                    if doc["key_database"]["status"] == "unreachable":
                        break
                    assert time.monotonic() < deadline, doc
                    await asyncio.sleep(0.05)
                assert doc["key_database"]["serving"] == "from cache"
            for _ in range(3):
                for proc in procs:
                    assert (await chat_status(s, proc.url, made["secret"]))[0] == 200
