"""The Responses codec's pure parts: the call shape, the translation to chat, the store."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from router.config import ConfigError
from router.contract import ChatCompletionRequest
from router.errors import InvalidRequest
from router.inbound.responses import ResponsesCodec
from router.inbound.responses_bridge import chat_request, response_from_chat
from router.inbound.responses_contract import ResponsesRequest
from router.inbound.responses_store import MemoryResponses, Stored
from router.routing.balance import Balancer
from router.routing.health import BackendState
from router.serving import backend_apis, member_apis
from tests.support.gateway import make_config


def translate(body: dict[str, Any]) -> dict[str, Any]:
    doc = chat_request(ResponsesRequest.model_validate({"model": "m", **body}))
    ChatCompletionRequest.model_validate(doc)  # a valid chat request
    return doc


def test_call_shape() -> None:
    raw = orjson.dumps(
        {
            "model": "m",
            "input": "hi",
            "max_output_tokens": 9,
            "stream": True,
            "tools": [{"type": "function", "name": "f"}],
            "user": "u",
        }
    )
    call = ResponsesCodec().parse(raw)
    assert (call.api, call.apis, call.model, call.stream) == (
        "responses",
        frozenset(("responses", "chat")),
        "m",
        True,
    )
    assert (call.max_output, call.outputs, call.tools, call.user) == (9, 1, True, "u")
    assert call.state.keep is False  # no store configured


def test_codex_shaped_input_becomes_chat_messages() -> None:
    doc = translate(
        {
            "instructions": "Be exact.",
            "input": [
                {
                    "type": "message",
                    "role": "developer",
                    "content": [{"type": "input_text", "text": "You are Codex."}],
                },
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "look"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                    ],
                },
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Running it."}],
                },
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "spawn_agent",
                    "namespace": "multi_agent_v1",
                    "arguments": "{}",
                },
                {
                    "type": "function_call",
                    "call_id": "c2",
                    "name": "exec_command",
                    "arguments": '{"cmd":"ls"}',
                },
                {"type": "function_call_output", "call_id": "c1", "output": "ok"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "a.txt"}],
                },
            ],
            "tools": [
                {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
                {
                    "type": "namespace",
                    "name": "multi_agent_v1",
                    "tools": [{"type": "function", "name": "spawn_agent"}],
                },
            ],
            "tool_choice": {"type": "function", "name": "exec_command"},
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "out",
                    "schema": {"type": "object"},
                    "strict": True,
                }
            },
            "reasoning": {"effort": "high", "summary": "auto"},
            "max_output_tokens": 64,
            "include": ["reasoning.encrypted_content"],
            "store": False,
            "prompt_cache_key": "k",
        }
    )
    msgs = doc["messages"]
    assert msgs[0] == {"role": "system", "content": "Be exact.\n\nYou are Codex."}
    assert msgs[1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AAAA"},
    }
    assert msgs[2]["content"] == "Running it."  # reasoning left out, calls joined to the text
    assert [c["function"]["name"] for c in msgs[2]["tool_calls"]] == [
        "multi_agent_v1__spawn_agent",
        "exec_command",
    ]
    assert msgs[3:] == [
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "a.txt"}]},
    ]
    assert [t["function"]["name"] for t in doc["tools"]] == [
        "exec_command",
        "multi_agent_v1__spawn_agent",
    ]
    assert doc["tool_choice"] == {"type": "function", "function": {"name": "exec_command"}}
    assert doc["response_format"]["json_schema"] == {
        "name": "out",
        "schema": {"type": "object"},
        "strict": True,
    }
    assert (doc["reasoning_effort"], doc["max_completion_tokens"]) == ("high", 64)
    assert "store" not in doc and "include" not in doc


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools", 'web_search = "disabled"'),
        (
            {"input": "x", "tools": [{"type": "file_search", "vector_store_ids": []}]},
            "tools",
            "'file_search'",
        ),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input", "'item_reference'"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input",
            "file_id",
        ),
        (
            {
                "input": "x",
                "tools": [{"type": "function", "name": "f"}],
                "tool_choice": {"type": "web_search"},
            },
            "tool_choice",
            "'web_search'",
        ),
    ],
)
def test_what_chat_cannot_carry_is_a_400(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        translate(body)
    assert err.value.param == param and words in err.value.message


def test_chat_answer_becomes_a_response() -> None:
    raw = orjson.dumps(
        {
            "model": "m",
            "input": "hi",
            "tools": [
                {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "go"}]}
            ],
        }
    )
    call = ResponsesCodec().parse(raw)
    doc = response_from_chat(
        call,
        {
            "created": 5,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "length",
                    "message": {
                        "role": "assistant",
                        "content": "partial",
                        "reasoning_content": "hmm",
                        "tool_calls": [
                            {
                                "id": "c9",
                                "type": "function",
                                "function": {"name": "ns__go", "arguments": "{}"},
                            }
                        ],
                    },
                }
            ],
            "usage": {
                "prompt_tokens": 7,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        },
        "resp_x",
    )
    assert [o["type"] for o in doc["output"]] == ["reasoning", "message", "function_call"]
    assert doc["output"][2]["namespace"] == "ns" and doc["output"][2]["name"] == "go"
    assert (doc["status"], doc["incomplete_details"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
    )
    assert doc["usage"] == {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 10,
    }


async def test_memory_store_is_per_team_bounded_and_expires() -> None:
    store = MemoryResponses(ttl_seconds=60, max_entries=2)
    for rid in ("r1", "r2", "r3"):
        await store.put(rid, Stored("a", [], {"id": rid}))
    assert await store.get("r1", "a") is None  # the oldest went first
    got = await store.get("r3", "a")
    assert got is not None and got.response == {"id": "r3"}
    assert await store.get("r3", "b") is None and not await store.delete("r3", "b")
    assert await store.delete("r3", "a") and await store.get("r3", "a") is None
    expired = MemoryResponses(ttl_seconds=1, max_entries=2)
    expired.ttl = 0  # expire at once
    await expired.put("r", Stored("a", [], {}))
    assert await expired.get("r", "a") is None


def _doc(member: dict[str, Any], provider: dict[str, Any]) -> dict[str, Any]:
    return {
        "backends": {"b": {"url": "http://h/v1", **provider}},
        "pools": {"p": {"members": [{"backend": "b", "model": "x", **member}]}},
        "models": {"m": {"routes": [{"pools": ["p"]}]}},
    }


def test_which_members_speak_responses() -> None:
    assert "responses" in backend_apis("openai", "openai")
    assert "responses" in backend_apis("azure", "openai")
    assert "responses" not in backend_apis("openai", "vllm")
    assert "responses" not in backend_apis("anthropic", "vllm")
    assert member_apis(frozenset(("chat",)), "native") == {"chat", "responses"}
    assert member_apis(frozenset(("chat", "responses")), "bridge") == {"chat"}
    cfg = make_config(_doc({"responses": "native"}, {"provider": "openai"}))
    bal = Balancer("p", cfg.pools["p"], {"b": BackendState("b")}, {"b": frozenset(("chat",))})
    assert bal.members[0].apis == {"chat", "responses"}
    with pytest.raises(ConfigError) as err:
        make_config(_doc({"responses": "native"}, {"provider": "anthropic", "api_key": "k"}))
    assert "has no Responses API" in err.value.problems[0]


def test_prefix_key_and_image_bound() -> None:
    codec = ResponsesCodec()
    opening = [
        {"role": "developer", "content": "You are Codex."},
        {"role": "user", "content": [{"type": "input_text", "text": "fix the bug"}]},
    ]
    later = [
        *opening,
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": "thanks"},
    ]
    keys = {
        codec.parse(orjson.dumps({"model": "m", "input": i})).prefix_key(4096)
        for i in (opening, later)
    }
    assert len(keys) == 1  # the same conversation keeps its key as it grows
    other = codec.parse(orjson.dumps({"model": "m", "input": "another task"}))
    assert other.prefix_key(4096) not in keys
    image = {"type": "input_image", "image_url": "data:image/png;base64," + "A" * 50_000}
    raw = orjson.dumps({"model": "m", "input": [{"role": "user", "content": [image] * 4}]})
    assert codec.parse(raw).prompt_bound >= 4 * 2048  # each image, not its base64 bytes
    assert codec.parse(raw).prompt_bound < 4 * 2048 + 1000
