"""The request model: every OpenAI field, every vLLM extra, clear errors."""

from __future__ import annotations

import orjson
import pytest

from router.contract import VLLM_EXTRAS, ChatCompletionRequest, ValidationError, error_param

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def parse(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate_json(orjson.dumps({**BASE, **fields}))


def error(**fields: object) -> tuple[str | None, str]:
    with pytest.raises(ValidationError) as err:
        parse(**fields)
    return error_param(err.value)


def test_every_message_role_and_content_shape() -> None:
    req = parse(messages=[
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
        {"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "video_url", "video_url": {"url": "http://x/v.mp4"}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ])  # fmt: skip
    assert [m.role for m in req.messages] == ["system", "developer", "user", "assistant", "tool"]


def test_vllm_extras_and_unknown_fields_are_kept() -> None:
    extras = {
        "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "include_stop_str_in_output": True,
        "skip_special_tokens": False, "return_tokens_as_token_ids": True, "stop_token_ids": [2],
        "chat_template_kwargs": {"enable_thinking": False}, "priority": 3, "some_future_field": 1,
    }  # fmt: skip
    req = parse(**extras)
    dumped = req.model_dump(exclude_unset=True)
    for k, v in extras.items():
        assert dumped[k] == v
    assert {"top_k", "min_p", "include_stop_str_in_output"} <= VLLM_EXTRAS
    assert "some_future_field" not in VLLM_EXTRAS


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"stop": [""]}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"model": ""}, "model"),
    ],
)
def test_invalid_fields_are_named(fields: dict[str, object], param: str) -> None:
    got, message = error(**fields)
    assert got == param
    assert message


def test_named_tool_must_exist() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    param, message = error(tools=tools, tool_choice={"type": "function", "function": {"name": "x"}})
    assert param == "tool_choice" and "'x'" in message
    req = parse(tools=tools, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert req.tools is not None


def test_output_limit_prefers_max_completion_tokens() -> None:
    assert parse(max_tokens=10, max_completion_tokens=20).output_limit() == 20
    assert parse(max_tokens=10).output_limit() == 10
    assert parse().output_limit() is None
    assert parse(stream=True, stream_options={"include_usage": True}).wants_usage()
