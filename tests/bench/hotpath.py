"""CPU per request of the gateway's own code (see README.md in this folder).

The real application and handler run against a real Redis (the config's
``redis.url``, default ``$REDIS_URL`` or 127.0.0.1:6379); only the two sockets
are left out: the request is built in memory and the upstream call returns the
benchmark's canned answer. Requests go 32 at a time, as with 32 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from pathlib import Path
from typing import Any

from aiohttp import streams, web
from aiohttp.test_utils import make_mocked_request

import router.upstream as upstream_module
from router.app import create_app
from router.config import load_config
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


class _Canned:
    is_stream = False

    async def read(self) -> bytes:
        return ANSWER

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


def _request(app: web.Application, loop: asyncio.AbstractEventLoop) -> web.Request:
    payload = streams.StreamReader(_Protocol(), 2**16, loop=loop)  # type: ignore[arg-type]
    payload.feed_data(BODY)
    payload.feed_eof()
    headers = {"Authorization": "Bearer sk-bench-0001", "Content-Type": "application/json",
               "Content-Length": str(len(BODY))}  # fmt: skip
    return make_mocked_request(
        "POST", "/v1/chat/completions", headers=headers, payload=payload, app=app, loop=loop
    )


async def run(config: Path, n: int, profile: bool) -> None:
    upstream_module.Upstream.post = _canned_post  # type: ignore[method-assign,assignment]
    app = create_app(load_config(config))
    gateway = app[GATEWAY]
    await gateway.start()
    loop = asyncio.get_running_loop()
    try:
        for _ in range(200):  # warm up: scripts loaded, children bound
            await gateway.proxy.chat(_request(app, loop))
        requests = [_request(app, loop) for _ in range(n)]
        prof = cProfile.Profile() if profile else None
        began = time.process_time()
        if prof:
            prof.enable()
        for k in range(0, n, 32):
            await asyncio.gather(*(gateway.proxy.chat(r) for r in requests[k : k + 32]))
        if prof:
            prof.disable()
        spent = time.process_time() - began
        print(f"{config.name}: {spent / n * 1e6:.1f} µs of CPU per request (own code)")
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    finally:
        await gateway.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("config", nargs="?", type=Path, default=HERE / "spillway-bench.yaml")
    ap.add_argument("requests", nargs="?", type=int, default=20000)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args.config, args.requests, args.profile))


if __name__ == "__main__":
    main()
