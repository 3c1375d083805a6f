"""SSE relay on bytes: buffers split anywhere, model swapped, usage found."""

from __future__ import annotations

import random

import orjson

from router.streaming import DONE, SSERelay, event


def stream(model: str, n: int, usage: bool, openai_style_nulls: bool = False) -> bytes:
    out = b""
    for i in range(n):
        chunk = {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": f" t{i}"}, "finish_reason": None}],
        }
        if openai_style_nulls:
            chunk["usage"] = None
        out += event(chunk)  # fmt: skip
    if usage:
        out += event({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": model,
                      "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": n,
                                               "total_tokens": 5 + n}})  # fmt: skip
    return out + DONE


def relay_in_pieces(data: bytes, relay: SSERelay, seed: int) -> bytes:
    rng = random.Random(seed)
    out = b""
    i = 0
    while i < len(data):
        step = rng.randint(1, 40)
        out += relay.feed(data[i : i + step])
        i += step
    return out + relay.flush()


def test_model_swapped_usage_read_and_dropped_in_any_split() -> None:
    data = stream("meta-llama/Llama-3.1-8B", 30, usage=True)
    expected = stream("chat", 30, usage=False)
    for seed in range(20):
        relay = SSERelay("meta-llama/Llama-3.1-8B", "chat", keep_usage=False)
        assert relay_in_pieces(data, relay, seed) == expected
        assert relay.usage == {"prompt_tokens": 5, "completion_tokens": 30, "total_tokens": 35}
        assert relay.events == 31  # 30 chunks and the usage chunk carry a model


def test_usage_kept_when_asked_and_nulls_ignored() -> None:
    data = stream("m", 5, usage=True, openai_style_nulls=True)
    relay = SSERelay("m", "m", keep_usage=True)
    assert relay_in_pieces(data, relay, 1) == data
    assert relay.usage is not None and relay.usage["completion_tokens"] == 5


def test_no_usage_counts_events() -> None:
    relay = SSERelay("m", "m", keep_usage=False)
    relay_in_pieces(stream("m", 7, usage=False), relay, 3)
    assert relay.usage is None
    assert relay.events == 8


def test_continuous_usage_takes_the_last() -> None:
    data = b""
    for i in range(1, 4):
        data += event({"model": "m", "choices": [{"index": 0, "delta": {"content": "x"}}],
                       "usage": {"prompt_tokens": 2, "completion_tokens": i}})  # fmt: skip
    relay = SSERelay("m", "m", keep_usage=False)
    out = relay.feed(data)
    assert out == data  # chunks with choices are never dropped
    assert relay.usage == {"prompt_tokens": 2, "completion_tokens": 3}
    assert orjson.loads(out.split(b"\n\n")[0][6:])["usage"]["completion_tokens"] == 1


def test_usage_dropped_from_whole_buffers_swapped_or_not() -> None:
    """The usage chunk is cut out of a buffer of many events (with a model swap, from
    the split pieces; without one, from the buffer), whatever else is around it."""
    usage = {"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45}
    tail = event({"id": "x", "choices": [], "usage": usage}) + DONE  # no model in it
    cases = [
        (stream("backend", 40, usage=True), stream("chat", 40, usage=False), 41),
        (stream("backend", 40, False)[: -len(DONE)] + tail, stream("chat", 40, False), 40),
    ]  # fmt: skip
    for data, expected, events in cases:
        for to, want in (
            ("chat", expected),
            ("backend", expected.replace(b'"chat"', b'"backend"')),
        ):
            for size in (len(data), 1000, 333):
                relay = SSERelay("backend", to, keep_usage=False)
                out = b"".join(relay.feed(data[i : i + size]) for i in range(0, len(data), size))
                assert out + relay.flush() == want, (to, size)
                assert relay.usage == usage
                if to == "chat":
                    assert relay.events == events
