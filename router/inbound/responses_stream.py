"""Chat-completions answers -> Responses answers, for one bridged attempt.

A stream becomes Responses' typed events, each with its ``sequence_number``:
``response.created`` and ``response.in_progress`` first; then per output item
``response.output_item.added``, its deltas (``response.output_text.delta``
inside a ``content_part``, ``response.reasoning_text.delta``,
``response.function_call_arguments.delta`` in the order the backend streamed
the arguments), its ``.done`` events and ``response.output_item.done``; last
``response.completed`` (``response.incomplete`` after a length stop) with the
whole Response and its usage. The last event is written when the stream ends
(:meth:`ChatToResponses.finish`), after the codec has kept the response.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from router.errors import SpillwayError
from router.inbound.base import ClientCall
from router.inbound.responses_bridge import (
    custom_input,
    finish,
    function_item,
    new_id,
    response_from_chat,
    response_shell,
    tool_origins,
    usage_of,
)

TERMINAL = (b"response.completed", b"response.incomplete", b"response.failed")


def terminal_event(event: bytes) -> dict[str, Any] | None:
    """The data of a stream's last event (completed, incomplete, failed), else None."""
    head = event[:64]
    if not any(kind in head for kind in TERMINAL) and b'"type":"response.' not in head:
        return None
    for line in event.split(b"\n"):
        if line.startswith(b"data:") and any(kind in line[:80] for kind in TERMINAL):
            try:
                doc = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return None
            if isinstance(doc, dict) and doc.get("type") in (
                "response.completed", "response.incomplete", "response.failed",
            ):  # fmt: skip
                return doc
    return None


