"""CPU per request of the gateway's own code (see README.md in this folder).

The real application and handler run against a real Redis (the config's
``redis.url``, default ``$REDIS_URL`` or 127.0.0.1:6379). The client's request
is built in memory (no client socket). The upstream call either returns the
benchmark's canned answer (``--upstream canned``, the default: own code only)
or goes through the real upstream client to a keep-alive server in a child
process that writes the same answer (``--upstream socket``: own code plus the
aiohttp client). Requests go 32 at a time, as with 32 connections.

``--endpoint embeddings`` measures ``/v1/embeddings`` instead (one input, a
1,536-float answer as OpenAI's text-embedding-3-small returns, relayed as
floats; ``--base64`` the same vector base64-encoded), on
``embeddings-bench.yaml``.

``--stream`` asks for a streamed chat completion: the upstream answers with
``stream.sse`` (256 chunks, ``text/event-stream``), relayed through aiohttp's
real writer to a client socket that takes it whole.

``--profile`` prints where the time goes, by function and by module.

``--rounds R`` measures R rounds of REQUESTS each. Instruction counts are steady
where CPU time is not: with ``--marks`` the script calls ``os.getppid()`` before
the first round and after each one, so under

    valgrind --tool=callgrind --dump-before=getppid python tests/bench/hotpath.py \
        tests/bench/spillway-bench.yaml 200 --rounds 3 --marks --upstream socket

callgrind writes one profile part per round (``callgrind.out.PID.2`` ... ``.4``);
its ``summary:`` line divided by REQUESTS is the instructions per request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import os
import pstats
import random
import socket
import struct
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import streams, web
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import make_mocked_request

import router.upstream as upstream_module
from router.app import create_app
from router.cli import tune_gc
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

STREAM_BODY = (
    b'{"model":"bench-stream","stream":true,"messages":[{"role":"user","content":"Tell me '
    b'a story."}],"max_tokens":300}'
)
STREAM = (HERE / "stream.sse").read_bytes()

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


class _CannedStream(_Canned):
    """The benchmark's SSE stream, in one buffer (as a static file arrives)."""

    is_stream = True

    async def _chunks(self) -> AsyncIterator[bytes]:
        yield STREAM

    def chunks(self) -> AsyncIterator[bytes]:
        return self._chunks()


async def _canned_post(self: Any, *args: Any, **kwargs: Any) -> _Canned:
    return _CannedStream() if b'"stream":true' in args[2] else _Canned()


class _Protocol:
    _reading_paused = False
    transport = None

    def pause_reading(self, **_: Any) -> None:
        return None

    def resume_reading(self, **_: Any) -> None:
        return None


def _request(
    app: web.Application, loop: asyncio.AbstractEventLoop, path: str, body: bytes,
    sink: _Sink | None = None,
) -> web.Request:  # fmt: skip
    payload = streams.StreamReader(_Protocol(), 2**16, loop=loop)  # type: ignore[arg-type]
    payload.feed_data(body)
    payload.feed_eof()
    headers = {"Authorization": "Bearer sk-bench-0001", "Content-Type": "application/json",
               "Content-Length": str(len(body))}  # fmt: skip
    if sink is None:  # the answer is returned, not written
        return make_mocked_request(
            "POST", path, headers=headers, payload=payload, app=app, loop=loop
        )
    writer = StreamWriter(_SinkProtocol(sink), loop)  # type: ignore[arg-type]
    return make_mocked_request(
        "POST", path, headers=headers, payload=payload, app=app, loop=loop, writer=writer,
        transport=sink,
    )  # fmt: skip


class _Sink(asyncio.Transport):
    """The client's socket: takes every byte of the answer (as a client reading it whole)."""

    def __init__(self) -> None:
        super().__init__()
        self.received = 0
        self.done = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.received += len(data)
        self.done = self.done or b"[DONE]" in data[-40:]  # the stream's end went out

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:  # no join: uvloop's transport writes the pieces as they are
            self.write(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


class _SinkProtocol:
    """What aiohttp's StreamWriter asks of the server protocol."""

    _paused = False

    def __init__(self, transport: _Sink) -> None:
        self.transport = transport

    async def _drain_helper(self) -> None:
        return None


class _Answers(asyncio.Protocol):
    """The child process's upstream: every request gets ``answer``, kept alive."""

    def __init__(self, answer: bytes, media: bytes = b"application/json") -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.reply = (b"HTTP/1.1 200 OK\r\nContent-Type: %b\r\n"
                      b"Content-Length: %d\r\n\r\n%b" % (media, len(answer), answer))  # fmt: skip

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(self.reply)


def serve_answers(port: int, answer: bytes, media: bytes = b"application/json") -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Answers(answer, media), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int) -> None:
    end = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def _by_module(prof: cProfile.Profile, n: int) -> None:
    """Own time per module, in µs per request."""
    per: dict[str, float] = defaultdict(float)
    for (file, _, _), row in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        path = file.replace("\\", "/")
        if "/router/" in path:
            key = "router/" + path.rsplit("/router/", 1)[1]
        elif "site-packages/" in path:
            key = path.rsplit("site-packages/", 1)[1].split("/", 1)[0]
        elif path.startswith("~") or path.startswith("<"):
            key = "builtins"
        else:
            key = "stdlib:" + path.rsplit("/", 1)[-1]
        per[key] += row[2]
    total = sum(per.values())
    print(f"\nown time by module (µs per request, profiled; total {total / n * 1e6:.1f}):")
    for key, spent in sorted(per.items(), key=lambda kv: -kv[1])[:30]:
        print(f"  {spent / n * 1e6:8.2f}  {key}")


