"""The codecs the app serves, by endpoint name."""

from __future__ import annotations

from router.inbound.base import Codec
from router.inbound.chat import ChatCodec
from router.inbound.completions import CompletionsCodec
from router.inbound.embeddings import EmbeddingsCodec
from router.inbound.messages import CountTokensCodec, MessagesCodec
from router.inbound.responses import ResponsesCodec
from router.inbound.responses_store import ResponseStore


def openai_codecs(responses: ResponseStore | None = None) -> dict[str, Codec]:
    """``responses``: where Responses are kept (None: nothing is kept)."""
    codecs: list[Codec] = [
        ChatCodec(),
        CompletionsCodec(),
        EmbeddingsCodec(),
        MessagesCodec(),
        CountTokensCodec(),
        ResponsesCodec(responses),
    ]
    return {c.endpoint: c for c in codecs}


def served_paths(codecs: dict[str, Codec], kind: str) -> str:
    """The paths a model of ``kind`` serves, for messages."""
    return " and ".join(c.path for c in codecs.values() if c.kind == kind)
