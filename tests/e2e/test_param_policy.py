"""Per-backend parameter policy for OpenAI-compatible backends, end to end."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import DEMO_KEY
from tests.support.fakes import FakeOpenAI
from tests.support.gateway import start_gateway

EXTRAS = {
    "top_k": 20,
    "min_p": 0.05,
    "include_stop_str_in_output": True,
    "skip_special_tokens": False,
    "return_tokens_as_token_ids": True,
}


def config(url: str, **backend: Any) -> dict[str, Any]:
    return {
        "backends": {"hosted": {"provider": "openai", "url": url, "api_key": "sk-up", **backend}},
        "pools": {"p": {"members": [{"backend": "hosted", "model": "served"}]}},
        "models": {"chat": {"routes": [{"pools": ["p"]}]}},
        "teams": {"t": {}},
        "keys": [{"id": "ci", "team": "t", "key": DEMO_KEY}],
    }


async def ask(url: str, **extra: Any) -> Any:
    async with openai.AsyncOpenAI(base_url=url, api_key=DEMO_KEY, max_retries=0) as c:
        return await c.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}], extra_body=extra
        )


@pytest.mark.parametrize(
    ("backend", "kept"),
    [
        ({}, set(EXTRAS)),  # flavour vllm (default): every extra forwarded
        ({"flavour": "openai"}, set()),
        ({"flavour": "openai", "allow_params": ["top_k", "min_p"]}, {"top_k", "min_p"}),
    ],
)
async def test_extras_forwarded_or_dropped(
    upstream: FakeOpenAI, backend: dict[str, Any], kept: set[str]
) -> None:
    # poolside's layout: the OpenAI API under /openai/v1
    url = upstream.url.removesuffix("/v1") + "/openai/v1"
    running = await start_gateway(config(url, **backend))
    try:
        await ask(running.base_url, **EXTRAS)
    finally:
        await running.stop()
    seen = upstream.seen[-1]
    assert seen.path == "/openai/v1/chat/completions"
    assert {k for k in EXTRAS if k in seen.body} == kept
    assert all(seen.body[k] == EXTRAS[k] for k in kept)
    assert seen.body["model"] == "served"


async def test_reject_answers_400_naming_parameter_and_backend(upstream: FakeOpenAI) -> None:
    running = await start_gateway(
        config(upstream.url, flavour="openai", unsupported_params="reject")
    )
    try:
        with pytest.raises(openai.BadRequestError) as err:
            await ask(running.base_url, temperature=0.3, top_k=5)
        assert err.value.status_code == 400
        assert err.value.body == {  # type: ignore[comparison-overlap]
            "message": "Parameter 'top_k' is not supported by backend 'hosted'.",
            "type": "invalid_request_error",
            "param": "top_k",
            "code": "unsupported_parameter",
        }
        assert upstream.seen == []
        done = await ask(running.base_url, temperature=0.3)  # nothing unsupported: fine
        assert done.choices[0].message.content
    finally:
        await running.stop()
