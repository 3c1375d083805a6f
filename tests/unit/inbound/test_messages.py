"""The Messages codec's pieces: request translation to chat, the answer and stream
translation back (checked against the anthropic SDK's own types), the error envelope,
the native stream relay and the prompt bound."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from router.errors import (
    InvalidRequest,
    QuotaExceeded,
    ServiceUnavailable,
    UpstreamError,
    UpstreamStatus,
)
from router.inbound.messages import MessagesCodec, error_envelope
from router.inbound.messages_bridge import ChatToMessages, to_chat
from router.inbound.messages_contract import MessagesRequest
from router.providers.anthropic_native import NativeStream, unsigned_thinking_dropped
from router.quota.tokens import IMAGE_TOKENS
from tests.support.anthropic_types import validate_event, validate_message

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
    "AAAABJRU5ErkJggg=="
)


def request(**fields: Any) -> MessagesRequest:
    doc = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    return MessagesRequest.model_validate(doc | fields)


def test_a_tool_conversation_becomes_chat_messages() -> None:
    req = request(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "plan", "signature": "sig"},
                {"type": "text", "text": "Calling."},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                {"type": "tool_use", "id": "t2", "name": "f", "input": {"a": 2}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "one"},
                {"type": "tool_result", "tool_use_id": "t2", "is_error": True, "content": [
                    {"type": "text", "text": "bad"},
                    {"type": "image", "source": {"type": "url", "url": "https://x/i.png"}}]},
                {"type": "text", "text": "go on"}]},
        ],
        tools=[{"name": "f", "input_schema": {"type": "object"}},
               {"name": "later", "input_schema": {"type": "object"}, "defer_loading": True}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["END"], temperature=0.2, top_k=5, metadata={"user_id": "u1"},
        thinking={"type": "enabled", "budget_tokens": 2048}, stream=True,
        context_management={"edits": []},
    )  # fmt: skip
    body = to_chat(req)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
        {"role": "assistant", "content": "Calling.", "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
            {"id": "t2", "type": "function", "function": {"name": "f", "arguments": '{"a":2}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "one"},
        {"role": "tool", "tool_call_id": "t2", "content": "[error] bad"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/i.png"}},
            {"type": "text", "text": "go on"}]},
    ]  # fmt: skip
    assert body["tools"] == [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object"}}}]  # fmt: skip
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert (body["stop"], body["temperature"], body["top_k"]) == (["END"], 0.2, 5)
    assert body["user"] == "u1" and body["stream"] is True and body["max_tokens"] == 100
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["thinking_token_budget"] == 2048
    assert "context_management" not in body


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {
            "type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]}]},
         "messages[0].content[0].source"),
        ({"messages": [{"role": "user", "content": [{"type": "search_result", "source": "s",
                                                     "title": "t", "content": []}]}]},
         "messages[0].content[0].type"),
        ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, "mcp_servers"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"brand_new_option": 1}, "brand_new_option"),
    ],
)  # fmt: skip
def test_what_chat_cannot_carry_is_a_400(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        to_chat(request(**fields))
    assert err.value.param == param
    assert err.value.status == 400


def test_a_text_document_is_text() -> None:
    req = request(messages=[{"role": "user", "content": [
        {"type": "document", "title": "Notes", "source": {
            "type": "text", "media_type": "text/plain", "data": "dams"}}]}])  # fmt: skip
    assert to_chat(req)["messages"] == [{"role": "user", "content": "Notes\n\ndams"}]


def test_a_chat_completion_becomes_a_message() -> None:
    chat = {"id": "chatcmpl-abc", "object": "chat.completion", "model": "m", "choices": [{
        "index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me check.", "reasoning": "think",
            "tool_calls": [{"id": "c1", "type": "function", "function": {
                "name": "f", "arguments": '{"x": 1}'}}]}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 7,
                  "prompt_tokens_details": {"cached_tokens": 10}}}  # fmt: skip
    doc = orjson.loads(ChatToMessages("client-model", ()).body(orjson.dumps(chat)))
    msg = validate_message(doc)
    assert msg.id == "msg_abc" and msg.model == "client-model"
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use"]
    assert msg.content[2].input == {"x": 1}  # type: ignore[union-attr]
    assert msg.stop_reason == "tool_use"
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens) == (20, 10)
    assert msg.usage.output_tokens == 7


def sse(*docs: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(d) + b"\n\n" for d in docs)


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-s", "model": "m", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip


def events(data: bytes) -> list[dict[str, Any]]:
    out = []
    for block in data.split(b"\n\n"):
        if block:
            kind, payload = block.split(b"\n")
            doc = orjson.loads(payload.removeprefix(b"data: "))
            assert kind == b"event: " + doc["type"].encode()
            out.append(doc)
    return out


def test_a_stream_keeps_the_event_order_and_each_block() -> None:
    t = ChatToMessages("client-model", ("STOP",))
    out = t.chunk(sse(chunk({"role": "assistant", "content": ""}), chunk({"reasoning": "hm"})))
    out += t.chunk(sse(chunk({"content": "Hi"}), chunk({"content": " there"})))
    out += t.chunk(sse(
        chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                               "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "c2", "type": "function",
                               "function": {"name": "g", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
        {"id": "chatcmpl-s", "model": "m", "choices": [], "usage": {
            "prompt_tokens": 12, "completion_tokens": 9}},
    ) + b"data: [DONE]\n\n")  # fmt: skip
    out += t.finish()
    evs = events(out)
    for ev in evs:
        if ev["type"] != "ping":
            validate_event(ev)
    kinds = [(e["type"], e.get("index"), (e.get("delta") or e.get("content_block") or {})
              .get("type")) for e in evs]  # fmt: skip
    assert kinds == [
        ("message_start", None, None), ("ping", None, None),
        ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"),
        ("content_block_delta", 1, "text_delta"), ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_delta", 2, "input_json_delta"), ("content_block_stop", 2, None),
        ("content_block_start", 3, "tool_use"), ("content_block_delta", 3, "input_json_delta"),
        ("content_block_stop", 3, None), ("message_delta", None, None),
        ("message_stop", None, None),
    ]  # fmt: skip
    assert evs[0]["message"]["model"] == "client-model"
    assert evs[-2]["delta"]["stop_reason"] == "tool_use"
    assert evs[-2]["usage"]["input_tokens"] == 12 and evs[-2]["usage"]["output_tokens"] == 9


def test_a_stop_string_and_a_cut_stream() -> None:
    t = ChatToMessages("m", ("STOP",))
    t.chunk(sse(chunk({"content": "a"}), {**chunk({}, "stop"), "choices": [
        {"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "STOP"}]}))  # fmt: skip
    delta = events(t.finish())[-2]
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "STOP"}
    cut = ChatToMessages("m", ())
    cut.chunk(sse(chunk({"content": "a"})))
    with pytest.raises(UpstreamError):
        cut.finish()


def test_an_in_band_error_comes_after_what_preceded_it() -> None:
    t = ChatToMessages("m", ())
    out = t.chunk(sse(chunk({"content": "a"}), {"error": {"message": "boom", "code": 500}}))
    assert [e["type"] for e in events(out)][-1] == "content_block_delta"
    with pytest.raises(UpstreamStatus) as err:
        t.finish()
    assert err.value.status == 500 and err.value.message == "boom"


@pytest.mark.parametrize(
    ("exc", "status", "etype"),
    [
        (InvalidRequest("x"), 400, "invalid_request_error"),
        (QuotaExceeded("x"), 429, "rate_limit_error"),
        (ServiceUnavailable("x"), 529, "overloaded_error"),
        (UpstreamError("x"), 502, "api_error"),
        (UpstreamStatus(504, "x"), 504, "timeout_error"),
        (UpstreamStatus(413, "x"), 413, "request_too_large"),
    ],
)
def test_error_envelope(exc: Exception, status: int, etype: str) -> None:
    assert isinstance(exc, InvalidRequest | QuotaExceeded | ServiceUnavailable | UpstreamError)
    got, doc = error_envelope(exc)
    assert (got, doc["error"]["type"], doc["type"]) == (status, etype, "error")


def test_the_native_stream_swaps_the_model_and_reads_usage() -> None:
    stream = NativeStream("client-model", "anth")
    start = {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1,
                  "cache_read_input_tokens": 100}}}  # fmt: skip
    data = b"event: message_start\ndata: " + orjson.dumps(start) + b"\n\nevent: ping\r\n"
    out = stream.feed(data)
    assert b'"model":"client-model"' in out and b"claude-x" not in out
    out += stream.feed(
        b"data: {}\r\n\r\n".replace(b"{}", b'{"type":"ping"}')
        + b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
        b'"end_turn"},"usage":{"output_tokens":9}}\n\nevent: message_stop\ndata: {"type":'
        b'"message_stop"}\n\n'
    )  # fmt: skip
    out += stream.finish()
    assert out.count(b"event: ") == 4
    usage = stream.usage_so_far()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (105, 9, 100)


def test_the_bound_counts_images_not_their_data() -> None:
    doc = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "A" * 100_000}}]}]}  # fmt: skip
    raw = orjson.dumps(doc)
    call = MessagesCodec().parse(raw)
    assert call.prompt_bound == len(raw) - 100_000 + IMAGE_TOKENS + 16
    assert call.max_output == 10 and call.outputs == 1


def test_unsigned_thinking_is_left_out_for_anthropic() -> None:
    signed = {"type": "thinking", "thinking": "a", "signature": "c2ln"}
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [signed, {"type": "text", "text": "x"}]},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "local", "signature": ""},
            {"type": "text", "text": "y"}]},
    ]  # fmt: skip
    kept = unsigned_thinking_dropped(turns)
    assert kept[:3] == turns[:3]
    assert kept[3]["content"] == [{"type": "text", "text": "y"}]
