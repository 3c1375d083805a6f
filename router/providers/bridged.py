"""An adapter whose answers go through a codec's bridge (:mod:`router.inbound.base`).

The backend's own adapter sends the translated request and reads usage as
usual; each answer it produces (in the bridge's API, with the client's model
name) is handed to the attempt's :class:`AnswerTranslator`, which renders it
in the client's API.
"""

from __future__ import annotations

from router.inbound.base import AnswerTranslator
from router.providers.base import Adapter, Opened, Usage


class Bridged:
    __slots__ = ("_inner", "_translator")

    def __init__(self, inner: Adapter, translator: AnswerTranslator) -> None:
        self._inner = inner
        self._translator = translator

    @property
    def usage(self) -> Usage | None:
        return self._inner.usage

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self._inner.usage = value

    async def open(self) -> Opened:
        return await self._inner.open()

    def transform_body(self, body: bytes) -> bytes:
        return self._translator.body(self._inner.transform_body(body))

    def transform_chunk(self, data: bytes) -> bytes:
        out = self._inner.transform_chunk(data)
        return self._translator.chunk(out) if out else b""

    def finish_stream(self) -> bytes:
        tail = self._inner.finish_stream()
        out = self._translator.chunk(tail) if tail else b""
        return out + self._translator.finish()

    def stream_usage_so_far(self) -> Usage | None:
        return self._inner.stream_usage_so_far()