async def run(
    config: Path, n: int, profile: bool, upstream: str, rounds: int, marks: bool,
    endpoint: str, encoded: bool, stream: bool,
) -> None:  # fmt: skip
    cfg = load_config(config)
    path, body = "/v1/chat/completions", STREAM_BODY if stream else BODY
    if endpoint == "embeddings":
        path, body = "/v1/embeddings", EMBED_BODY
        _Canned.answer = embeddings_answer(encoded)
    child = None
    if upstream == "canned":
        upstream_module.Upstream.post = _canned_post  # type: ignore[method-assign,assignment]
    else:
        port = _free_port()
        answers = ["--endpoint", endpoint, *(["--base64"] if encoded else [])]
        answers += ["--stream"] if stream else []
        child = subprocess.Popen(  # noqa: ASYNC220 - before the measurement starts
            [sys.executable, __file__, "--serve-answers", str(port), *answers]
        )
        url = f"http://127.0.0.1:{port}/v1"
        backends = {k: b.model_copy(update={"url": url}) for k, b in cfg.backends.items()}
        cfg = cfg.model_copy(update={"backends": backends})
        _wait_listening(port)
    try:
        name = f"{config.name} {path}{' stream' if stream else ''}"
        await _run(cfg, name, n, profile, rounds, marks, endpoint, path, body, stream)
    finally:
        if child is not None:
            child.kill()
            child.wait()


async def _run(
    cfg: Any, name: str, n: int, profile: bool, rounds: int, marks: bool, endpoint: str,
    path: str, body: bytes, stream: bool,
) -> None:  # fmt: skip
    app = create_app(cfg)
    gateway = app[GATEWAY]
    await gateway.start()
    loop = asyncio.get_running_loop()
    proxy = gateway.proxy
    codec = proxy.codecs[endpoint]
    try:
        for _ in range(200):  # warm up: scripts loaded, children bound
            await proxy.handle(_request(app, loop, path, body, _Sink() if stream else None), codec)
        tune_gc()  # as `spillway serve` does once it listens
        prof = cProfile.Profile() if profile else None
        for _ in range(rounds):
            sinks = [_Sink() if stream else None for _ in range(n)]
            requests = [_request(app, loop, path, body, sink) for sink in sinks]
            if marks:
                os.getppid()  # a callgrind dump point (--dump-before=getppid)
            began = time.process_time()
            if prof:
                prof.enable()
            for k in range(0, n, 32):
                await asyncio.gather(*(proxy.handle(r, codec) for r in requests[k : k + 32]))
            if prof:
                prof.disable()
            spent = time.process_time() - began
            if marks:
                os.getppid()
            print(f"{name}: {spent / n * 1e6:.1f} µs of CPU per request")
            for sink in sinks:  # every stream relayed to its end
                assert sink is None or (sink.done and sink.received > len(STREAM)), sink
        if prof:
            rows = int(os.environ.get("HOTPATH_ROWS", "25"))
            pstats.Stats(prof).sort_stats("tottime").print_stats(rows)
            _by_module(prof, n)
    finally:
        await gateway.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("config", nargs="?", type=Path)
    ap.add_argument("requests", nargs="?", type=int, default=20000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--upstream", choices=("canned", "socket"), default="canned")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--marks", action="store_true", help="call os.getppid() around rounds")
    ap.add_argument("--endpoint", choices=("chat", "embeddings"), default="chat")
    ap.add_argument("--base64", action="store_true", help="embeddings answered in base64")
    ap.add_argument("--stream", action="store_true", help="a streamed chat completion (stream.sse)")
    ap.add_argument("--serve-answers", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_answers:
        answer = embeddings_answer(args.base64) if args.endpoint == "embeddings" else ANSWER
        if args.stream:
            serve_answers(args.serve_answers, STREAM, b"text/event-stream")
            return
        serve_answers(args.serve_answers, answer)
        return
    if args.config is None:
        name = "embeddings-bench.yaml" if args.endpoint == "embeddings" else "spillway-bench.yaml"
        args.config = HERE / name
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(
        run(
            args.config,
            args.requests,
            args.profile,
            args.upstream,
            args.rounds,
            args.marks,
            args.endpoint,
            args.base64,
            args.stream,
        )
    )


if __name__ == "__main__":
    main()
