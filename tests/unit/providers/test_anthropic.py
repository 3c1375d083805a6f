"""Anthropic answers -> OpenAI: recorded wire fixtures through the translator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.config import Backend
from router.contract import ChatCompletionRequest
from router.errors import InvalidRequest, UpstreamError, UpstreamStatus
from router.providers.anthropic import (
    AnthropicAdapter,
    AnthropicBackend,
    AnthropicStream,
    anthropic_status_error,
)
from router.providers.base import Call
from tests.support.anthropic_types import validate_event, validate_message
from tests.support.schema import validate
from tests.unit.providers.helpers import make_call

FIXTURES = Path(__file__).parent.parent.parent / "fixtures" / "anthropic"


def fixture_json(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def fixture_sse(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sse_events(data: bytes) -> list[Any]:
    """``data:`` payloads of an SSE byte stream, parsed (``[DONE]`` kept as a string)."""
    out: list[Any] = []
    for line in data.split(b"\n"):
        if line.startswith(b"data: "):
            payload = line[6:]
            out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


def run_stream(data: bytes, piece: int, keep_usage: bool = False) -> tuple[bytes, AnthropicStream]:
    stream = AnthropicStream("chat", keep_usage, "claude", "chatcmpl-fallback")
    out = b"".join(stream.feed(data[i : i + piece]) for i in range(0, len(data), piece))
    return out + stream.finish(), stream


def adapter() -> AnthropicAdapter:
    backend = AnthropicBackend("claude", Backend(provider="anthropic"), None)  # type: ignore[arg-type]
    return AnthropicAdapter(
        backend,
        make_call(
            {"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
            member_model="claude-sonnet-4-5",
        ),
    )


async def test_an_integer_beyond_64_bits_in_a_tool_schema_is_a_400() -> None:
    backend = AnthropicBackend("claude", Backend(provider="anthropic"), None)  # type: ignore[arg-type]
    schema = {"type": "object", "properties": {"a": {"type": "integer", "maximum": 10**25}}}
    raw = json.dumps({
        "model": "chat", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
    }).encode()  # fmt: skip
    request = ChatCompletionRequest.model_validate_json(raw)
    call = Call(
        request=request, raw=raw, client_model="chat", member_model="claude", max_tokens=None,
        clamped=False, default_max_tokens=64, request_id="r", forward_headers={},
    )  # fmt: skip
    with pytest.raises(InvalidRequest) as err:
        await AnthropicAdapter(backend, call).open()
    assert err.value.status == 400 and err.value.code == "invalid_number"


def test_fixtures_are_what_the_sdk_parses() -> None:
    for name in ("message_text.json", "message_tool_use.json"):
        validate_message(fixture_json(name)["body"])
    for name in ("stream_text.sse", "stream_tool_use.sse", "stream_error.sse"):
        for doc in sse_events(fixture_sse(name)):
            if doc["type"] not in ("ping", "error"):
                validate_event(doc)


# ------------------------------------------------------------------------ non-streamed


def test_text_message() -> None:
    a = adapter()
    doc = orjson.loads(a.transform_body(orjson.dumps(fixture_json("message_text.json")["body"])))
    validate("CreateChatCompletionResponse", doc)
    assert doc["id"] == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert doc["model"] == "chat"
    assert doc["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hi! My name is Claude.",
        "refusal": None,
    }
    assert doc["choices"][0]["finish_reason"] == "stop"
    assert doc["usage"] == {
        "prompt_tokens": 3895,
        "completion_tokens": 503,
        "total_tokens": 4398,
        "prompt_tokens_details": {"cached_tokens": 1800, "cache_write_tokens": 0},
    }
    assert a.usage is not None
    assert (a.usage.prompt_tokens, a.usage.completion_tokens, a.usage.cached_tokens) == (
        3895,
        503,
        1800,
    )
    assert a.usage.reported


def test_tool_use_message() -> None:
    a = adapter()
    doc = orjson.loads(
        a.transform_body(orjson.dumps(fixture_json("message_tool_use.json")["body"]))
    )
    validate("CreateChatCompletionResponse", doc)
    choice = doc["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert (
        choice["message"]["content"] == "I'll check the current weather in San Francisco for you."
    )
    (call,) = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_01A09q90qw90lq917835lq9"
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {
        "location": "San Francisco, CA",
        "unit": "celsius",
    }
    assert doc["usage"]["prompt_tokens"] == 384 and doc["usage"]["completion_tokens"] == 91


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
        ("pause_turn", "stop"),
    ],
)
def test_stop_reasons(stop_reason: str, finish: str) -> None:
    body = {**fixture_json("message_text.json")["body"], "stop_reason": stop_reason}
    doc = orjson.loads(adapter().transform_body(orjson.dumps(body)))
    assert doc["choices"][0]["finish_reason"] == finish


def test_thinking_becomes_reasoning_and_tool_only_answer_has_null_content() -> None:
    body = {
        **fixture_json("message_tool_use.json")["body"],
        "content": [
            {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig=="},
            {"type": "tool_use", "id": "toolu_x", "name": "get_weather", "input": {}},
        ],
    }
    msg = orjson.loads(adapter().transform_body(orjson.dumps(body)))["choices"][0]["message"]
    assert msg["content"] is None
    assert msg["reasoning"] == "The user wants weather."
    assert msg["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"type":"message"}',
        b'{"content":[],"stop_reason":["x"]}',
    ],
)
def test_unusable_bodies_are_a_502(body: bytes) -> None:
    with pytest.raises(UpstreamError) as err:
        adapter().transform_body(body)
    assert err.value.status == 502


# ---------------------------------------------------------------------------- streams


@pytest.mark.parametrize("piece", [1, 7, 64, 1 << 20])
def test_text_stream_any_split(piece: int) -> None:
    out, stream = run_stream(fixture_sse("stream_text.sse"), piece)
    events = sse_events(out)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
        assert c["model"] == "chat"
        assert c["id"] == "msg_01XFDUDYJgAACzvnptvVoYEL"
        assert c["object"] == "chat.completion.chunk"
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in deltas) == 'Hello, "world"!\n'
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all("usage" not in c for c in chunks)  # the client did not ask for it
    usage = stream.usage_so_far()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reported) == (25, 15, True)


def test_usage_chunk_only_when_asked() -> None:
    out, _ = run_stream(fixture_sse("stream_tool_use.sse"), 100, keep_usage=True)
    events = sse_events(out)
    assert events[-1] == "[DONE]"
    last = events[-2]
    validate("CreateChatCompletionStreamResponse", last)
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": 622,
        "completion_tokens": 89,
        "total_tokens": 711,
        "prompt_tokens_details": {"cached_tokens": 50, "cache_write_tokens": 100},
    }


def test_tool_call_stream() -> None:
    out, stream = run_stream(fixture_sse("stream_tool_use.sse"), 13)
    chunks = sse_events(out)[:-1]
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"][0]["delta"].get("tool_calls")
    ]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    fragments = [c["function"]["arguments"] for c in calls[1:] if c["index"] == 0]
    assert fragments == ['{"location":', ' "San Fra', 'ncisco, CA"}']  # the empty one dropped
    assert json.loads("".join(fragments)) == {"location": "San Francisco, CA"}
    second = [c for c in calls if c["index"] == 1]
    assert second[0]["id"] == "toolu_02NoInputAtAll0000000000"
    assert second[0]["function"]["name"] == "get_time"
    assert "".join(c["function"]["arguments"] for c in second) == "{}"  # a call without input
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Okay, let me check."
    usage = stream.usage_so_far()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (622, 89, 50)


def test_tool_arguments_are_relayed_as_they_arrive() -> None:
    stream = AnthropicStream("chat", False, "claude", "x")
    for block in fixture_sse("stream_tool_use.sse").split(b"\n\n"):
        out = stream.feed(block + b"\n\n")
        if b'"partial_json":"{\\"location\\":"' in block:
            assert sse_events(out)[0]["choices"][0]["delta"]["tool_calls"] == [
                {"index": 0, "function": {"arguments": '{"location":'}}
            ]
            return
    raise AssertionError("fragment not found")


def test_error_event_mid_stream() -> None:
    data = fixture_sse("stream_error.sse")
    stream = AnthropicStream("chat", True, "claude", "x")
    out = stream.feed(data)  # what came before the error is still relayed
    texts = [c["choices"][0]["delta"].get("content") for c in sse_events(out)]
    assert texts == ["", "Partial answer that goes on"]
    with pytest.raises(UpstreamStatus) as err:
        stream.finish()
    exc = err.value
    assert (exc.status, exc.code, exc.message, exc.retryable) == (
        503,
        "overloaded_error",
        "Overloaded",
        True,
    )
    assert exc.envelope()["error"]["type"] == "api_error"
    usage = stream.usage_so_far()
    assert usage.prompt_tokens == 12 and usage.completion_tokens >= 6 and usage.reported


def test_error_event_alone_raises_at_once() -> None:
    stream = AnthropicStream("chat", False, "claude", "x")
    stream.feed(fixture_sse("stream_text.sse").split(b"event: content_block_start")[0])
    with pytest.raises(UpstreamStatus) as err:
        stream.feed(
            b'event: error\ndata: {"type":"error","error":{"type":"api_error",'
            b'"message":"Internal server error"}}\n\n'
        )
    assert err.value.status == 500 and err.value.retryable


def test_stream_cut_short_is_an_error_with_estimated_usage() -> None:
    data = fixture_sse("stream_text.sse")
    cut = data.index(b"event: content_block_stop")
    stream = AnthropicStream("chat", False, "claude", "x")
    out = stream.feed(data[:cut])
    assert b"[DONE]" not in out
    usage = stream.usage_so_far()
    assert usage.prompt_tokens == 25 and usage.completion_tokens == 4  # 15 chars / 4
    with pytest.raises(UpstreamError, match="ended before message_stop"):
        stream.finish()


def test_crlf_line_endings() -> None:
    data = fixture_sse("stream_text.sse").replace(b"\n", b"\r\n")
    out, _ = run_stream(data, 5)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in sse_events(out)[:-1])
    assert text == 'Hello, "world"!\n'


# ----------------------------------------------------------------------------- errors


EXPECTED = {
    400: (400, "invalid_request_error", False),
    401: (401, "invalid_request_error", False),
    403: (403, "invalid_request_error", False),
    404: (404, "invalid_request_error", False),
    429: (429, "invalid_request_error", True),
    500: (500, "api_error", True),
    529: (503, "api_error", True),
}


@pytest.mark.parametrize(
    "case", fixture_json("errors.json")["errors"], ids=lambda c: str(c["status"])
)
def test_error_bodies(case: dict[str, Any]) -> None:
    exc = anthropic_status_error(
        case["status"], orjson.dumps(case["body"]), retry_after=3.0, backend="backend 'claude'"
    )
    status, etype, retryable = EXPECTED[case["status"]]
    assert exc.status == status
    assert exc.retryable is retryable
    assert exc.retry_after == 3.0
    env = exc.envelope()["error"]
    assert env == {
        "message": case["body"]["error"]["message"],
        "type": etype,
        "param": None,
        "code": case["body"]["error"]["type"],
    }
    validate("ErrorResponse", exc.envelope())


def test_error_body_that_is_not_anthropics() -> None:
    exc = anthropic_status_error(529, b"<html>overloaded</html>", backend="backend 'claude'")
    assert exc.status == 503 and exc.code == "overloaded_error" and exc.retryable
    exc = anthropic_status_error(502, b"", backend="backend 'claude'")
    assert exc.status == 502 and "backend 'claude'" in exc.message


@pytest.mark.parametrize(
    "event",
    [b"data: [1, 2]\n\n", b'data: {"type":"content_block_delta","delta":"x"}\n\n', b"data: {\n\n"],
)
def test_unreadable_events_end_the_stream_with_an_error(event: bytes) -> None:
    stream = AnthropicStream("chat", False, "claude", "x")
    with pytest.raises(UpstreamError, match="unreadable event") as err:
        stream.feed(event)
    assert err.value.status == 502
