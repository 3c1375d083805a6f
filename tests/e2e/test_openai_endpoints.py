"""Embeddings, completions (with fill-in-the-middle), model lookup and Azure-style
paths, through the official ``openai`` SDK, against fake vLLM servers."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from router.fim import PRESETS
from tests.conftest import DEMO_KEY
from tests.support.fake_endpoints import vector
from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.gateway import Running, start_gateway

OTHER_KEY = "sk-test-other-0002"
PREFIX = "def add(a, b):\n    "
SUFFIX = "\n    return result\n"


class Fakes:
    def __init__(self) -> None:
        self.gpu = FakeOpenAI("gpu")
        self.code = FakeOpenAI("code", Behaviour(completion_text="result = a + b"))
        self.emb = FakeOpenAI("emb")
        self.floats = FakeOpenAI("floats", Behaviour(embeddings_base64=False))

    async def start(self) -> None:
        for fake in (self.gpu, self.code, self.emb, self.floats):
            await fake.start()

    async def stop(self) -> None:
        for fake in (self.gpu, self.code, self.emb, self.floats):
            await fake.stop()


def config(f: Fakes) -> dict[str, Any]:
    return {
        "backends": {
            "gpu": {"provider": "openai", "url": f.gpu.url},
            "code": {"provider": "openai", "url": f.code.url},
            "emb": {"provider": "openai", "url": f.emb.url},
            # a server without base64: asked for floats, the gateway encodes
            "floats": {
                "provider": "openai",
                "url": f.floats.url,
                "deny_params": ["encoding_format"],
            },
            "claude": {"provider": "anthropic", "api_key": "sk-ant-unused-000"},
        },
        "pools": {
            "local": {"members": [{"backend": "gpu", "model": "llama"}]},
            "coder": {
                "members": [
                    {"backend": "code", "model": "Qwen/Qwen2.5-Coder-7B", "fim": "qwen-coder"}
                ]
            },
            "native": {"members": [{"backend": "gpu", "model": "llama", "fim": "native"}]},
            "embed": {
                "members": [{"backend": "emb", "model": "BAAI/bge-m3"}],
                "price": {"input_per_mtok": 0.02},
            },
            "embed-floats": {"members": [{"backend": "floats", "model": "bge"}]},
            "anthropic": {"members": [{"backend": "claude", "model": "claude-sonnet-4-5"}]},
            "mixed": {
                "members": [
                    {"backend": "claude", "model": "claude-sonnet-4-5"},
                    {"backend": "gpu", "model": "llama"},
                ]
            },
        },
        "models": {
            "chat": {"routes": [{"pools": ["local"]}]},
            "coder": {"routes": [{"pools": ["coder"]}]},
            "coder-native": {"routes": [{"pools": ["native"]}]},
            "embed": {
                "kind": "embeddings",
                "aliases": ["text-embedding-3-small"],
                "routes": [{"pools": ["embed"]}],
            },
            "embed-floats": {"kind": "embeddings", "routes": [{"pools": ["embed-floats"]}]},
            "claude": {"routes": [{"pools": ["anthropic"]}]},
            "mixed": {"routes": [{"pools": ["mixed"]}]},
        },
        "teams": {"research": {}, "other": {"models": ["chat"]}},
        "keys": [
            {"id": "ci", "team": "research", "key": DEMO_KEY},
            {"id": "o", "team": "other", "key": OTHER_KEY},
        ],
    }


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    f = Fakes()
    await f.start()
    yield f
    await f.stop()


@pytest.fixture
async def gw(fakes: Fakes) -> AsyncIterator[Running]:
    running = await start_gateway(config(fakes))
    yield running
    await running.stop()


@pytest.fixture
async def client(gw: Running) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=DEMO_KEY, max_retries=0) as c:
        yield c


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------- embeddings


@pytest.mark.parametrize(
    ("given", "texts", "tokens"),
    [
        ("the quick brown fox", ["the quick brown fox"], 4),
        (["one two", "three"], ["one two", "three"], 3),
        ([11, 22, 33], ["11 22 33"], 3),
        ([[1, 2], [3, 4, 5]], ["1 2", "3 4 5"], 5),
    ],
    ids=["string", "strings", "token-ids", "token-id-lists"],
)
@pytest.mark.parametrize("encoding", ["base64", "float"])
async def test_embeddings_every_input_form(
    client: openai.AsyncOpenAI, fakes: Fakes, given: Any, texts: list[str], tokens: int,
    encoding: str,
) -> None:  # fmt: skip
    kwargs: dict[str, Any] = {"encoding_format": "float"} if encoding == "float" else {}
    raw = await client.embeddings.with_raw_response.create(model="embed", input=given, **kwargs)
    result = raw.parse()
    assert result.model == "embed"
    assert [d.index for d in result.data] == list(range(len(texts)))
    for item, text in zip(result.data, texts, strict=True):
        assert close(item.embedding, vector(text, 8))
    assert result.usage.prompt_tokens == tokens
    assert raw.headers["x-spillway-served-model"] == "BAAI/bge-m3"
    seen = fakes.emb.seen[-1]
    assert seen.path == "/v1/embeddings"
    assert seen.body["model"] == "BAAI/bge-m3" and seen.body["input"] == given
    # the SDK asks for base64 by default and decodes it: relayed as the backend wrote it
    assert seen.body.get("encoding_format") == encoding
    wire = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(wire, str if encoding == "base64" else list)


async def test_embeddings_base64_encoded_by_the_gateway_for_a_float_only_backend(
    client: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    raw = await client.embeddings.with_raw_response.create(
        model="embed-floats", input=["alpha", "beta gamma"], encoding_format="base64"
    )
    data = raw.http_response.json()["data"]
    assert "encoding_format" not in fakes.floats.seen[-1].body  # floats were asked for
    for item, text in zip(data, ["alpha", "beta gamma"], strict=True):
        values = list(struct.unpack(f"<{8}f", base64.b64decode(item["embedding"])))
        assert close(values, vector(text, 8))  # little-endian float32, as OpenAI encodes
    assert raw.parse().usage.prompt_tokens == 3


async def test_embeddings_dimensions_user_and_extras_are_forwarded(
    client: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    result = await client.embeddings.create(
        model="text-embedding-3-small", input="hello", dimensions=4, user="u-1",
        encoding_format="float", extra_body={"truncate_prompt_tokens": 512},
    )  # fmt: skip
    assert result.model == "text-embedding-3-small"
    assert close(result.data[0].embedding, vector("hello", 4))
    body = fakes.emb.seen[-1].body
    assert (body["dimensions"], body["user"], body["truncate_prompt_tokens"]) == (4, "u-1", 512)


@pytest.mark.parametrize(
    ("given", "param", "words"),
    [
        (["x"] * 2049, "input", "at most 2048"),
        ("", "input", "empty string"),
        (["ok", ""], "input[1]", "empty string"),
        ([], "input", "empty array"),
        ([1] * 8193, "input", "at most 8192 tokens"),
        ([[1], [2] * 8193], "input[1]", "at most 8192 tokens"),
    ],
    ids=["too-many", "empty", "empty-item", "empty-array", "long-ids", "long-id-list"],
)
async def test_embeddings_limits_are_clear_400s(
    client: openai.AsyncOpenAI, fakes: Fakes, given: Any, param: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await client.embeddings.create(model="embed", input=given)
    body: dict[str, Any] = err.value.body  # type: ignore[assignment]
    assert body["param"] == param and words in body["message"]
    assert not fakes.emb.seen


async def test_each_model_serves_its_own_endpoints(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await client.embeddings.create(model="chat", input="x")
    assert "chat model" in err.value.message and "/v1/chat/completions" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model="embed", messages=[{"role": "user", "content": "x"}]
        )
    assert "embeddings model" in err.value.message and "/v1/embeddings" in err.value.message
    with pytest.raises(openai.BadRequestError):
        await client.completions.create(model="embed", prompt="x")
    listed = {m.id async for m in client.models.list()}
    assert {"chat", "embed", "text-embedding-3-small", "coder"} <= listed


# -------------------------------------------------------------------- completions


async def test_completion_not_streamed(client: openai.AsyncOpenAI, fakes: Fakes) -> None:
    raw = await client.completions.with_raw_response.create(
        model="chat", prompt=["Once upon", "a time"], max_tokens=3, n=2, echo=True, logprobs=2,
        seed=7, extra_body={"top_k": 5, "min_tokens": 1},
    )  # fmt: skip
    result = raw.parse()
    assert result.model == "chat" and result.object == "text_completion"
    assert [c.text for c in result.choices] == [
        "Once uponw0 w1 w2", "Once uponw0 w1 w2", "a timew0 w1 w2", "a timew0 w1 w2",
    ]  # fmt: skip
    assert result.choices[0].logprobs is not None and result.choices[0].logprobs.tokens
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (4, 12)
    body = fakes.gpu.seen[-1].body
    assert fakes.gpu.seen[-1].path == "/v1/completions"
    assert body["model"] == "llama" and body["prompt"] == ["Once upon", "a time"]
    assert (body["echo"], body["logprobs"], body["n"], body["top_k"]) == (True, 2, 2, 5)


async def test_completion_streamed(client: openai.AsyncOpenAI, fakes: Fakes) -> None:
    stream = await client.completions.create(
        model="chat", prompt="Tell me", max_tokens=4, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "w0 w1 w2 w3"
    assert all(c.model == "chat" for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    stream = await client.completions.create(
        model="chat", prompt="Tell me", max_tokens=2, stream=True
    )
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks)  # the gateway asked for it; not relayed
    assert fakes.gpu.seen[-1].body["stream_options"] == {"include_usage": True}


async def test_fill_in_the_middle_with_the_family_template(
    client: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    result = await client.completions.create(
        model="coder", prompt=PREFIX, suffix=SUFFIX, max_tokens=32, temperature=0
    )
    assert result.choices[0].text == "result = a + b"
    body = fakes.code.seen[-1].body
    assert body["prompt"] == f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"
    assert "suffix" not in body  # vLLM would refuse it
    assert body["stop"] == list(PRESETS["qwen-coder"].stop)  # the client gave none
    assert body["model"] == "Qwen/Qwen2.5-Coder-7B"
    await client.completions.create(model="coder", prompt=PREFIX, suffix=SUFFIX, stop=["\n\n"])
    assert fakes.code.seen[-1].body["stop"] == ["\n\n"]  # the client's own stops are kept


async def test_suffix_without_a_fim_member_is_a_400_naming_the_model(
    client: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await client.completions.create(model="chat", prompt=PREFIX, suffix=SUFFIX)
    assert err.value.body["param"] == "suffix"  # type: ignore[index]
    assert "`chat`" in err.value.message and "fim" in err.value.message
    assert not fakes.gpu.seen


async def test_native_fim_passes_suffix_and_vllm_refuses_it(
    client: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await client.completions.create(model="coder-native", prompt=PREFIX, suffix=SUFFIX)
    assert "suffix is not currently supported" in err.value.message
    assert fakes.gpu.seen[-1].body["suffix"] == SUFFIX


async def test_completions_skip_chat_only_members(client: openai.AsyncOpenAI, fakes: Fakes) -> None:
    for _ in range(4):  # whichever member the rotation puts first
        raw = await client.completions.with_raw_response.create(
            model="mixed", prompt="x", max_tokens=1
        )
        assert raw.headers["x-spillway-backend"] == "gpu"
    assert len(fakes.gpu.seen) == 4


async def test_completions_on_a_chat_only_backend_is_a_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await client.completions.create(model="claude", prompt="x")
    assert "/v1/completions" in err.value.message
    assert err.value.code == "unsupported_endpoint"


# -------------------------------------------------------------------- model lookup


async def test_models_retrieve(gw: Running, client: openai.AsyncOpenAI) -> None:
    model = await client.models.retrieve("embed")
    assert (model.id, model.object, model.owned_by) == ("embed", "model", "spillway")
    assert (await client.models.retrieve("text-embedding-3-small")).id == "text-embedding-3-small"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=OTHER_KEY, max_retries=0) as c:
        assert (await c.models.retrieve("chat")).id == "chat"
        with pytest.raises(openai.NotFoundError):
            await c.models.retrieve("embed")  # exists, but not for this team
    async with openai.AsyncOpenAI(
        base_url=gw.url + "/openai/v1", api_key=DEMO_KEY, max_retries=0
    ) as c:
        assert (await c.models.retrieve("coder")).id == "coder"


# ------------------------------------------------------------------------ Azure paths


@pytest.mark.parametrize("auth", ["api-key", "bearer"])
async def test_azure_client_on_deployment_paths(gw: Running, fakes: Fakes, auth: str) -> None:
    creds: dict[str, Any] = (
        {"api_key": DEMO_KEY} if auth == "api-key" else {"azure_ad_token": DEMO_KEY}
    )
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=gw.url, api_version="2024-10-21", max_retries=0, **creds
    ) as az:
        chat = await az.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert chat.choices[0].message.content == "w0 w1"
        emb = await az.embeddings.create(model="embed", input="hello")
        assert close(emb.data[0].embedding, vector("hello", 8))
        done = await az.completions.create(model="chat", prompt="hi", max_tokens=1)
        assert done.choices[0].text == "w0"
    assert fakes.gpu.seen[-2].body["model"] == "llama"
    assert fakes.emb.seen[-1].body["model"] == "BAAI/bge-m3"
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=gw.url, api_version="2024-10-21", azure_deployment="embed",
        max_retries=0, **creds,
    ) as az:  # fmt: skip
        # the deployment in the path is the model, whatever the body says
        emb = await az.embeddings.create(model="ignored-by-the-path", input="x")
        assert emb.model == "embed"
