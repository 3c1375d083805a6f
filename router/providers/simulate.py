"""The simulated model: deterministic, in-process, no GPU and no network.

It honours ``max_tokens``/``max_completion_tokens``, ``stop`` (and
``include_stop_str_in_output``), ``n``, ``stream`` with
``stream_options.include_usage``, and tool calls: given tools (and a
``tool_choice`` other than ``none``) and a conversation that does not end in a
tool result, it calls the named or first function with arguments built from
the function's JSON schema. Knobs (per backend, or ``spillway simulate``):
time to first token, tokens per second, failure rate and failure status, and
the engine's batch size and prefix cache (:mod:`router.providers.simengine`).

The same generator serves the standalone OpenAI-compatible server in
:mod:`router.simserver`; :mod:`router.providers.simulated` is the backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.config import SimulateSettings
from router.contract import ChatCompletionRequest, FunctionTool, NamedToolChoice, TextPart
from router.providers.simengine import Prompts, SimEngine
from router.streaming import DONE, event

_WORDS = (
    "the river runs past the dam and over the spillway while engineers watch gauges "
    "rise and fall as the night shift logs every reading twice before dawn brings "
    "calm water light rain and a quiet hum from the turbines below the old stone wall"
).split()


@dataclass(slots=True)
class SimChoice:
    tokens: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def completion_tokens(self) -> int:
        if self.tool_calls:
            return sum(max(1, len(tc["function"]["arguments"]) // 4) for tc in self.tool_calls)
        return len(self.tokens)


@dataclass(slots=True)
class Generation:
    id: str
    created: int
    prompt_tokens: int
    choices: list[SimChoice]

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens() for c in self.choices)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def _texts(req: ChatCompletionRequest) -> list[str]:
    out: list[str] = []
    for msg in req.messages:
        content = getattr(msg, "content", None)
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(p.text for p in content if isinstance(p, TextPart))
    return out


def count_prompt_tokens(req: ChatCompletionRequest) -> int:
    """Whitespace-separated words plus three per message (a chat template)."""
    return sum(len(t.split()) for t in _texts(req)) + 3 * len(req.messages)


def _schema_value(schema: Any, name: str) -> Any:
    if not isinstance(schema, dict):
        return name
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    kind = str(kind)
    if kind == "object":
        props = schema.get("properties") or {}
        required = schema.get("required") or list(props)
        return {k: _schema_value(props.get(k), k) for k in required}
    return {
        "integer": 1, "number": 1.5, "boolean": True, "array": [], "null": None,
    }.get(kind, f"{name}-value")  # fmt: skip


def _tool_calls(req: ChatCompletionRequest, digest: bytes) -> list[dict[str, Any]]:
    functions = [t.function for t in req.tools or () if isinstance(t, FunctionTool)]
    if not functions or req.tool_choice == "none" or req.messages[-1].role == "tool":
        return []
    chosen = functions[0]
    if isinstance(req.tool_choice, NamedToolChoice):
        chosen = next(f for f in functions if f.name == req.tool_choice.function.name)
    args = _schema_value(chosen.parameters or {"type": "object"}, chosen.name)
    return [
        {
            "id": "call_" + digest[:12].hex(),
            "type": "function",
            "function": {"name": chosen.name, "arguments": orjson.dumps(args).decode()},
        }
    ]


def generate(req: ChatCompletionRequest, default_max_tokens: int = 256) -> Generation:
    """The deterministic answer to ``req`` (same request, same answer)."""
    gen = generate_text(
        _texts(req), req.seed, req.output_limit() or default_max_tokens,
        [req.stop] if isinstance(req.stop, str) else list(req.stop or ()), req.n or 1,
        include_stop=bool(req.include_stop_str_in_output), prefix="chatcmpl-sim",
    )  # fmt: skip
    gen.prompt_tokens = count_prompt_tokens(req)
    digest = hashlib.sha256(("\x1f".join(_texts(req)) + f"\x1f{req.seed}").encode()).digest()
    calls = _tool_calls(req, digest)
    if calls:
        gen.choices = [SimChoice(tool_calls=calls, finish_reason="tool_calls") for _ in gen.choices]
    return gen


def generate_text(
    texts: list[str], seed: int | None, limit: int, stops: list[str], n: int,
    *, include_stop: bool = False, prefix: str = "cmpl-sim",
) -> Generation:  # fmt: skip
    """``n`` deterministic texts for a prompt (same prompt and seed, same texts);
    ``prompt_tokens`` counts whitespace-separated words."""
    digest = hashlib.sha256(("\x1f".join(texts) + f"\x1f{seed}").encode()).digest()
    choices: list[SimChoice] = []
    for index in range(n):
        rng = random.Random(digest + bytes([index % 256]))
        natural = 12 + rng.randrange(36)
        choice = SimChoice()
        text = ""
        for i in range(min(natural, limit)):
            word = _WORDS[rng.randrange(len(_WORDS))]
            token = (word if i == 0 else " " + word) + ("." if i == natural - 1 else "")
            hit = _first_stop(text + token, stops)
            if hit is not None:
                end = hit[0] + (len(hit[1]) if include_stop else 0)
                rest = (text + token)[len(text) : end]
                if rest:
                    choice.tokens.append(rest)
                choice.finish_reason = "stop"
                break
            choice.tokens.append(token)
            text += token
        else:
            choice.finish_reason = "length" if natural > limit else "stop"
        choices.append(choice)
    return Generation(
        id=prefix + digest[:10].hex(),
        created=int(time.time()),
        prompt_tokens=sum(len(t.split()) for t in texts),
        choices=choices,
    )


async def first_token(knobs: SimulateSettings, seconds: float | None) -> None:
    """Wait for the first token: ``seconds``, else the knobs' ``ttft_ms``."""
    ttft = knobs.ttft_ms / 1000 if seconds is None else seconds
    if ttft > 0:
        await asyncio.sleep(ttft)


