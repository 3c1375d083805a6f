"""Azure OpenAI: URL, auth, default flavour, and Azure's wire samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.config import Backend, ConfigError
from router.errors import UpstreamError, status_error
from router.providers.azure import DEFAULT_API_VERSION, AzureBackend
from router.providers.openai import OpenAIAdapter
from router.streaming import SSERelay
from tests.support.gateway import make_config
from tests.support.schema import validate
from tests.unit.providers.helpers import make_call

FIXTURES = Path(__file__).parent.parent.parent / "fixtures" / "azure"


def azure(**cfg: Any) -> AzureBackend:
    cfg.setdefault("url", "https://contoso.openai.azure.com")
    return AzureBackend("az", Backend(provider="azure", **cfg), None)  # type: ignore[arg-type]


def test_deployment_url_and_api_version() -> None:
    be = azure(api_key="k" * 32)
    assert be.endpoint("chat", "gpt4o-prod") == (
        "https://contoso.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions"
        f"?api-version={DEFAULT_API_VERSION}"
    )
    for api, path in (("completions", "completions"), ("embeddings", "embeddings")):
        assert be.endpoint(api, "emb-prod") == (
            f"https://contoso.openai.azure.com/openai/deployments/emb-prod/{path}"
            f"?api-version={DEFAULT_API_VERSION}"
        )
    be = azure(
        url="https://contoso.openai.azure.com/openai/",
        api_key="k" * 32,
        api_version="2025-04-01-preview",
    )
    assert be.endpoint("chat", "a b/c") == (
        "https://contoso.openai.azure.com/openai/deployments/a%20b%2Fc/chat/completions"
        "?api-version=2025-04-01-preview"
    )


def test_api_key_header() -> None:
    be = azure(api_key="azure-key-123")
    assert be.headers["api-key"] == "azure-key-123"
    assert "Authorization" not in be.headers
    assert be.unusable is None


def test_bearer_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_TEST_TOKEN", "eyJ0eXAi.token")
    be = azure(token_env="AZURE_TEST_TOKEN")
    assert be.headers["Authorization"] == "Bearer eyJ0eXAi.token"
    assert "api-key" not in be.headers


async def test_missing_token_fails_every_attempt_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_TEST_TOKEN", raising=False)
    be = azure(token_env="AZURE_TEST_TOKEN")
    adapter = OpenAIAdapter(
        be, make_call({"model": "chat", "messages": [{"role": "user", "content": "x"}]})
    )
    with pytest.raises(UpstreamError, match="AZURE_TEST_TOKEN") as err:
        await adapter.open()
    assert err.value.retryable  # another member or pool may still serve it


def test_flavour_defaults_to_openai() -> None:
    assert azure(api_key="k" * 8).flavour == "openai"
    assert azure(api_key="k" * 8).blocked
    assert azure(api_key="k" * 8, flavour="vllm").blocked == frozenset()


@pytest.mark.parametrize(
    ("backend", "problem"),
    [
        ({"provider": "azure", "url": "https://x.openai.azure.com"}, "needs api_key or token_env"),
        ({"provider": "openai", "url": "https://x/v1", "token_env": "T"}, "only used by provider"),
        ({"provider": "azure", "url": "https://x", "token_env": "1-bad"}, "must name"),
        ({"provider": "azure"}, "needs url"),
        (
            {"provider": "openai", "url": "https://x/v1", "allow_params": ["temperature"]},
            "not a vLLM extra",
        ),
        ({"provider": "anthropic", "allow_params": ["min_p"]}, "not one of temperature"),
        ({"provider": "anthropic", "deny_params": ["seed"]}, "only used by providers"),
        (
            {"provider": "openai", "url": "https://x/v1", "deny_params": ["model"]},
            "cannot be denied",
        ),
    ],
)
def test_config_checks(backend: dict[str, Any], problem: str) -> None:
    doc = {
        "backends": {"b": backend},
        "pools": {"p": {"members": [{"backend": "b", "model": "m"}]}},
        "models": {"chat": {"routes": [{"pools": ["p"]}]}},
    }
    with pytest.raises(ConfigError) as err:
        make_config(doc)
    assert any(line.startswith("backends.b") and problem in line for line in err.value.problems), (
        err.value.problems
    )


def test_response_model_is_the_clients_name() -> None:
    fixture = json.loads((FIXTURES / "chat_completion.json").read_text())["body"]
    adapter = OpenAIAdapter(
        azure(api_key="k" * 8),
        make_call(
            {"model": "chat", "messages": [{"role": "user", "content": "x"}]},
            member_model="gpt4o-prod",
        ),
    )
    doc = orjson.loads(adapter.transform_body(orjson.dumps(fixture)))
    assert doc["model"] == "chat"  # Azure names the model, not the deployment
    assert doc["prompt_filter_results"] == fixture["prompt_filter_results"]
    validate("CreateChatCompletionResponse", doc)
    assert adapter.usage is not None and adapter.usage.prompt_tokens == 33


@pytest.mark.parametrize("piece", [1, 50, 1 << 20])
def test_stream_model_learnt_and_usage_taken(piece: int) -> None:
    data = (FIXTURES / "stream.sse").read_bytes()
    relay = SSERelay("gpt4o-prod", "chat", keep_usage=False)
    out = b"".join(relay.feed(data[i : i + piece]) for i in range(0, len(data), piece))
    out += relay.flush()
    events = [line[6:] for line in out.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    docs = [orjson.loads(e) for e in events[:-1]]
    assert docs[0]["model"] == ""  # Azure's prompt-filter event names no model
    assert all(d["model"] == "chat" for d in docs[1:])
    assert all("usage" not in d for d in docs)  # dropped: the client did not ask
    assert relay.usage == {"completion_tokens": 1, "prompt_tokens": 9, "total_tokens": 10}


@pytest.mark.parametrize(
    "case",
    json.loads((FIXTURES / "errors.json").read_text())["errors"],
    ids=lambda c: c["body"]["error"]["code"],
)
def test_error_bodies(case: dict[str, Any]) -> None:
    exc = status_error(case["status"], orjson.dumps(case["body"]), backend="backend 'az'")
    assert exc.status == case["status"]
    assert exc.message == case["body"]["error"]["message"]
    assert exc.code == case["body"]["error"]["code"]
    assert exc.retryable is (case["status"] == 429)
    validate("ErrorResponse", exc.envelope())
