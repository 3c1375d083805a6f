"""Upstreams over TLS with a private CA (trustme), mTLS, a real egress proxy
(tinyproxy) carrying CONNECT tunnels, NO_PROXY, and an IPv6 upstream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.fakes import FakeOpenAI
from tests.support.fleet import KEY, fleet_config, members, post
from tests.support.gateway import Running, start_gateway
from tests.support.tinyproxy import Tinyproxy
from tests.support.tls import PrivateCA, private_ca

HEADERS = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def ca(tmp_path: Path) -> PrivateCA:
    return private_ca(tmp_path)


@pytest.fixture
async def tls_upstream(ca: PrivateCA) -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI("tls", ssl_context=ca.server_context()).start()
    yield fake
    await fake.stop()


@pytest.fixture
async def mtls_upstream(ca: PrivateCA) -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI("mtls", ssl_context=ca.server_context(require_client_cert=True))
    yield await fake.start()
    await fake.stop()


async def ask(backend: dict[str, Any]) -> tuple[int, dict[str, Any], Running]:
    """One chat request through a gateway whose only backend is ``backend``."""
    gw = await start_gateway(fleet_config(
        {"secure": {"provider": "openai", **backend}}, {"p": {"members": members("secure")}},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            r = await post(s, gw)
        return r.status, r.json(), gw
    finally:
        await gw.stop()


async def test_private_ca_trusted_with_ca_file_and_refused_without(
    tls_upstream: FakeOpenAI, ca: PrivateCA
) -> None:
    assert tls_upstream.url.startswith("https://127.0.0.1:")
    status, body, _ = await ask({"url": tls_upstream.url, "tls": {"ca_file": ca.ca_file}})
    assert status == 200, body
    status, body, _ = await ask({"url": tls_upstream.url})  # the system CAs only
    assert status == 502
    error = body["error"]
    assert error["code"] == "upstream_tls_error"
    assert "'secure'" in error["message"] and "certificate" in error["message"]
    assert len(tls_upstream.seen) == 1


async def test_mtls_client_certificate_required_and_presented(
    mtls_upstream: FakeOpenAI, ca: PrivateCA
) -> None:
    tls = {"ca_file": ca.ca_file, "cert_file": ca.client_cert_file, "key_file": ca.client_key_file}
    status, body, _ = await ask({"url": mtls_upstream.url, "tls": tls})
    assert status == 200, body
    status, body, _ = await ask({"url": mtls_upstream.url, "tls": {"ca_file": ca.ca_file}})
    # TLS 1.3: the server refuses after the client's side of the handshake is done, so
    # the client sees its alert (a TLS error) or only the reset that follows it
    assert status == 502, body
    assert body["error"]["code"] in ("upstream_tls_error", "upstream_error")
    assert "'secure'" in body["error"]["message"]
    assert len(mtls_upstream.seen) == 1


async def test_verify_false_works_and_is_warned_about(
    tls_upstream: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        status, _, _ = await ask({"url": tls_upstream.url, "tls": {"verify": False}})
    assert status == 200
    assert any("verification is OFF" in r.getMessage() and "secure" in r.getMessage()
               for r in caplog.records)  # fmt: skip


async def test_tunnel_through_an_egress_proxy_with_credentials(
    tls_upstream: FakeOpenAI, ca: PrivateCA, caplog: pytest.LogCaptureFixture
) -> None:
    with Tinyproxy(user="proxyuser", password="s3cret-pw") as proxy, caplog.at_level(logging.INFO):
        url = proxy.url.replace("http://", "http://proxyuser:s3cret-pw@")
        status, body, _ = await ask(
            {"url": tls_upstream.url, "tls": {"ca_file": ca.ca_file}, "proxy": url}
        )
        assert status == 200, body
        assert proxy.tunnels() == [f"127.0.0.1:{tls_upstream.port}"]
        # wrong credentials: the proxy refuses the tunnel, a 502 that does not show them
        bad = proxy.url.replace("http://", "http://proxyuser:wrong-pw@")
        status, body, _ = await ask(
            {"url": tls_upstream.url, "tls": {"ca_file": ca.ca_file}, "proxy": bad}
        )
        assert status == 502 and "refused the tunnel" in body["error"]["message"], body
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"through proxy {proxy.url}" in logged
    assert "s3cret-pw" not in logged and "wrong-pw" not in logged
    assert "wrong-pw" not in str(body)


async def test_https_proxy_from_the_environment_and_no_proxy(
    tls_upstream: FakeOpenAI, ca: PrivateCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = {"url": tls_upstream.url, "tls": {"ca_file": ca.ca_file}}
    with Tinyproxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("https_proxy", raising=False)
        assert (await ask(backend))[0] == 200
        assert len(proxy.tunnels()) == 1
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        assert (await ask(backend))[0] == 200
        assert len(proxy.tunnels()) == 1  # went direct
        assert len(tls_upstream.seen) == 2


async def test_ipv6_upstream() -> None:
    fake = await FakeOpenAI("v6", host="::1").start()
    try:
        assert fake.url.startswith("http://[::1]:")
        status, body, _ = await ask({"url": fake.url})
        assert status == 200, body
        assert fake.seen[0].headers["Host"] == f"[::1]:{fake.port}"
    finally:
        await fake.stop()


async def test_every_endpoint_goes_through_the_backends_tls_and_proxy(
    tls_upstream: FakeOpenAI, ca: PrivateCA
) -> None:
    """Chat completions, completions and embeddings: the same private CA and tunnel."""
    with Tinyproxy() as proxy:
        backend = {"provider": "openai", "url": tls_upstream.url, "proxy": proxy.url}
        config = fleet_config(
            {"trusted": {**backend, "tls": {"ca_file": ca.ca_file}}, "untrusted": backend},
            {"chat": {"members": members("trusted")}, "vectors": {"members": members("trusted")},
             "refused": {"members": members("untrusted")}},
            models={"chat": {"routes": [{"pools": ["chat"]}]},
                    "embed": {"kind": "embeddings", "routes": [{"pools": ["vectors"]}]},
                    "no-ca": {"routes": [{"pools": ["refused"]}]}},
        )  # fmt: skip
        gw = await start_gateway(config)
        try:
            async with aiohttp.ClientSession() as s:
                for path, body in (
                    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                    ("completions", {"prompt": "hi"}),
                    ("embeddings", {"input": "hi"}),
                ):
                    model = "embed" if path == "embeddings" else "chat"
                    async with s.post(f"{gw.url}/v1/{path}", json={"model": model, **body},
                                      headers=HEADERS) as r:  # fmt: skip
                        assert r.status == 200, await r.text()
                async with s.post(f"{gw.url}/v1/completions", headers=HEADERS,
                                  json={"model": "no-ca", "prompt": "hi"}) as r:  # fmt: skip
                    assert r.status == 502
                    assert (await r.json())["error"]["code"] == "upstream_tls_error"
        finally:
            await gw.stop()
        tunnels = proxy.tunnels()
    assert tunnels and set(tunnels) == {f"127.0.0.1:{tls_upstream.port}"}
    paths = [seen.path for seen in tls_upstream.seen]
    assert paths == ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
