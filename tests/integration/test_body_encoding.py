"""Compressed request bodies: decoded within the size limit, or an envelope that
says why not (never a 500, never aiohttp's plain text)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.fakes import FakeOpenAI
from tests.support.gateway import Running, start_gateway

KEY = "sk-test-encoding-0001"
LIMIT = 64 * 1024
BODY = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi there"}]})


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.fixture
async def gw(upstream: FakeOpenAI) -> AsyncIterator[Running]:
    running = await start_gateway({
        "server": {"max_body_bytes": LIMIT},
        "backends": {"gpu": {"provider": "openai", "url": upstream.url}},
        "pools": {"local": {"members": [{"backend": "gpu", "model": "llama"}]}},
        "models": {"chat": {"routes": [{"pools": ["local"]}]}},
        "teams": {"t": {}},
        "keys": [{"id": "k", "team": "t", "key": KEY}],
    })  # fmt: skip
    yield running
    await running.stop()


async def post(gw: Running, data: bytes, encoding: str) -> tuple[int, str, Any]:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json",
               "Content-Encoding": encoding}  # fmt: skip
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.post(gw.base_url + "/chat/completions", data=data, headers=headers) as r,
    ):
        text = await r.text()
        return r.status, r.headers.get("Content-Type", ""), json.loads(text)


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),  # the zlib format, as RFC 9110 says
        ("deflate", raw_deflate),  # raw deflate, as some clients send it
        ("identity", lambda b: b),
        ("gzip, identity", gzip.compress),
        ("deflate, gzip", lambda b: gzip.compress(zlib.compress(b))),
        ("GZIP", lambda b: gzip.compress(b[:40]) + gzip.compress(b[40:])),  # two members
    ],
)
async def test_encoded_bodies_are_decoded(
    gw: Running, upstream: FakeOpenAI, encoding: str, encode: Any
) -> None:
    status, _, doc = await post(gw, encode(BODY.encode()), encoding)
    assert status == 200, doc
    assert upstream.seen[-1].body["messages"] == [{"role": "user", "content": "hi there"}]
    assert "Content-Encoding" not in upstream.seen[-1].headers


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("gzip", b"\x1f\x8b\x08\x00garbage-not-gzip"),
        ("gzip", gzip.compress(BODY.encode())[:-12]),  # truncated
        ("gzip", gzip.compress(BODY.encode()) + b"trailing"),
        ("gzip", BODY.encode()),  # says gzip, is not
        ("deflate", b"\x78\x9c\xff\xff\xff\xff"),
        ("deflate", zlib.compress(BODY.encode())[:-4]),
        ("gzip", b""),
    ],
    ids=["garbage", "truncated", "trailing", "not-gzip", "bad-deflate", "short-deflate", "empty"],
)
async def test_undecodable_bodies_are_400(
    gw: Running, upstream: FakeOpenAI, encoding: str, data: bytes,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    status, ctype, doc = await post(gw, data, encoding)
    assert status == 400 and ctype.startswith("application/json")
    assert doc["error"]["code"] == "invalid_body_encoding"
    assert encoding in doc["error"]["message"]
    assert upstream.seen == []
    access = [json.loads(line) for line in capfd.readouterr().err.splitlines()
              if '"spillway.access"' in line]  # fmt: skip
    assert [a["status"] for a in access] == [400]  # recorded as what it was


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "snappy", "gzip, br", "x-foo"])
async def test_unsupported_encodings_are_415(
    gw: Running, upstream: FakeOpenAI, encoding: str
) -> None:
    status, ctype, doc = await post(gw, gzip.compress(BODY.encode()), encoding)
    assert status == 415 and ctype.startswith("application/json")
    assert doc["error"]["code"] == "unsupported_content_encoding"
    assert "install" not in doc["error"]["message"].lower()
    assert "gzip, deflate" in doc["error"]["message"]
    assert upstream.seen == []


async def test_too_many_codings_are_415(gw: Running) -> None:
    data = BODY.encode()
    for _ in range(3):
        data = gzip.compress(data)
    status, _, doc = await post(gw, data, "gzip, gzip, gzip")
    assert status == 415 and doc["error"]["code"] == "unsupported_content_encoding"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_zip_bomb_is_413(gw: Running, upstream: FakeOpenAI, encoding: str) -> None:
    """A few KB that inflate far beyond the limit: refused once past the limit."""
    inner = b'{"model": "chat", "pad": "' + b" " * (50 * LIMIT) + b'"}'
    data = gzip.compress(inner) if encoding == "gzip" else zlib.compress(inner)
    assert len(data) < LIMIT // 4
    status, _, doc = await post(gw, data, encoding)
    assert status == 413 and doc["error"]["code"] == "request_too_large"
    assert "decoded" in doc["error"]["message"]
    # just within the limit once decoded is fine
    fits = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "x"}],
                       "pad": " " * (LIMIT - 200)}).encode()  # fmt: skip
    status, _, doc = await post(gw, gzip.compress(fits), "gzip")
    assert status == 200, doc
    assert len(upstream.seen) == 1
