"""Codecs: each client API parsed into the gateway's one call shape, with clear 400s."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from router.errors import InvalidRequest
from router.fim import MAX_TEMPLATE_BYTES
from router.inbound.base import ClientCall
from router.inbound.chat import ChatCodec
from router.inbound.completions import CompletionsCodec
from router.inbound.contracts import MAX_TOTAL_TOKEN_IDS
from router.inbound.embeddings import EmbeddingsCodec
from router.quota import tokens as tokenest


def parse(codec: Any, body: dict[str, Any], model: str | None = None) -> ClientCall:
    call: ClientCall = codec.parse(orjson.dumps(body), model)
    return call


def bad(codec: Any, body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        parse(codec, body)
    return err.value


def test_chat_call_shape() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 3,
            "max_completion_tokens": 7, "stream": True, "user": "u",
            "stream_options": {"include_usage": True}}  # fmt: skip
    call = parse(ChatCodec(), body)
    assert (call.api, call.model, call.stream, call.max_output, call.outputs) == (
        "chat", "m", True, 7, 3,
    )  # fmt: skip
    assert (call.user, call.wants_usage, call.tools, call.fim) == ("u", True, False, False)
    assert call.prompt_bound == tokenest.bound(orjson.dumps(body))


def test_completions_call_shape() -> None:
    call = parse(CompletionsCodec(), {"model": "m", "prompt": ["a", "b"], "n": 2, "best_of": 3})
    assert call.max_output == 16  # OpenAI's default max_tokens for completions
    assert call.outputs == 6  # best_of sequences for each of the two prompts
    call = parse(CompletionsCodec(), {"model": "m", "prompt": [1, 2, 3], "max_tokens": 0,
                                      "echo": True})  # fmt: skip
    assert (call.max_output, call.outputs) == (0, 1)
    raw = {"model": "m", "prompt": "def f(", "suffix": ")"}
    call = parse(CompletionsCodec(), raw)
    assert call.fim and call.prompt_bound == tokenest.bound(orjson.dumps(raw)) + (
        MAX_TEMPLATE_BYTES
    )


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({}, "prompt", "prompt is required"),
        ({"prompt": ""}, "prompt", "empty string"),
        ({"prompt": []}, "prompt", "empty array"),
        ({"prompt": [[1], []]}, "prompt[1]", "empty array"),
        ({"prompt": [1, 2], "suffix": "x"}, "suffix", "text prompt"),
        ({"prompt": "x", "suffix": "y", "echo": True}, "echo", "cannot be used with suffix"),
        ({"prompt": "x", "n": 3, "best_of": 2}, "best_of", "greater than or equal to n"),
        ({"prompt": "x", "best_of": 2, "stream": True}, "best_of", "with stream"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options", "stream"),
        ({"prompt": "x", "logprobs": "2"}, None, None),  # lax: "2" is the integer 2
        ({"prompt": "x", "logprobs": -2}, "logprobs", "greater than or equal to -1"),
        ({"prompt": "x", "temperature": 3}, "temperature", "less than or equal to 2"),
        ({"prompt": {"text": "x"}}, "prompt", None),
    ],
)
def test_completions_rules(body: dict[str, Any], param: str | None, words: str | None) -> None:
    if param is None and words is None:
        assert parse(CompletionsCodec(), {"model": "m", **body}).request.logprobs == 2
        return
    err = bad(CompletionsCodec(), {"model": "m", **body})
    assert err.param == param
    if words is not None:
        assert words in err.message


def test_embeddings_call_shape_and_bound() -> None:
    call = parse(EmbeddingsCodec(), {"model": "e", "input": ["héllo", "a b"]})
    assert (call.stream, call.max_output, call.outputs) == (False, 0, 0)
    assert call.prompt_bound == len("héllo".encode()) + 3 + 2 * 2  # bytes + special tokens
    call = parse(EmbeddingsCodec(), {"model": "e", "input": [[1, 2, 3], [4]]})
    assert call.prompt_bound == 4 + 2 * 2  # token ids are exact


def test_embeddings_total_token_limit() -> None:
    inputs = [[7] * 8000 for _ in range(MAX_TOTAL_TOKEN_IDS // 8000 + 1)]
    err = bad(EmbeddingsCodec(), {"model": "e", "input": inputs})
    assert err.param == "input" and "at most 300000" in err.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "encoding_format": "binary"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({}, "input"),
        ({"input": [-1]}, "input"),
    ],
)
def test_embeddings_rules(body: dict[str, Any], param: str) -> None:
    assert bad(EmbeddingsCodec(), {"model": "e", **body}).param is not None
    assert bad(EmbeddingsCodec(), {"model": "e", **body}).param.startswith(param)  # type: ignore[union-attr]


def test_the_path_model_replaces_the_body_model() -> None:
    call = parse(EmbeddingsCodec(), {"input": "x"}, model="from-path")
    assert call.model == "from-path" and call.request.model == "from-path"
    call = parse(ChatCodec(), {"model": "body", "messages": [{"role": "user", "content": "x"}]},
                 model="deployment")  # fmt: skip
    assert call.model == "deployment"
    with pytest.raises(InvalidRequest) as err:
        EmbeddingsCodec().parse(b"[1, 2]", "m")
    assert "JSON object" in err.value.message
    with pytest.raises(InvalidRequest) as err:
        EmbeddingsCodec().parse(b"{nope", "m")
    assert err.value.code == "invalid_json"
    with pytest.raises(InvalidRequest) as err:
        EmbeddingsCodec().parse(b"", None)
    assert "empty" in err.value.message


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": ["user"], "content": "hi"}, "messages[0]"),
        ({"role": {"a": 1}, "content": "hi"}, "messages[0]"),
        ({"role": "user", "content": [{"type": ["text"], "text": "hi"}]}, "messages[0].content"),
    ],
)
def test_a_tag_that_is_not_a_string_is_a_400(message: dict[str, Any], param: str) -> None:
    """A role or part type given as a list or object is refused like an unknown one
    (a 400 naming the message), not a failure of the discriminator itself."""
    err = bad(ChatCodec(), {"model": "m", "messages": [message]})
    assert err.param is not None and err.param.startswith(param)
