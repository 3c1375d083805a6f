"""SSO tokens (JWT) against a JWKS served by a real HTTP server, keys made here."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import openai
import pytest

from tests.support.gateway import Running, start_gateway
from tests.support.idp import AUDIENCE, ISSUER, FakeIdP, ec_key, mint, rsa_key
from tests.support.keys import chat_status


def sso_config(jwks_url: str | None = None, jwks_file: str | None = None,
               **issuer: Any) -> dict[str, Any]:  # fmt: skip
    source = {"jwks_url": jwks_url} if jwks_url else {"jwks_file": jwks_file}
    return {
        "backends": {"sim": {"provider": "simulate"}},
        "pools": {"sim-pool": {"members": [{"backend": "sim", "model": "sim-1"}]}},
        "models": {"chat": {"routes": [{"pools": ["sim-pool"]}]}},
        "teams": {"eng": {"limits": {"requests_per_minute": 1000}}, "research": {}},
        "auth": {
            "jwt": [{
                "issuer": ISSUER, "audience": AUDIENCE, **source,
                "algorithms": ["RS256", "ES256"], "team_claim": "groups",
                "teams": {"engineering": "eng", "research-staff": "research"},
                "user_claim": "sub", "leeway_seconds": 0, **issuer,
            }],
            "user_limits": {"requests_per_minute": 3},
        },
        "logging": {"requests": True},
    }  # fmt: skip


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdP]:
    server = await FakeIdP(rsa_key(), ec_key()).start()
    yield server
    await server.stop()


@pytest.fixture
async def gw(idp: FakeIdP) -> AsyncIterator[Running]:
    running = await start_gateway(sso_config(idp.jwks_url, min_refresh_seconds=60))
    yield running
    await running.stop()


async def test_rsa_and_ec_tokens_map_to_team_and_user(gw: Running, idp: FakeIdP) -> None:
    rsa, ec = idp.keys
    for key in (rsa, ec):
        token = mint(key, sub="bob" if key is ec else "alice")
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=token, max_retries=0) as c:
            reply = await c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            assert reply.choices[0].message.content
    async with aiohttp.ClientSession() as s:
        token = mint(rsa, sub="carol", groups=["unrelated", "research-staff"])
        async with s.get(gw.url + "/v1/quota", headers={"Authorization": f"Bearer {token}"}) as r:
            doc = await r.json()
        assert doc["key_id"] == "user:carol" and doc["team"] == "research"


async def test_user_limits_apply_per_user_and_labels_stay_bounded(
    gw: Running, idp: FakeIdP
) -> None:
    rsa = idp.keys[0]
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            assert (await chat_status(s, gw.url, mint(rsa, sub="dave")))[0] == 200
        status, doc = await chat_status(s, gw.url, mint(rsa, sub="dave"))
        assert status == 429 and "key 'user:dave'" in doc["error"]["message"]
        assert (await chat_status(s, gw.url, mint(rsa, sub="erin")))[0] == 200  # her own counter
        async with s.get(gw.url + "/metrics") as r:
            text = await r.text()
        assert "dave" not in text and "erin" not in text
        assert 'team="eng"' in text


def _case_tokens(idp: FakeIdP) -> list[tuple[str, str, int, str]]:
    rsa, ec = idp.keys
    now = int(time.time())
    stranger = rsa_key(kid=rsa.kid)  # the same kid, another private key
    hs = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 60,
                     "groups": ["engineering"]}, "k" * 32, algorithm="HS256",
                    headers={"kid": rsa.kid})  # fmt: skip
    return [
        ("expired", mint(rsa, exp=now - 10), 401, "has expired"),
        ("not yet valid", mint(ec, nbf=now + 600), 401, "not valid yet"),
        ("wrong audience", mint(rsa, aud="someone-else"), 401, "audience"),
        ("wrong issuer", mint(rsa, iss="https://evil.example.test"), 401, "issuer"),
        ("bad signature", mint(stranger), 401, "signature does not verify"),
        ("unknown kid", mint(rsa, kid="no-such-kid"), 401, "signing key (kid) is unknown"),
        ("hmac algorithm", hs, 401, "algorithm is not accepted"),
        ("no exp", mint(rsa, exp=None), 401, "'exp' claim"),
        ("no user", mint(rsa, sub=None), 401, "'sub' claim"),
        ("garbage", "eyJhbGciOi.not-a.token", 401, "not a well-formed JWT"),
        ("no team", mint(rsa, groups=["marketing"]), 403, "maps to no team"),
        ("groups missing", mint(ec, groups=None), 403, "maps to no team"),
    ]


async def test_each_error_says_which_and_never_echoes_the_token(gw: Running, idp: FakeIdP) -> None:
    async with aiohttp.ClientSession() as s:
        for name, token, want, phrase in _case_tokens(idp):
            status, doc = await chat_status(s, gw.url, token)
            assert status == want, (name, doc)
            assert phrase in doc["error"]["message"], (name, doc)
            assert token not in json.dumps(doc) and token[-20:] not in json.dumps(doc)
            assert doc["error"]["code"] == ("no_team" if want == 403 else "invalid_token")


async def test_rotation_is_followed_without_restart(idp: FakeIdP) -> None:
    gw = await start_gateway(sso_config(idp.jwks_url, min_refresh_seconds=0.2,
                                        refresh_seconds=0.5))  # fmt: skip
    try:
        old = idp.keys[0]
        async with aiohttp.ClientSession() as s:
            cached_token = mint(old)
            assert (await chat_status(s, gw.url, cached_token))[0] == 200
            new = rsa_key()
            idp.keys = [new, idp.keys[1]]  # new kid appears, the old one is removed
            await asyncio.sleep(0.25)  # past min_refresh_seconds: an unknown kid re-reads
            assert (await chat_status(s, gw.url, mint(new)))[0] == 200
            status, doc = await chat_status(s, gw.url, mint(old))
            assert status == 401 and "unknown" in doc["error"]["message"]
            # a token verified before the rotation is not served from the cache either
            assert (await chat_status(s, gw.url, cached_token))[0] == 401
    finally:
        await gw.stop()


async def test_idp_down_keeps_cached_keys_working(gw: Running, idp: FakeIdP) -> None:
    rsa = idp.keys[0]
    async with aiohttp.ClientSession() as s:
        assert (await chat_status(s, gw.url, mint(rsa)))[0] == 200
        await idp.stop()
        for user in ("frank", "grace"):  # fresh tokens, verified against cached keys
            assert (await chat_status(s, gw.url, mint(rsa, sub=user)))[0] == 200
        status, doc = await chat_status(s, gw.url, mint(rsa, kid="rotated-while-down"))
        assert status == 401 and "unknown" in doc["error"]["message"]
        async with s.get(gw.url + "/readyz") as r:
            assert r.status == 200


async def test_unknown_kid_flood_refreshes_at_the_configured_rate(
    gw: Running, idp: FakeIdP
) -> None:
    rsa = idp.keys[0]
    before = idp.fetches
    async with aiohttp.ClientSession() as s:
        statuses = await asyncio.gather(*(
            chat_status(s, gw.url, mint(rsa, kid=f"junk-{i}")) for i in range(60)
        ))  # fmt: skip
    assert {st for st, _ in statuses} == {401}
    assert idp.fetches - before <= 1  # min_refresh_seconds: 60


async def test_jwks_from_a_file(tmp_path: Path) -> None:
    key = ec_key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [key.public_jwk()]}))
    gw = await start_gateway(sso_config(jwks_file=str(path)))
    try:
        async with aiohttp.ClientSession() as s:
            assert (await chat_status(s, gw.url, mint(key)))[0] == 200
            assert (await chat_status(s, gw.url, "sk-not-a-jwt-at-all"))[0] == 401
    finally:
        await gw.stop()
