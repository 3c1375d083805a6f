"""LangChain's OpenAIEmbeddings (a RAG application's usual client) through the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from langchain_openai import OpenAIEmbeddings
from pydantic import SecretStr

from tests.conftest import DEMO_KEY
from tests.support.fake_endpoints import vector
from tests.support.fakes import FakeOpenAI
from tests.support.gateway import Running, start_gateway


def config(upstream: FakeOpenAI) -> dict[str, Any]:
    return {
        "backends": {"emb": {"provider": "openai", "url": upstream.url}},
        "pools": {"embed": {"members": [{"backend": "emb", "model": "BAAI/bge-m3"}]}},
        "models": {"embed": {"kind": "embeddings", "routes": [{"pools": ["embed"]}]}},
        "teams": {"rag": {"models": ["embed"]}},
        "keys": [{"id": "rag-app", "team": "rag", "key": DEMO_KEY}],
    }


@pytest.fixture
async def gw(upstream: FakeOpenAI) -> AsyncIterator[Running]:
    running = await start_gateway(config(upstream))
    yield running
    await running.stop()


async def test_openai_embeddings_documents_and_query(gw: Running, upstream: FakeOpenAI) -> None:
    # check_embedding_ctx_length would fetch tiktoken's vocabulary from the network;
    # without it LangChain sends the texts themselves
    async with httpx.AsyncClient() as http:  # closed here (LangChain's own is not)
        embeddings = OpenAIEmbeddings(
            model="embed", base_url=gw.base_url, api_key=SecretStr(DEMO_KEY),
            check_embedding_ctx_length=False, chunk_size=2, max_retries=0,
            http_async_client=http,
        )  # fmt: skip
        docs = ["spillways carry floods", "dams hold water", "turbines hum"]
        vectors = await embeddings.aembed_documents(docs)
        query = await embeddings.aembed_query("what holds water?")
    assert len(vectors) == 3
    for got, text in zip(vectors, docs, strict=True):
        assert all(abs(a - b) < 1e-6 for a, b in zip(got, vector(text, 8), strict=True))
    assert all(
        abs(a - b) < 1e-6 for a, b in zip(query, vector("what holds water?", 8), strict=True)
    )
    batches = [s.body["input"] for s in upstream.seen]
    assert batches == [docs[:2], docs[2:], ["what holds water?"]]  # chunk_size=2
    assert all(s.body["model"] == "BAAI/bge-m3" for s in upstream.seen)
