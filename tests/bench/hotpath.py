"""CPU per request of the gateway's own code (see README.md in this folder).

The real application and handler run against a real Redis (the config's
``redis.url``, default ``$REDIS_URL`` or 127.0.0.1:6379); only the two sockets
are left out: the request is built in memory and the upstream call returns the
benchmark's canned answer. Requests go 32 at a time, as with 32 connections.

``--endpoint embeddings`` measures ``/v1/embeddings`` instead (one input, a
1,536-float answer as OpenAI's text-embedding-3-small returns, relayed as
floats; ``--base64`` the same vector base64-encoded), on
``embeddings-bench.yaml``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import pstats
import random
import struct
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import streams, web
from aiohttp.test_utils import make_mocked_request

import router.upstream as upstream_module
from router.app import create_app
from router.config_load import load_config
from router.keys import GATEWAY

HERE = Path(__file__).parent
BODY = (
    b'{"model":"bench-model","messages":[{"role":"system","content":"You are a helpful '
    b'assistant."},{"role":"user","content":"Say hello in one short sentence, please."}],'
    b'"max_tokens":64,"temperature":0.7}'
)
ANSWER = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1764000000,'
    b'"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":'
    b'"Hello! How can I help you today? This is a fixed benchmark answer of about thirty '
    b'tokens in length, give or take."},"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":25,"completion_tokens":30,"total_tokens":55}}'
)

EMBED_BODY = b'{"model":"bench-embed","input":"Say hello in one short sentence, please."}'
_VECTOR = [random.Random(7).uniform(-0.1, 0.1) for _ in range(1536)]


def embeddings_answer(encoded: bool) -> bytes:
    vector: object = _VECTOR
    if encoded:
        vector = base64.b64encode(struct.pack(f"<{len(_VECTOR)}f", *_VECTOR)).decode()
    return orjson.dumps({
        "object": "list", "data": [{"object": "embedding", "index": 0, "embedding": vector}],
        "model": "bench-embed", "usage": {"prompt_tokens": 9, "total_tokens": 9},
    })  # fmt: skip


class _Canned:
    is_stream = False
    answer = ANSWER

    async def read(self) -> bytes:
        return self.answer

    def close(self) -> None:
        return None


async def _canned_post(self: Any, *args: Any, **kwargs: Any) -> _Canned:
    return _Canned()


class _Protocol:
    _reading_paused = False
    transport = None

    def pause_reading(self, **_: Any) -> None:
        return None

    def resume_reading(self, **_: Any) -> None:
        return None


def _request(
    app: web.Application, loop: asyncio.AbstractEventLoop, path: str, body: bytes
) -> web.Request:
    payload = streams.StreamReader(_Protocol(), 2**16, loop=loop)  # type: ignore[arg-type]
    payload.feed_data(body)
    payload.feed_eof()
    headers = {"Authorization": "Bearer sk-bench-0001", "Content-Type": "application/json",
               "Content-Length": str(len(body))}  # fmt: skip
    return make_mocked_request("POST", path, headers=headers, payload=payload, app=app, loop=loop)


async def run(config: Path, n: int, profile: bool, endpoint: str, encoded: bool) -> None:
    upstream_module.Upstream.post = _canned_post  # type: ignore[method-assign,assignment]
    path, body = "/v1/chat/completions", BODY
    if endpoint == "embeddings":
        path, body = "/v1/embeddings", EMBED_BODY
        _Canned.answer = embeddings_answer(encoded)
    app = create_app(load_config(config))
    gateway = app[GATEWAY]
    await gateway.start()
    loop = asyncio.get_running_loop()
    proxy = gateway.proxy
    codec = proxy.codecs[endpoint]
    try:
        for _ in range(200):  # warm up: scripts loaded, children bound
            await proxy.handle(_request(app, loop, path, body), codec)
        requests = [_request(app, loop, path, body) for _ in range(n)]
        prof = cProfile.Profile() if profile else None
        began = time.process_time()
        if prof:
            prof.enable()
        for k in range(0, n, 32):
            await asyncio.gather(*(proxy.handle(r, codec) for r in requests[k : k + 32]))
        if prof:
            prof.disable()
        spent = time.process_time() - began
        print(f"{config.name} {path}: {spent / n * 1e6:.1f} µs of CPU per request (own code)")
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    finally:
        await gateway.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("config", nargs="?", type=Path)
    ap.add_argument("requests", nargs="?", type=int, default=20000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--endpoint", choices=("chat", "embeddings"), default="chat")
    ap.add_argument("--base64", action="store_true", help="embeddings answered in base64")
    args = ap.parse_args()
    if args.config is None:
        name = "embeddings-bench.yaml" if args.endpoint == "embeddings" else "spillway-bench.yaml"
        args.config = HERE / name
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args.config, args.requests, args.profile, args.endpoint, args.base64))


if __name__ == "__main__":
    main()
