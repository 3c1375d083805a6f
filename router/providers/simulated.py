"""The simulated backend (``provider: simulate``): chat completions, completions
and embeddings, in-process and deterministic.

Completions are generated like chat answers from each prompt (and ``suffix``),
``n`` per prompt, with ``echo``; embeddings are unit vectors derived from a
hash of each input (``dimensions`` of them, 16 by default), as floats or
base64. Usage counts whitespace-separated words (token ids one each).

Every endpoint goes through the backend's :class:`SimEngine`: a request waits
for a place in its batch (``max_num_seqs``), and its time to first token
shrinks with the share of its prompts (chat messages, completions prompts,
embeddings inputs) found in the prefix cache.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import random
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from router.config import Backend, SimulateSettings
from router.contract import ChatCompletionRequest
from router.egress import Egress
from router.errors import UpstreamStatus
from router.inbound.contracts import CompletionRequest, EmbeddingRequest
from router.providers.base import Call, Opened, Usage
from router.providers.simengine import Prompts, SimEngine, prompt_tokens
from router.providers.simulate import (
    Generation,
    completion_body,
    engine_read,
    engine_stream,
    first_token,
    generate,
    generate_text,
    stream_events,
)
from router.serving import PROVIDER_APIS
from router.streaming import DONE, event

DEFAULT_DIMENSIONS = 16


Events = Callable[[float], AsyncIterator[bytes]]  # the stream, given the first token's time


class _SimOpened:
    __slots__ = ("_body", "_call", "_engine", "_events", "_gen", "_prompts")

    def __init__(
        self, call: Call, gen: Generation, engine: SimEngine, prompts: Prompts,
        body: Callable[[], bytes], events: Events,
    ) -> None:  # fmt: skip
        self._call, self._gen, self._engine, self._prompts = call, gen, engine, prompts
        self._body, self._events = body, events

    @property
    def is_stream(self) -> bool:
        return self._call.stream

    async def read(self) -> bytes:
        await engine_read(self._engine, self._prompts, self._gen)
        return self._body()

    def chunks(self) -> AsyncIterator[bytes]:
        return engine_stream(self._engine, self._prompts, self._events)

    def close(self) -> None:
        return None


class SimulateBackend:
    provider = "simulate"
    apis = PROVIDER_APIS["simulate"]

    def __init__(self, name: str, cfg: Backend) -> None:
        self.name = name
        self.cfg = cfg
        self.egress: Egress | None = None  # in-process: no HTTP
        self.secrets: tuple[str, ...] = ()
        self._rng = random.Random(cfg.simulate.seed)
        self.engine = SimEngine(cfg.simulate)

    def refresh_credentials(self, now: float, *, force: bool = False) -> bool:
        return False

    def probe_headers(self) -> dict[str, str]:
        return {}

    def should_fail(self) -> bool:
        rate = self.cfg.simulate.failure_rate
        return rate > 0 and self._rng.random() < rate

    def adapter(self, call: Call) -> SimulateAdapter:
        return SimulateAdapter(self, call)


class SimulateAdapter:
    __slots__ = ("_backend", "_call", "_gen", "usage")

    def __init__(self, backend: SimulateBackend, call: Call) -> None:
        self._backend, self._call = backend, call
        self._gen: Generation | None = None
        self.usage: Usage | None = None

    async def open(self) -> Opened:
        be, call = self._backend, self._call
        if be.should_fail():
            status = be.cfg.simulate.failure_status
            raise UpstreamStatus(
                status, f"Simulated failure of backend {be.name!r} (HTTP {status})."
            )
        engine, model, req = be.engine, call.client_model, call.request
        knobs = engine.knobs
        if isinstance(req, EmbeddingRequest):
            gen, vectors = embed(req)
            self._gen = gen
            return _SimOpened(
                call, gen, engine, lambda: input_tokens(req),
                lambda: embeddings_body(req, vectors, gen, model), _no_stream,
            )  # fmt: skip
        if isinstance(req, CompletionRequest):
            gen, echoes = complete(req, call.max_tokens, call.default_max_tokens)
            self._gen = gen
            return _SimOpened(
                call, gen, engine, lambda: completion_prompt_tokens(req),
                lambda: text_completion_body(gen, echoes, model),
                lambda ttft: text_completion_events(gen, model, call.wants_usage, knobs, ttft),
            )  # fmt: skip
        chat: ChatCompletionRequest = call.chat
        if call.max_tokens is not None:
            chat = chat.model_copy(
                update={"max_tokens": call.max_tokens, "max_completion_tokens": None}
            )
        chat_gen = self._gen = generate(chat, call.default_max_tokens)
        return _SimOpened(
            call, chat_gen, engine, lambda: [prompt_tokens(chat)],
            lambda: completion_body(chat_gen, model),
            lambda ttft: stream_events(chat_gen, model, call.wants_usage, knobs, ttft),
        )  # fmt: skip

    def _usage(self) -> Usage:
        assert self._gen is not None
        return Usage(self._gen.prompt_tokens, self._gen.completion_tokens)

    def transform_body(self, body: bytes) -> bytes:
        self.usage = self._usage()
        return body

    def transform_chunk(self, data: bytes) -> bytes:
        return data

    def finish_stream(self) -> bytes:
        self.usage = self._usage()
        return b""

    def stream_usage_so_far(self) -> Usage | None:
        return self._usage() if self._gen is not None else None


async def _no_stream(_ttft: float) -> AsyncIterator[bytes]:
    yield b""  # pragma: no cover - embeddings are never streamed


# ----------------------------------------------------------------------- completions


def _prompt_texts(req: CompletionRequest) -> tuple[list[str], int]:
    """The prompts as text, and their token count (words; token ids one each)."""
    prompt = req.prompt or ""
    if isinstance(prompt, str):
        return [prompt], len(prompt.split())
    if isinstance(prompt[0], int):
        return [" ".join(map(str, prompt))], len(prompt)
    texts: list[str] = []
    tokens = 0
    for p in prompt:
        if isinstance(p, str):
            texts.append(p)
            tokens += len(p.split())
        else:
            texts.append(" ".join(map(str, p)))
            tokens += len(p)
    return texts, tokens


def complete(req: CompletionRequest, cap: int | None, default: int) -> tuple[Generation, list[str]]:
    """``n`` choices per prompt (in prompt order), and the text echoed before each."""
    texts, tokens = _prompt_texts(req)
    limit = cap if cap is not None else req.output_limit() or default
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or ())
    n = req.n or 1
    gen: Generation | None = None
    echoes: list[str] = []
    for text in texts:
        one = generate_text(
            [text, req.suffix or ""], req.seed, limit, stops, n,
            include_stop=bool(req.include_stop_str_in_output),
        )  # fmt: skip
        echoes += [text if req.echo else ""] * n
        if gen is None:
            gen = one
        else:
            gen.choices += one.choices
    assert gen is not None
    gen.prompt_tokens = tokens + len((req.suffix or "").split())
    return gen, echoes


def completion_prompt_tokens(req: CompletionRequest) -> list[list[str]]:
    """Each prompt as the engine prefills it: its words (token ids one each), then
    the words of ``suffix``."""
    suffix = (req.suffix or "").split()
    return [text.split() + suffix for text in _prompt_texts(req)[0]]


def text_completion_body(gen: Generation, echoes: list[str], model: str) -> bytes:
    choices = [
        {"index": i, "text": echoes[i] + c.text, "logprobs": None,
         "finish_reason": c.finish_reason}
        for i, c in enumerate(gen.choices)
    ]  # fmt: skip
    return orjson.dumps(
        {"id": gen.id, "object": "text_completion", "created": gen.created, "model": model,
         "choices": choices, "usage": gen.usage()}
    )  # fmt: skip


async def text_completion_events(
    gen: Generation,
    model: str,
    include_usage: bool,
    knobs: SimulateSettings,
    first_token_seconds: float | None = None,
) -> AsyncIterator[bytes]:
    base = {"id": gen.id, "object": "text_completion", "created": gen.created, "model": model}

    def chunk(index: int, text: str, finish: str | None = None) -> bytes:
        return event({**base, "choices": [
            {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        ]})  # fmt: skip

    gap = 1.0 / knobs.tokens_per_second if knobs.tokens_per_second > 0 else 0.0
    await first_token(knobs, first_token_seconds)
    for i, c in enumerate(gen.choices):
        for j, token in enumerate(c.tokens):
            if gap and j:
                await asyncio.sleep(gap)
            yield chunk(i, token)
        yield chunk(i, "", c.finish_reason)
    if include_usage:
        yield event({**base, "choices": [], "usage": gen.usage()})
    yield DONE


# ------------------------------------------------------------------------ embeddings


def _vector(text: str, dimensions: int) -> list[float]:
    """A unit vector from a hash of ``text`` (the same text, the same vector)."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}\x1f{text}".encode()).digest()
        values += [b / 127.5 - 1.0 for b in digest]
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def _inputs(texts: list[str], ids: list[list[int]]) -> list[str]:
    """Each input as text (token ids joined by spaces)."""
    return texts + [" ".join(map(str, i)) for i in ids]


def input_tokens(req: EmbeddingRequest) -> list[list[str]]:
    """Each input as the engine prefills it: its words (token ids one each)."""
    return [text.split() for text in _inputs(*req.split())]


def embed(req: EmbeddingRequest) -> tuple[Generation, list[list[float]]]:
    texts, ids = req.split()
    dims = req.dimensions or DEFAULT_DIMENSIONS
    inputs = _inputs(texts, ids)
    tokens = sum(len(t.split()) for t in texts) + sum(len(i) for i in ids)
    gen = Generation(id="embd-sim", created=int(time.time()), prompt_tokens=tokens, choices=[])
    return gen, [_vector(text, dims) for text in inputs]


def embeddings_body(
    req: EmbeddingRequest, vectors: list[list[float]], gen: Generation, model: str
) -> bytes:
    data: list[dict[str, Any]] = []
    for i, vector in enumerate(vectors):
        value: list[float] | str = vector
        if req.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    usage = {"prompt_tokens": gen.prompt_tokens, "total_tokens": gen.prompt_tokens}
    return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})
