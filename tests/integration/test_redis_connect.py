"""Reaching Redis: TLS with a private CA (made by trustme) and client certificates, an
ACL user and password, a unix socket, and Sentinel through a real failover."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as syncredis
import trustme

from router.config import ConfigError, RedisSettings
from router.quota.base import ADMITTED, StoreUnavailable
from router.quota.plan import Planner
from router.quota.redis_store import RedisStore
from tests.support.fakes import FakeOpenAI
from tests.support.gateway import make_config, start_gateway
from tests.support.net import free_port
from tests.support.redis_server import redis_server, sentinel_process
from tests.unit.quota.test_stores import quota_config

KEY = "sk-test-connect-0001"
LEASE = 60
ACL = ["--user", "default", "off", "--user", "spillway", "on", ">s3cret-pass", "~*", "&*",
       "+@all"]  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("certs")
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("spillway-gateway")
    paths = {name: str(folder / f"{name}.pem") for name in
             ("ca", "server", "server-key", "client", "client-key")}  # fmt: skip
    ca.cert_pem.write_to_path(paths["ca"])
    server.cert_chain_pems[0].write_to_path(paths["server"])
    server.private_key_pem.write_to_path(paths["server-key"])
    client.cert_chain_pems[0].write_to_path(paths["client"])
    client.private_key_pem.write_to_path(paths["client-key"])
    return paths


async def admits(url: str, prefix: str) -> bool:
    """One admission through a store on ``url``; False when Redis could not be used."""
    store = RedisStore(RedisSettings(url=url, key_prefix=prefix, connect_timeout_seconds=1))
    checks = Planner(quota_config(prefix, limits={"concurrent": 5})).checks("k", "local")
    try:
        reply = await store.admit("r1", checks, 1, 1, 1, 0, LEASE)
        return reply.code == ADMITTED
    except StoreUnavailable:
        return False
    finally:
        await store.aclose()


async def test_tls_with_private_ca_client_certificate_and_acl(
    certs: dict[str, str], key_prefix: str
) -> None:
    port = free_port()
    args = ["--port", "0", "--bind", "127.0.0.1", "--tls-port", str(port),
            "--tls-cert-file", certs["server"], "--tls-key-file", certs["server-key"],
            "--tls-ca-cert-file", certs["ca"], "--tls-auth-clients", "yes",
            "--save", "", "--appendonly", "no", *ACL]  # fmt: skip
    ping = syncredis.Redis(port=port, ssl=True, ssl_ca_certs=certs["ca"],
                           ssl_certfile=certs["client"], ssl_keyfile=certs["client-key"],
                           username="spillway", password="s3cret-pass")  # fmt: skip
    with redis_server(args, ping):
        base = f"rediss://spillway:s3cret-pass@localhost:{port}/0"
        mtls = f"ssl_ca_certs={certs['ca']}&ssl_certfile={certs['client']}" \
               f"&ssl_keyfile={certs['client-key']}"  # fmt: skip
        assert await admits(f"{base}?{mtls}", key_prefix)
        # refused: the server's CA is not trusted, no client certificate, wrong password
        assert not await admits(f"{base}?ssl_certfile={certs['client']}"
                                f"&ssl_keyfile={certs['client-key']}", key_prefix)  # fmt: skip
        assert not await admits(f"{base}?ssl_ca_certs={certs['ca']}", key_prefix)
        wrong = f"rediss://spillway:nope@localhost:{port}/0?{mtls}"
        assert not await admits(wrong, key_prefix)
        # verification off is the operator's explicit choice
        loose = f"{base}?ssl_cert_reqs=none&ssl_certfile={certs['client']}" \
                f"&ssl_keyfile={certs['client-key']}"  # fmt: skip
        assert await admits(loose, key_prefix)


async def test_unix_socket_with_acl_and_database(tmp_path: Path, key_prefix: str) -> None:
    sock = str(tmp_path / "redis.sock")
    args = ["--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", "--save", "",
            "--appendonly", "no", *ACL]  # fmt: skip
    ping = syncredis.Redis(unix_socket_path=sock, username="spillway", password="s3cret-pass")
    with redis_server(args, ping):
        assert await admits(f"unix://spillway:s3cret-pass@{sock}?db=3", key_prefix)
        assert (
            ping.dbsize() == 0
            and syncredis.Redis(
                unix_socket_path=sock, username="spillway", password="s3cret-pass", db=3
            ).dbsize()
            > 0
        )


@pytest.mark.parametrize(
    ("redis", "problem"),
    [
        ({"url": "redis://h/0?ssl_ca_certs=/ca.pem"}, "ssl_ca_certs needs a rediss:// URL"),
        ({"url": "redis://h/0?sockettimeout=1"}, "unknown option 'sockettimeout'"),
        ({"url": "http://h/0"}, "url: Redis URL must specify one of"),
        ({"url": "rediss://h/0?ssl_cert_reqs=maybe"}, "ssl_cert_reqs must be"),
        ({"url": "redis://h/2", "cluster": True}, "only database 0"),
        ({"sentinel": {"hosts": ["h"], "service": "s"}}, "host:port"),
        ({"sentinel": {"hosts": ["h:1"], "service": "s"}, "cluster": True}, "together"),
    ],
)
def test_bad_redis_settings_are_named(redis: dict[str, Any], problem: str) -> None:
    doc = {"redis": redis, "backends": {"s": {"provider": "simulate"}},
           "pools": {"p": {"members": [{"backend": "s", "model": "m"}]}},
           "models": {"m": {"routes": [{"pools": ["p"]}]}}}  # fmt: skip
    with pytest.raises(ConfigError) as err:
        make_config(doc)
    assert any(line.startswith("redis") and problem in line for line in err.value.problems), (
        err.value.problems
    )


async def test_sentinel_failover(upstream: FakeOpenAI, key_prefix: str) -> None:
    """The primary is SIGKILLed under load; the sentinels promote the replica. Admissions
    resume within 10 s of the promotion, no NOSCRIPT reaches anyone (the new primary has
    no scripts), and no concurrency slot stays held."""
    service = "spillway-primary"
    p_port, r_port = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with (
        redis_server(["--port", str(p_port), *common], syncredis.Redis(port=p_port)) as primary,
        redis_server(["--port", str(r_port), "--replicaof", "127.0.0.1", str(p_port), *common],
                     syncredis.Redis(port=r_port)),
        sentinel_process(p_port, service) as s1,
        sentinel_process(p_port, service) as s2,
        sentinel_process(p_port, service) as s3,
    ):  # fmt: skip
        sentinels = [syncredis.Redis(port=p) for p in (s1, s2, s3)]
        replica = syncredis.Redis(port=r_port)
        _wait(
            lambda: all(
                len(s.sentinel_slaves(service)) == 1 and len(s.sentinel_sentinels(service)) == 2
                for s in sentinels
            ),
            20,
        )
        doc = {
            "redis": {"sentinel": {"hosts": [f"127.0.0.1:{p}" for p in (s1, s2, s3)],
                                   "service": service},
                      "key_prefix": key_prefix, "on_error": "deny",
                      "socket_timeout_seconds": 0.5, "connect_timeout_seconds": 0.5},
            "quota": {"checkpoint_seconds": 0},
            "logging": {"requests": False},
            "backends": {"up": {"provider": "openai", "url": upstream.url}},
            "pools": {"p": {"members": [{"backend": "up", "model": "m"}]}},
            "models": {"chat": {"routes": [{"pools": ["p"]}]}},
            "teams": {"t": {"limits": {"concurrent": 50, "requests_per_minute": 100_000},
                            "budgets": [{"tokens_per_day": 10_000_000}]}},
            "keys": [{"id": "k", "team": "t", "key": KEY}],
        }  # fmt: skip
        gw = await start_gateway(doc)
        results: list[tuple[float, int, str]] = []
        stop = asyncio.Event()

        async def load(s: aiohttp.ClientSession) -> None:
            body = {"model": "chat", "max_tokens": 4,
                    "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
            while not stop.is_set():
                async with s.post(gw.url + "/v1/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
                    results.append((time.monotonic(), r.status, await r.text()))
                await asyncio.sleep(0.01)

        try:
            async with aiohttp.ClientSession() as s:
                workers = [asyncio.ensure_future(load(s)) for _ in range(8)]
                await asyncio.sleep(1.0)
                assert results and all(st == 200 for _, st, _ in results)
                replica.script_flush()  # as any replica may be: no scripts of its own
                primary.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                promoted = await _promotion(sentinels[0], service, r_port)
                await asyncio.sleep(10.0)
                stop.set()
                await asyncio.gather(*workers)
            after = [(t, st) for t, st, _ in results if t > promoted]
            resumed = next(t for t, st in after if st == 200)
            print(
                f"sentinel failover: promoted {promoted - killed:.2f} s after the kill, "
                f"admissions resumed {resumed - promoted:.2f} s after the promotion"
            )
            assert resumed - promoted < 10, resumed - promoted
            # once resumed, every admission goes through
            assert all(st == 200 for t, st in after if t > resumed + 2)
            assert not any("NOSCRIPT" in text for _, _, text in results)
            assert all(st in (200, 503) for _, st, _ in results)
            assert any(t > killed and st == 503 for t, st, _ in results)  # it did fail over

            new_primary = syncredis.Redis(port=r_port)
            _wait(lambda: new_primary.zcard(f"{key_prefix}:{{team:t}}:team:conc") == 0, 5)
            new_primary.close()
        finally:
            await gw.stop()
            for c in (*sentinels, replica):
                c.close()


async def _promotion(sentinel: syncredis.Redis, service: str, port: int) -> float:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        addr = await asyncio.to_thread(sentinel.sentinel_get_master_addr_by_name, service)
        if addr and int(addr[1]) == port:
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise AssertionError("the replica was not promoted")


def _wait(check: Any, within: float) -> None:
    end = time.monotonic() + within
    while not check():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
