"""Embeddings on OpenAI-compatible backends: what is sent, and the answer relayed
without parsing the vectors (model swapped, usage read from the end)."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from router.config import Backend
from router.errors import BackendRejectedParam, UpstreamError
from router.inbound.contracts import EmbeddingRequest
from router.providers.base import Call
from router.providers.embeddings import EmbeddingsAdapter
from router.providers.openai import OpenAIBackend


class Recorder:
    """Stands in for the upstream: records what would be posted."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def post(self, url: str, headers: Any, body: bytes, limits: Any, **_: Any) -> Any:
        self.sent.append((url, body))
        return None


def make(
    body: dict[str, Any], member: str = "bge", **cfg: Any
) -> tuple[EmbeddingsAdapter, Recorder]:
    recorder = Recorder()
    backend = OpenAIBackend(
        "gpu",
        Backend(provider="openai", url="http://gpu:8000/v1", **cfg),
        recorder,  # type: ignore[arg-type]
    )
    raw = orjson.dumps({"model": "embed", **body})
    call = Call(
        request=EmbeddingRequest.model_validate_json(raw), raw=raw, client_model="embed",
        member_model=member, max_tokens=None, clamped=False, default_max_tokens=16,
        request_id="r", forward_headers={}, api="embeddings",
    )  # fmt: skip
    adapter = backend.adapter(call)
    assert isinstance(adapter, EmbeddingsAdapter)
    return adapter, recorder


def answer(vector: Any = (0.5, -0.25), **extra: Any) -> bytes:
    return orjson.dumps({
        "object": "list", "model": "bge",
        "data": [{"object": "embedding", "index": 0, "embedding": list(vector)}],
        "usage": {"prompt_tokens": 3, "total_tokens": 3}, **extra,
    })  # fmt: skip


async def test_sent_to_the_embeddings_path_with_the_member_model() -> None:
    adapter, rec = make({"input": "x", "dimensions": 2})
    await adapter.open()
    url, body = rec.sent[0]
    assert url == "http://gpu:8000/v1/embeddings"
    assert orjson.loads(body) == {"model": "bge", "input": "x", "dimensions": 2}
    adapter, rec = make({"input": "x"}, member="embed")
    await adapter.open()
    assert rec.sent[0][1] == b'{"model":"embed","input":"x"}'  # the client's bytes


async def test_openai_flavour_policy_on_vllm_extras() -> None:
    adapter, rec = make({"input": "x", "normalize": False}, flavour="openai")
    await adapter.open()
    assert "normalize" not in orjson.loads(rec.sent[0][1])
    adapter, rec = make(
        {"input": "x", "normalize": False}, flavour="openai", unsupported_params="reject"
    )
    with pytest.raises(BackendRejectedParam) as err:
        await adapter.open()
    assert err.value.param == "normalize"


def test_answer_relayed_with_the_client_model_and_usage() -> None:
    adapter, _ = make({"input": "x"})
    out = adapter.transform_body(answer())
    doc = orjson.loads(out)
    assert doc["model"] == "embed" and doc["data"][0]["embedding"] == [0.5, -0.25]
    assert adapter.usage is not None and adapter.usage.prompt_tokens == 3
    assert out.replace(b'"embed"', b'"bge"') == answer()  # nothing else changed


def test_usage_elsewhere_or_missing() -> None:
    adapter, _ = make({"input": "x"})
    body = b'{"usage":{"prompt_tokens":4,"total_tokens":4},"model":"bge","data":[]}'
    assert orjson.loads(adapter.transform_body(body))["model"] == "embed"
    assert adapter.usage is not None and adapter.usage.prompt_tokens == 4
    adapter, _ = make({"input": "x"})
    adapter.transform_body(b'{"model":"bge","data":[]}')
    assert adapter.usage is not None and not adapter.usage.reported  # estimated at settlement


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[1,2]", b'{"usage": {"prompt_tokens": 1}, "data": [}',
             b'{"model":"bge"}'],
)  # fmt: skip
def test_unusable_answers_are_upstream_errors(body: bytes) -> None:
    adapter, _ = make({"input": "x"})
    with pytest.raises(UpstreamError):
        adapter.transform_body(body)


async def test_base64_encoded_for_a_backend_that_cannot() -> None:
    adapter, rec = make({"input": "x", "encoding_format": "base64"},
                        deny_params=["encoding_format"])  # fmt: skip
    await adapter.open()
    assert "encoding_format" not in orjson.loads(rec.sent[0][1])
    doc = orjson.loads(adapter.transform_body(answer((0.5, -0.25, 1.0))))
    raw = base64.b64decode(doc["data"][0]["embedding"])
    assert struct.unpack("<3f", raw) == (0.5, -0.25, 1.0)
    assert doc["model"] == "embed" and adapter.usage is not None
    adapter, _ = make({"input": "x", "encoding_format": "base64"},
                      deny_params=["encoding_format"])  # fmt: skip
    with pytest.raises(UpstreamError):
        adapter.transform_body(answer(("a", "b")))
    # a client asking for floats from such a backend gets them as they are
    adapter, rec = make({"input": "x", "encoding_format": "float"},
                        deny_params=["encoding_format"])  # fmt: skip
    await adapter.open()
    assert "encoding_format" not in orjson.loads(rec.sent[0][1])
    assert orjson.loads(adapter.transform_body(answer()))["data"][0]["embedding"] == [0.5, -0.25]
