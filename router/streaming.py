"""SSE framing on bytes.

The relay works per received buffer, not per event: it holds back a partial
event, swaps the model name (one split and join, which also counts the chunks)
and looks for the usage chunk only near the end of the buffer, since it is the
last chunk before ``[DONE]``. JSON is parsed only for the usage chunk.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson

from router.errors import MIN_SECRET, mask

DONE = b"data: [DONE]\n\n"
_USAGE = re.compile(rb'"usage":\s*\{')
USAGE_WINDOW = 8192  # bytes at the end of a buffer searched for the usage chunk
_MODEL = re.compile(rb'"model":\s*"(?:[^"\\]|\\.)+"')


def event(obj: Any) -> bytes:
    """One ``data: {json}`` SSE event."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_event(envelope: dict[str, Any]) -> bytes:
    """An in-band error (OpenAI's error object), then ``[DONE]``."""
    return event(envelope) + DONE


class SSERelay:
    """Rewrites an OpenAI-format SSE byte stream buffer by buffer.

    * ``model`` values are swapped from the backend's name to the client's (the
      name the stream itself uses, which hosted APIs may spell differently,
      e.g. a dated snapshot or an Azure deployment's model, is learnt from the
      first event that carries one);
    * the usage chunk is read, and dropped unless the client asked for it;
    * data events are counted (a fallback when no usage arrives);
    * an in-band error event (OpenAI's ``{"error": ...}``, vLLM's
      ``{"object": "error", ...}``, an ``event: error`` line, however escaped) is
      decoded and scrubbed of the backend's credentials (``secrets``) before it
      is passed on.
    """

    __slots__ = (
        "_from", "_keep_usage", "_learnt", "_raw", "_secrets", "_tail", "_to", "events", "usage",
    )  # fmt: skip

    def __init__(
        self, backend_model: str, client_model: str, keep_usage: bool,
        secrets: Sequence[str] = (),
    ) -> None:  # fmt: skip
        self._secrets = tuple(s for s in secrets if len(s) >= MIN_SECRET)
        self._raw = tuple(s.encode() for s in self._secrets)
        self._to = b'"model":' + orjson.dumps(client_model)
        self._from: bytes | None = None
        if backend_model != client_model:
            self._from = b'"model":' + orjson.dumps(backend_model)
        self._learnt = False
        self._keep_usage = keep_usage
        self._tail = b""
        self.events = 0
        self.usage: dict[str, Any] | None = None

    def feed(self, data: bytes) -> bytes:
        buf = self._tail + data if self._tail else data
        cut = buf.rfind(b"\n\n")  # relay whole events only
        if cut < 0:
            cut = buf.rfind(b"\r\n\r\n")
            if cut < 0:
                self._tail = buf
                return b""
            cut += 2
        cut += 2
        if cut == len(buf):
            head, self._tail = buf, b""
        else:
            head, self._tail = buf[:cut], buf[cut:]
        return self._process(head)

    def flush(self) -> bytes:
        tail, self._tail = self._tail, b""
        return self._process(tail) if tail else b""

    def _process(self, head: bytes) -> bytes:
        if not self._learnt:
            found = _MODEL.search(head)
            if found is not None:
                self._learnt = True
                served = found.group(0)
                self._from = None if served == self._to else served
        # the usage chunk is the last one before [DONE]: look only near the end
        pos = head.rfind(b'"usage"', max(0, len(head) - USAGE_WINDOW))
        cut = None if pos < 0 or _USAGE.match(head, pos) is None else self._take_usage(head, pos)
        if self._from is not None:
            parts = head.split(self._from)  # one pass: swap, and count the chunks
            self.events += len(parts) - 1
            if cut is not None:  # dropped from the pieces: no copy of the whole buffer
                _drop(parts, len(self._from), len(head), *cut)
            head = self._to.join(parts)
        else:
            self.events += head.count(b"\n") // 2
            if cut is not None:
                view = memoryview(head)
                head = b"".join((view[: cut[0]], view[cut[1] :]))
        if self._raw and self._may_carry_secrets(head):
            head = self._scrub_errors(head)
        return head

    def _take_usage(self, head: bytes, pos: int) -> tuple[int, int] | None:
        """Read the usage chunk at ``pos``; the span of ``head`` to drop (None: keep)."""
        start = head.rfind(b"data:", 0, pos)
        end = head.find(b"\n", pos)
        if end < 0:
            end = len(head)
        try:
            doc = orjson.loads(head[start + 5 : end])
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("usage"), dict):
            return None
        self.usage = doc["usage"]
        if self._keep_usage or doc.get("choices"):
            return None
        cut_end = end + 1
        if head[cut_end : cut_end + 1] == b"\n":
            cut_end += 1
        return start, cut_end

    def _may_carry_secrets(self, head: bytes) -> bool:
        """An error (``error`` however spelt) or a credential's raw bytes."""
        if b"rror" in head:
            return True
        for raw in self._raw:  # noqa: SIM110 - per buffer: no generator
            if raw in head:
                return True
        return False

    def _scrub_errors(self, head: bytes) -> bytes:
        """Lines that may carry an error (``error`` in any spelling, ``"\\u0065rror"``
        included) or a credential: the backend's credentials masked on the decoded
        text (a JSON event is decoded, masked and encoded again; any other line is
        masked in every escaped form)."""
        secrets, raw = self._secrets, self._raw
        lines = head.split(b"\n")
        for i, line in enumerate(lines):
            if b"rror" not in line and not any(r in line for r in raw):
                continue
            if line[:5] == b"data:":
                try:
                    doc = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    pass
                else:
                    clean = scrub_json(doc, secrets)
                    if clean != doc:
                        end = b"\r" if line[-1:] == b"\r" else b""
                        lines[i] = b"data: " + orjson.dumps(clean) + end
                    continue
            text = line.decode("utf-8", "surrogateescape")
            for secret in secrets:
                text = mask(text, secret)
            lines[i] = text.encode("utf-8", "surrogateescape")
        return b"\n".join(lines)


def _drop(parts: list[bytes], gap: int, size: int, start: int, end: int) -> None:
    """Drop ``[start, end)`` (near the end) of the ``size`` bytes that ``parts`` came
    from, split on a separator ``gap`` bytes long; only the pieces it touches are copied."""
    i = len(parts) - 1
    at = size  # where parts[i] ends in the buffer
    while at - len(parts[i]) > end:  # parts[i] starts after the span
        at -= len(parts[i]) + gap
        i -= 1
    last, last_at = i, at - len(parts[i])  # the piece the span ends in (or before)
    while at - len(parts[i]) > start:
        at -= len(parts[i]) + gap
        i -= 1
    first_at = at - len(parts[i])
    keep = parts[i][: max(0, start - first_at)] + parts[last][max(0, end - last_at) :]
    parts[i : last + 1] = [keep]


def scrub_json(node: Any, secrets: Sequence[str]) -> Any:
    """``node`` (decoded JSON) with ``secrets`` masked in every string."""
    if isinstance(node, str):
        for secret in secrets:
            node = mask(node, secret)
        return node
    if isinstance(node, dict):
        return {scrub_json(k, secrets): scrub_json(v, secrets) for k, v in node.items()}
    if isinstance(node, list):
        return [scrub_json(v, secrets) for v in node]
    return node