def sse(kind: str, fields: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(fields) + b"\n\n"


def failed_response(call: ClientCall, rid: str, exc: SpillwayError) -> dict[str, Any]:
    doc = response_shell(call, rid, time.time())
    doc["status"] = "failed"
    code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
    doc["error"] = {"code": code, "message": exc.message}
    return doc


class _Item:
    __slots__ = ("index", "item", "kind", "parts")

    def __init__(self, kind: str, index: int, item: dict[str, Any]) -> None:
        self.kind = kind
        self.index = index
        self.item = item
        self.parts: list[str] = []


class ChatToResponses:
    """One attempt's chat answers -> Responses (an :class:`AnswerTranslator`)."""

    def __init__(self, call: ClientCall) -> None:
        self.call = call
        self.rid = new_id("resp")
        self.seq = 0
        self.started = False
        self.ended = False
        self.doc = response_shell(call, self.rid, time.time())
        self.items: list[_Item] = []
        self.open: _Item | None = None
        self.tools: dict[int, _Item] = {}  # the chat tool-call index -> its item
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False  # the backend's stream reached [DONE]
        self.names = tool_origins(call.request.tools)
        self._tail = b""
        if call.state is not None:
            call.state.progress = self

    # -- a complete answer --------------------------------------------------------------
    def body(self, data: bytes) -> bytes:
        doc = response_from_chat(self.call, orjson.loads(data), self.rid)
        if self.call.state is not None:
            self.call.state.final = doc
        return orjson.dumps(doc)

    # -- a stream -----------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> bytes:
        out = sse(kind, {"type": kind, "sequence_number": self.seq, **fields})
        self.seq += 1
        return out

    def _start(self) -> bytes:
        self.started = True
        return self._event("response.created", response=self.doc) + self._event(
            "response.in_progress", response=self.doc
        )

    def chunk(self, data: bytes) -> bytes:
        out = b"" if self.started else self._start()
        buf = (self._tail + data).replace(b"\r\n", b"\n")
        *events, self._tail = buf.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data:") and not self.ended:
                    out += self._data(line[5:].strip())
        return out

    def _data(self, payload: bytes) -> bytes:
        if payload == b"[DONE]":
            self.done = True
            return b""
        if not payload:
            return b""
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return b""
        if not isinstance(doc, dict):
            return b""
        if isinstance(doc.get("error"), dict):  # the backend failed in-band
            err = doc["error"]
            exc = SpillwayError(str(err.get("message") or "The backend failed."))
            return self.failure(exc)
        if isinstance(doc.get("usage"), dict):
            self.usage = usage_of(doc["usage"])
        out = b""
        for choice in doc.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(thought, str) and thought:
                out += self._text("reasoning", thought)
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._text("message", text)
            for tc in delta.get("tool_calls") or ():
                if isinstance(tc, dict):
                    out += self._tool(tc)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _text(self, kind: str, text: str) -> bytes:
        out = b""
        item = self.open
        if item is None or item.kind != kind:
            out += self._close()
            item = self._open_text(kind)
            out += self._added(item)
        item.parts.append(text)
        iid = item.item["id"]
        if kind == "message":
            return out + self._event(
                "response.output_text.delta", item_id=iid, output_index=item.index,
                content_index=0, delta=text, logprobs=[],
            )  # fmt: skip
        return out + self._event(
            "response.reasoning_text.delta", item_id=iid, output_index=item.index,
            content_index=0, delta=text,
        )  # fmt: skip

    def _open_text(self, kind: str) -> _Item:
        if kind == "message":
            item = {"id": new_id("msg"), "type": "message", "role": "assistant",
                    "status": "in_progress", "content": []}  # fmt: skip
        else:
            item = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": []}
        return self._new(kind, item)

    def _new(self, kind: str, item: dict[str, Any]) -> _Item:
        opened = self.open = _Item(kind, len(self.items), item)
        self.items.append(opened)
        return opened

    def _added(self, item: _Item) -> bytes:
        out = self._event("response.output_item.added", output_index=item.index,
                          item=dict(item.item))  # fmt: skip
        if item.kind == "message":
            out += self._event(
                "response.content_part.added", item_id=item.item["id"], output_index=item.index,
                content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                       "logprobs": []},
            )  # fmt: skip
        return out

    def _tool(self, tc: dict[str, Any]) -> bytes:
        index = tc.get("index", 0)
        fn = tc.get("function") or {}
        out = b""
        item = self.tools.get(index) if isinstance(index, int) else None
        if item is None:
            out += self._close()
            name = str(fn.get("name") or "")
            call_id = str(tc.get("id") or new_id("call"))
            doc = function_item(new_id("fc"), call_id, name, "", self.names, "in_progress")
            item = self._new(doc["type"], doc)
            if isinstance(index, int):
                self.tools[index] = item
            out += self._added(item)
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            item.parts.append(args)
            if item.kind == "custom_tool_call":
                return out  # its input is known once the arguments are whole
            out += self._event(
                "response.function_call_arguments.delta", item_id=item.item["id"],
                output_index=item.index, delta=args,
            )  # fmt: skip
        return out

    def _close(self) -> bytes:
        item, self.open = self.open, None
        if item is None:
            return b""
        text = "".join(item.parts)
        iid, index = item.item["id"], item.index
        doc = item.item
        if item.kind == "message":
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            out = self._event("response.output_text.done", item_id=iid, output_index=index,
                              content_index=0, text=text, logprobs=[])  # fmt: skip
            out += self._event("response.content_part.done", item_id=iid, output_index=index,
                               content_index=0, part=part)  # fmt: skip
            doc["content"], doc["status"] = [part], "completed"
        elif item.kind == "reasoning":
            out = self._event("response.reasoning_text.done", item_id=iid, output_index=index,
                              content_index=0, text=text)  # fmt: skip
            doc["content"] = [{"type": "reasoning_text", "text": text}]
        elif item.kind == "custom_tool_call":
            doc["input"], doc["status"] = custom_input(text), "completed"
            out = self._event("response.custom_tool_call_input.delta", item_id=iid,
                              output_index=index, delta=doc["input"])  # fmt: skip
            out += self._event("response.custom_tool_call_input.done", item_id=iid,
                               output_index=index, input=doc["input"])  # fmt: skip
        else:
            out = self._event("response.function_call_arguments.done", item_id=iid,
                              output_index=index, name=doc["name"], arguments=text)  # fmt: skip
            doc["arguments"], doc["status"] = text, "completed"
        return out + self._event("response.output_item.done", output_index=index, item=doc)

    def finish(self) -> bytes:
        if self.ended:
            return b""
        out = b"" if self.started else self._start()
        if self._tail.strip():
            out += self.chunk(b"\n\n")
        out += self._close()
        for item in self.items:  # a tool call whose arguments were still open
            if item.item.get("status") == "in_progress" and item.kind == "function_call":
                item.item["arguments"], item.item["status"] = "".join(item.parts), "completed"
            elif item.item.get("status") == "in_progress" and item.kind == "custom_tool_call":
                item.item["input"] = custom_input("".join(item.parts))
                item.item["status"] = "completed"
        self.ended = True
        doc = self.doc
        doc["output"] = [item.item for item in self.items]
        finish(doc, self.finish_reason, self.usage)
        if self.call.state is not None:
            self.call.state.final = doc
        kind = "response.completed" if doc["status"] == "completed" else "response.incomplete"
        return out + self._event(kind, response=doc)

    def failure(self, exc: SpillwayError) -> bytes:
        """The stream broke: ``response.failed`` with what was produced so far."""
        if self.done:  # it broke after the whole answer came
            return self.finish()
        if self.ended:
            return b""
        out = b"" if self.started else self._start()
        self.ended = True
        doc = failed_response(self.call, self.rid, exc)
        doc["output"] = [item.item for item in self.items]
        return out + self._event("response.failed", response=doc)
