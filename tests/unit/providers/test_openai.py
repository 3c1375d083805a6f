"""The OpenAI-compatible pass-through: what is patched and the parameter policy."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from router.config import Backend
from router.contract import VLLM_EXTRAS
from router.errors import BackendRejectedParam
from router.providers.openai import OpenAIAdapter, OpenAIBackend, patch_body
from tests.unit.providers.helpers import make_call

MSG = [{"role": "user", "content": "hi"}]
EXTRAS = {
    "top_k": 20,
    "min_p": 0.05,
    "include_stop_str_in_output": True,
    "skip_special_tokens": False,
    "return_tokens_as_token_ids": True,
}


def backend(**cfg: Any) -> OpenAIBackend:
    return OpenAIBackend(
        "hosted", Backend(provider="openai", url="https://api.example.com/v1", **cfg), None
    )  # type: ignore[arg-type]


def body_sent(be: OpenAIBackend, body: dict[str, Any], **call_kw: Any) -> dict[str, Any] | None:
    """The JSON the adapter would send, or None when it forwards the client's bytes."""
    call = make_call({"model": "chat", "messages": MSG, **body}, **call_kw)
    adapter = OpenAIAdapter(be, call)
    if not adapter._needs_patch():
        return None
    out: dict[str, Any] = orjson.loads(
        orjson.dumps(patch_body(call, be.name, be.blocked, be.unsupported))
    )
    return out


def test_vllm_flavour_forwards_every_extra_untouched() -> None:
    be = backend()
    assert be.flavour == "vllm" and not be.blocked
    assert body_sent(be, EXTRAS, member_model="chat") is None  # the raw bytes go as they are
    sent = body_sent(be, EXTRAS)  # a different member model: patched, extras kept
    assert sent is not None
    assert sent["model"] == "backend-model"
    assert {k: sent[k] for k in EXTRAS} == EXTRAS


def test_openai_flavour_drops_vllm_extras() -> None:
    be = backend(flavour="openai")
    assert be.blocked == VLLM_EXTRAS
    sent = body_sent(be, {**EXTRAS, "temperature": 0.5, "seed": 3}, member_model="chat")
    assert sent is not None
    assert not set(EXTRAS) & set(sent)
    assert sent["temperature"] == 0.5 and sent["seed"] == 3 and sent["model"] == "chat"


def test_openai_flavour_without_extras_is_not_rewritten() -> None:
    assert body_sent(backend(flavour="openai"), {"temperature": 0.5}, member_model="chat") is None


@pytest.mark.parametrize("param", sorted(EXTRAS))
def test_openai_flavour_reject_names_parameter_and_backend(param: str) -> None:
    be = backend(flavour="openai", unsupported_params="reject")
    with pytest.raises(BackendRejectedParam) as err:
        body_sent(be, {param: EXTRAS[param]})
    exc = err.value
    assert exc.status == 400 and exc.param == param and exc.code == "unsupported_parameter"
    assert exc.message == f"Parameter {param!r} is not supported by backend 'hosted'."


def test_reject_ignores_extras_sent_as_null() -> None:
    be = backend(flavour="openai", unsupported_params="reject")
    sent = body_sent(be, {"top_k": None})
    assert sent is not None and "top_k" not in sent


def test_allow_params_lets_named_extras_through() -> None:
    be = backend(flavour="openai", unsupported_params="reject", allow_params=["top_k", "min_p"])
    sent = body_sent(be, {"top_k": 5, "min_p": 0.1})
    assert sent is not None and sent["top_k"] == 5 and sent["min_p"] == 0.1
    with pytest.raises(BackendRejectedParam):
        body_sent(be, {"top_k": 5, "repetition_penalty": 1.1})


def test_stream_always_asks_for_usage_and_keeps_client_options() -> None:
    sent = body_sent(
        backend(),
        {"stream": True, "stream_options": {"continuous_usage_stats": True}},
        member_model="chat",
    )
    assert sent is not None
    assert sent["stream_options"] == {"continuous_usage_stats": True, "include_usage": True}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, {"max_tokens": 50}),
        ({"max_tokens": 900}, {"max_tokens": 50}),
        ({"max_completion_tokens": 900}, {"max_completion_tokens": 50}),
        (
            {"max_completion_tokens": 900, "max_tokens": 900},
            {"max_completion_tokens": 50, "max_tokens": 50},
        ),
    ],
)
def test_clamped_output_cap(body: dict[str, Any], expected: dict[str, int]) -> None:
    sent = body_sent(backend(), body, member_model="chat", max_tokens=50)
    assert sent is not None
    assert {k: sent[k] for k in ("max_tokens", "max_completion_tokens") if k in sent} == expected