def _first_stop(text: str, stops: list[str]) -> tuple[int, str] | None:
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best


def completion_body(gen: Generation, model: str) -> bytes:
    choices = []
    for i, c in enumerate(gen.choices):
        message: dict[str, Any] = {"role": "assistant", "content": c.text or None}
        if c.tool_calls:
            message["tool_calls"] = c.tool_calls
        choices.append(
            {"index": i, "message": message, "logprobs": None, "finish_reason": c.finish_reason}
        )
    return orjson.dumps(
        {
            "id": gen.id,
            "object": "chat.completion",
            "created": gen.created,
            "model": model,
            "choices": choices,
            "usage": gen.usage(),
        }
    )


async def stream_events(
    gen: Generation,
    model: str,
    include_usage: bool,
    knobs: SimulateSettings,
    first_token_seconds: float | None = None,
) -> AsyncIterator[bytes]:
    """The answer as OpenAI SSE events, paced by the knobs (the first token after
    ``first_token_seconds``, else ``ttft_ms``)."""
    base = {"id": gen.id, "object": "chat.completion.chunk", "created": gen.created, "model": model}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return event(
            {**base, "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            ]}
        )  # fmt: skip

    gap = 1.0 / knobs.tokens_per_second if knobs.tokens_per_second > 0 else 0.0
    for i, _ in enumerate(gen.choices):
        yield chunk(i, {"role": "assistant", "content": ""})
    await first_token(knobs, first_token_seconds)
    for i, c in enumerate(gen.choices):
        for k, tc in enumerate(c.tool_calls):
            yield chunk(i, {"tool_calls": [{"index": k, "id": tc["id"], "type": "function",
                                            "function": {"name": tc["function"]["name"],
                                                         "arguments": ""}}]})  # fmt: skip
            args = tc["function"]["arguments"]
            for start in range(0, len(args), 8):
                yield chunk(
                    i,
                    {
                        "tool_calls": [
                            {"index": k, "function": {"arguments": args[start : start + 8]}}
                        ]
                    },
                )
        for j, token in enumerate(c.tokens):
            if gap and j:
                await asyncio.sleep(gap)
            yield chunk(i, {"content": token})
        yield chunk(i, {}, c.finish_reason)
    if include_usage:
        yield event({**base, "choices": [], "usage": gen.usage()})
    yield DONE


def answer_seconds(gen: Generation, knobs: SimulateSettings, first_token: float) -> float:
    """How long a whole (non-streamed) answer takes."""
    if knobs.tokens_per_second > 0:
        return first_token + gen.completion_tokens / knobs.tokens_per_second
    return first_token


async def engine_read(engine: SimEngine, prompts: Prompts, gen: Generation) -> None:
    """Take a place in the engine's batch and spend the time of a whole answer."""
    async with engine.slot():
        delay = answer_seconds(gen, engine.knobs, engine.first_token_seconds(prompts))
        if delay > 0:
            await asyncio.sleep(delay)


async def engine_stream(
    engine: SimEngine, prompts: Prompts, events: Callable[[float], AsyncIterator[bytes]]
) -> AsyncIterator[bytes]:
    """The answer's SSE events (``events``, given the time to the first token),
    generated in a place of the engine's batch."""
    async with engine.slot():
        ttft = engine.first_token_seconds(prompts)
        async for data in events(ttft):
            yield data
