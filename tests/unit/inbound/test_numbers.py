"""Numbers JSON cannot carry, and integers beyond what a backend takes, are 400s
naming the field, in every codec and in any field (unknown ones too)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.contract import MAX_TOKENS
from router.errors import InvalidRequest
from router.inbound.base import Codec
from router.inbound.chat import ChatCodec
from router.inbound.completions import CompletionsCodec
from router.inbound.embeddings import EmbeddingsCodec

BASES: dict[str, tuple[Codec, dict[str, Any]]] = {
    "chat": (ChatCodec(), {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    "completions": (CompletionsCodec(), {"model": "m", "prompt": "hi"}),
    "embeddings": (EmbeddingsCodec(), {"model": "m", "input": "hi"}),
}
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400]


def body(base: dict[str, Any], where: str, literal: str) -> bytes:
    """``base`` with ``literal`` (raw JSON) at the dotted path ``where``."""
    doc = json.loads(json.dumps(base))
    node = doc
    *parents, last = where.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = "@@"
    return json.dumps(doc).replace('"@@"', literal).encode()


def refused(codec: Codec, raw: bytes, model: str | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        codec.parse(raw, model)
    assert err.value.status == 400
    return err.value


@pytest.mark.parametrize("endpoint", BASES)
@pytest.mark.parametrize("literal", NON_FINITE)
@pytest.mark.parametrize("where", ["foo", "extra.deep.value"])
def test_non_finite_anywhere_names_the_field(endpoint: str, literal: str, where: str) -> None:
    codec, base = BASES[endpoint]
    err = refused(codec, body(base, where, literal))
    assert err.param == where
    assert err.code == "invalid_number"
    assert where in err.message


@pytest.mark.parametrize("literal", NON_FINITE)
def test_non_finite_in_a_list_and_on_the_path_model(literal: str) -> None:
    codec, base = BASES["chat"]
    raw = body(base, "foo", f"[1, 2, {literal}]")
    assert refused(codec, raw).param == "foo[2]"
    assert refused(codec, raw, "deployment").param == "foo[2]"  # Azure's path


@pytest.mark.parametrize(
    ("endpoint", "field", "value"),
    [
        ("chat", "max_tokens", 2**63),
        ("chat", "max_tokens", 2**31),
        ("chat", "max_completion_tokens", 10**30),
        ("chat", "max_tokens", 1e300),
        ("chat", "top_logprobs", 2**40),
        ("chat", "seed", 2**63),
        ("chat", "seed", -(2**63) - 1),
        ("chat", "n", 2**64),
        ("chat", "priority", 2**64 - 1),
        ("chat", "temperature", 1e308),
        ("completions", "max_tokens", 2**63),
        ("completions", "logprobs", 2**33),
        ("completions", "seed", 2**64 - 1),
        ("completions", "min_tokens", 2**32),
        ("embeddings", "dimensions", 2**40),
        ("embeddings", "truncate_prompt_tokens", 2**35),
    ],
)
def test_integers_above_what_a_backend_takes(endpoint: str, field: str, value: int | float) -> None:
    codec, base = BASES[endpoint]
    err = refused(codec, body(base, field, json.dumps(value)))
    assert err.param == field


def test_bounds_themselves_pass() -> None:
    codec, base = BASES["chat"]
    call = codec.parse(body(base, "max_tokens", str(MAX_TOKENS)))
    assert call.max_output == MAX_TOKENS
    for seed in (2**63 - 1, -(2**63)):
        codec.parse(body(base, "seed", str(seed)))
    # a large but finite float in an unknown field is a number like any other
    codec.parse(body(base, "foo", "1e300"))


def test_token_ids_and_output_totals_are_bounded() -> None:
    completions, base = BASES["completions"]
    err = refused(completions, body(base, "prompt", f"[1, {2**31}]"))
    assert (err.param or "").startswith("prompt")
    # 128 choices of 2^30 tokens: more than any request can generate
    raw = body({**base, "n": 128}, "max_tokens", str(2**30))
    assert refused(completions, raw).param == "max_tokens"
    chat, cbase = BASES["chat"]
    raw = body({**cbase, "n": 2}, "max_completion_tokens", str(MAX_TOKENS))
    assert refused(chat, raw).param == "max_completion_tokens"


def test_malformed_json_is_still_invalid_json() -> None:
    codec, _ = BASES["chat"]
    for raw in (b'{"model": "m", "messages": [', b'{"a": NaN', b"{nope", b'{"a": 1e400,}'):
        assert refused(codec, raw).code == "invalid_json"