def test_url_and_headers() -> None:
    be = OpenAIBackend(
        "p",
        Backend(
            provider="openai",
            url="https://h.example/openai/v1/",
            api_key="ps-secret",
            headers={"X-Org": "o"},
        ),
        None,
    )  # type: ignore[arg-type]
    assert be.endpoint("chat", "m") == "https://h.example/openai/v1/chat/completions"
    assert be.endpoint("completions", "m") == "https://h.example/openai/v1/completions"
    assert be.endpoint("embeddings", "m") == "https://h.example/openai/v1/embeddings"
    assert be.headers["Authorization"] == "Bearer ps-secret"
    assert be.headers["X-Org"] == "o"


def test_deny_params_follow_the_policy() -> None:
    groq = backend(flavour="openai", deny_params=["logprobs", "logit_bias", "top_logprobs"])
    sent = body_sent(
        groq, {"logprobs": True, "top_logprobs": 3, "temperature": 0.2}, member_model="chat"
    )
    assert sent is not None
    assert "logprobs" not in sent and "top_logprobs" not in sent and sent["temperature"] == 0.2
    strict = backend(flavour="openai", deny_params=["logprobs"], unsupported_params="reject")
    with pytest.raises(BackendRejectedParam) as err:
        body_sent(strict, {"logprobs": True})
    assert err.value.param == "logprobs"


def test_backend_without_stream_options() -> None:
    """Mistral refuses stream_options (and reports usage in its last chunk anyway)."""
    mistral = backend(
        flavour="openai",
        unsupported_params="reject",
        deny_params=["stream_options", "max_completion_tokens"],
    )
    sent = body_sent(
        mistral, {"stream": True, "stream_options": {"include_usage": True}}, member_model="chat"
    )
    assert sent is not None and "stream_options" not in sent and sent["stream"] is True
    sent = body_sent(mistral, {"stream": True}, member_model="chat")
    assert sent is not None and "stream_options" not in sent


@pytest.mark.parametrize(
    ("body", "cap", "expected"),
    [
        ({"max_completion_tokens": 300}, None, {"max_tokens": 300}),
        ({"max_completion_tokens": 300, "max_tokens": 200}, None, {"max_tokens": 200}),
        ({"max_completion_tokens": 300}, 40, {"max_tokens": 40}),
    ],
)
def test_max_completion_tokens_sent_as_max_tokens_when_denied(
    body: dict[str, Any], cap: int | None, expected: dict[str, int]
) -> None:
    be = backend(
        flavour="openai", unsupported_params="reject", deny_params=["max_completion_tokens"]
    )
    sent = body_sent(be, body, member_model="chat", max_tokens=cap)
    assert sent is not None
    assert {k: sent[k] for k in ("max_tokens", "max_completion_tokens") if k in sent} == expected


def completion_call(body: dict[str, Any], **kw: Any) -> Any:
    from router.inbound.contracts import CompletionRequest
    from router.providers.base import Call

    raw = orjson.dumps({"model": "coder", **body})
    return Call(
        request=CompletionRequest.model_validate_json(raw), raw=raw, client_model="coder",
        member_model=kw.pop("member_model", "coder"), max_tokens=kw.pop("max_tokens", None),
        clamped=False, default_max_tokens=16, request_id="r", forward_headers={},
        api="completions", stream=bool(body.get("stream")), **kw,
    )  # fmt: skip


def test_completions_policy_uses_the_completions_extras() -> None:
    be = backend(flavour="openai")
    call = completion_call({"prompt": "x", "echo": True, "top_k": 3, "prompt_logprobs": 1})
    adapter = OpenAIAdapter(be, call)
    assert adapter._needs_patch()
    sent = patch_body(call, be.name, be.blocked_by_api["completions"], be.unsupported)
    assert sent["echo"] is True  # standard in the completions contract
    assert "top_k" not in sent and "prompt_logprobs" not in sent
    assert "echo" in be.blocked_by_api["chat"]  # a vLLM extra in the chat contract


def test_completion_with_suffix_gets_the_members_template() -> None:
    from router.fim import PRESETS

    be = backend()
    call = completion_call({"prompt": "a", "suffix": "b"}, fim=PRESETS["codellama"])
    assert OpenAIAdapter(be, call)._needs_patch()
    sent = patch_body(call, be.name, be.blocked_by_api["completions"], be.unsupported)
    assert sent["prompt"] == "<PRE> a <SUF>b <MID>" and "suffix" not in sent
    native = completion_call({"prompt": "a", "suffix": "b"})  # fim: native (no template)
    assert not OpenAIAdapter(be, native)._needs_patch()  # the client's bytes, suffix and all
