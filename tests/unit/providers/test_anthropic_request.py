"""OpenAI request -> Anthropic Messages request, checked against the API's rules
(the fake server's checker) and the official ``anthropic`` SDK's request types."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from router.config import Backend
from router.errors import BackendRejectedParam
from router.providers.anthropic import AnthropicAdapter, AnthropicBackend
from tests.support.anthropic_types import validate_request
from tests.support.fake_anthropic import check_rules
from tests.unit.providers.helpers import make_call

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
    "AAAABJRU5ErkJggg=="
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}


class _NoUpstream:
    """Translation never touches the network."""


SAMPLING = ["temperature", "top_p", "top_k"]


def translate(
    body: dict[str, Any], *, policy: str = "drop", allow: list[str] | None = None, **call_kw: Any
) -> dict[str, Any]:
    cfg = Backend(provider="anthropic", unsupported_params=policy, allow_params=allow or [])
    backend = AnthropicBackend("claude", cfg, _NoUpstream())  # type: ignore[arg-type]
    call = make_call({"model": "chat", **body}, member_model="claude-sonnet-4-5", **call_kw)
    out = AnthropicAdapter(backend, call).request_body()
    check_rules(out)  # the Messages API's rules
    # the SDK's own types (which no longer know the deprecated sampling parameters)
    validate_request({k: v for k, v in out.items() if k not in SAMPLING})
    return out


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def test_plain_conversation_with_system_prompts() -> None:
    out = translate(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                user("Hi"),
                {"role": "assistant", "content": "Salut"},
                user("Again"),
            ],
        }
    )
    assert out["model"] == "claude-sonnet-4-5"
    assert out["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Answer in French."},
    ]
    assert out["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Salut"},
        {"role": "user", "content": "Again"},
    ]
    assert out["max_tokens"] == 1024  # the pool's max_output_tokens
    assert "stream" not in out


def test_one_system_message_is_a_string_and_consecutive_turns_merge() -> None:
    out = translate({"messages": [{"role": "system", "content": "S"}, user("a"), user("b")]})
    assert out["system"] == "S"
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


@pytest.mark.parametrize(
    ("kw", "body_extra", "expected"),
    [
        ({"max_tokens": 77}, {"max_tokens": 500}, 77),  # the gateway's clamp wins
        ({}, {"max_completion_tokens": 300, "max_tokens": 500}, 300),
        ({}, {"max_tokens": 500}, 500),
        ({"default_max_tokens": 2048}, {}, 2048),
    ],
)
def test_max_tokens_always_sent(
    kw: dict[str, Any], body_extra: dict[str, Any], expected: int
) -> None:
    out = translate({"messages": [user("x")], **body_extra}, **kw)
    assert out["max_tokens"] == expected


def test_tool_round_trip_with_parallel_results_merged() -> None:
    out = translate(
        {
            "messages": [
                user("Weather and time in Paris?"),
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        },
                        {
                            "id": "toolu_2",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C, cloudy"},
                {
                    "role": "tool",
                    "tool_call_id": "toolu_2",
                    "content": [{"type": "text", "text": "14:05"}],
                },
                user("Thanks, and tomorrow?"),
            ],
            "tools": [WEATHER, CLOCK],
        }
    )
    assistant, results = out["messages"][1], out["messages"][2]
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
            {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
        ],
    }
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C, cloudy"},
            {
                "type": "tool_result",
                "tool_use_id": "toolu_2",
                "content": [{"type": "text", "text": "14:05"}],
            },
            {"type": "text", "text": "Thanks, and tomorrow?"},
        ],
    }
    assert len(out["messages"]) == 3
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": WEATHER["function"]["parameters"],
        },  # type: ignore[index]
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out


def test_assistant_with_only_tool_calls_and_null_content() -> None:
    out = translate(
        {
            "messages": [
                user("go"),
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "t1", "content": "noon"},
            ],
            "tools": [CLOCK],
        }
    )
    assert out["messages"][1]["content"] == [
        {"type": "tool_use", "id": "t1", "name": "get_time", "input": {}}
    ]
    assert out["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": "noon"}
    ]


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            None,
            {"type": "tool", "name": "get_time"},
        ),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            False,
            {"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ("auto", True, {"type": "auto"}),
    ],
)
def test_tool_choice(choice: Any, parallel: bool | None, expected: dict[str, Any]) -> None:
    body: dict[str, Any] = {"messages": [user("x")], "tools": [WEATHER, CLOCK]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    out = translate(body)
    if choice == "auto" and parallel is not False:
        assert out.get("tool_choice", {"type": "auto"}) == expected
    else:
        assert out["tool_choice"] == expected


def test_images_from_data_and_http_urls() -> None:
    out = translate(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"},
                        },
                    ],
                }
            ]
        }
    )
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    "url", ["data:image/bmp;base64,AAAA", "data:image/png,rawbytes", "ftp://example.com/x.png"]
)
def test_images_anthropic_cannot_take_are_a_400(url: str) -> None:
    with pytest.raises(BackendRejectedParam) as err:
        translate(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
                ]
            }
        )
    assert err.value.status == 400
    assert err.value.param == "messages[0].content[0].image_url.url"
    assert "claude" in err.value.message


def test_audio_is_a_400_even_under_drop() -> None:
    with pytest.raises(BackendRejectedParam) as err:
        translate(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_audio",
                                "input_audio": {"data": "AAAA", "format": "wav"},
                            }
                        ],
                    }
                ]
            }
        )
    assert err.value.param == "messages[0].content[0]"


def test_sampling_parameters_for_a_backend_whose_models_take_them() -> None:
    out = translate(
        {
            "messages": [user("x")],
            "temperature": 0.4,
            "top_p": 0.9,
            "top_k": 40,
            "stop": ["END", "STOP"],
            "user": "user-42",
            "stream": True,
        },
        allow=SAMPLING,
    )
    assert out["temperature"] == 0.4
    assert out["top_p"] == 0.9
    assert out["top_k"] == 40
    assert out["stop_sequences"] == ["END", "STOP"]
    assert out["metadata"] == {"user_id": "user-42"}
    assert out["stream"] is True
    single = translate({"messages": [user("x")], "stop": "END", "top_k": -1}, allow=SAMPLING)
    assert single["stop_sequences"] == ["END"]
    assert "top_k" not in single  # vLLM's "disabled"


def test_sampling_parameters_are_not_sent_unless_allowed() -> None:
    body = {"messages": [user("x")], "temperature": 0.4, "top_p": 0.9, "top_k": 40}
    out = translate(body)
    assert not set(SAMPLING) & set(out)
    only_t = translate(body, allow=["temperature"])
    assert only_t["temperature"] == 0.4 and "top_p" not in only_t and "top_k" not in only_t
    for name in SAMPLING:
        with pytest.raises(BackendRejectedParam) as err:
            translate({"messages": [user("x")], name: body[name]}, policy="reject")
        assert err.value.param == name


def test_temperature_above_one_clamped_under_drop() -> None:
    out = translate({"messages": [user("x")], "temperature": 1.7}, allow=["temperature"])
    assert out["temperature"] == 1.0


def test_temperature_above_one_rejected_under_reject() -> None:
    with pytest.raises(BackendRejectedParam) as err:
        translate(
            {"messages": [user("x")], "temperature": 1.7}, policy="reject", allow=["temperature"]
        )
    assert err.value.status == 400
    assert err.value.param == "temperature"
    assert "'claude'" in err.value.message and "above 1" in err.value.message
    ok = translate(
        {"messages": [user("x")], "temperature": 1.0}, policy="reject", allow=["temperature"]
    )
    assert ok["temperature"] == 1.0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"seed": 7}, "seed"),
        ({"logprobs": True}, "logprobs"),
        ({"n": 2}, "n"),
        ({"min_p": 0.1}, "min_p"),
        ({"include_stop_str_in_output": True}, "include_stop_str_in_output"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"not_an_openai_field": 1}, "not_an_openai_field"),
    ],
)
def test_unsupported_parameters_follow_the_policy(extra: dict[str, Any], param: str) -> None:
    body = {"messages": [user("x")], **extra}
    dropped = translate(body)
    assert param not in dropped
    with pytest.raises(BackendRejectedParam) as err:
        translate(body, policy="reject")
    assert err.value.param == param
    assert f"{param!r}" in err.value.message and "'claude'" in err.value.message


def test_neutral_values_are_not_rejected() -> None:
    out = translate(
        {
            "messages": [user("x")],
            "n": 1,
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "logprobs": False,
            "seed": None,
        },
        policy="reject",
    )
    assert set(out) == {"model", "max_tokens", "messages"}


def test_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    out = translate(
        {
            "messages": [user("x")],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "r", "schema": schema},
            },
        }
    )
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    with pytest.raises(BackendRejectedParam):
        translate(
            {"messages": [user("x")], "response_format": {"type": "json_object"}}, policy="reject"
        )


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "only a system prompt"}],
        [{"role": "assistant", "content": "I speak first"}, user("x")],
    ],
)
def test_conversations_anthropic_cannot_take(messages: list[dict[str, Any]]) -> None:
    with pytest.raises(BackendRejectedParam) as err:
        translate({"messages": messages})
    assert err.value.param == "messages"


def test_tool_arguments_must_be_a_json_object() -> None:
    with pytest.raises(BackendRejectedParam) as err:
        translate(
            {
                "messages": [
                    user("x"),
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "t",
                                "type": "function",
                                "function": {"name": "f", "arguments": "[1,"},
                            }
                        ],
                    },
                ]
            }
        )
    assert err.value.param == "messages[1].tool_calls[0].function.arguments"


def test_the_checkers_catch_a_broken_translation() -> None:
    """The two checkers used above are not vacuous."""
    good = translate({"messages": [user("x")]})
    broken = {**good, "messages": [{"role": "assistant", "content": "x"}]}
    with pytest.raises(Exception, match="first message"):
        check_rules(broken)
    with pytest.raises(pydantic.ValidationError):
        validate_request({**good, "tool_choice": {"type": "required"}})
    with pytest.raises(pydantic.ValidationError):
        validate_request({**good, "stop": ["x"]})
