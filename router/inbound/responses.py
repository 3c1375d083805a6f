"""``POST /v1/responses``: OpenAI's Responses contract (Codex, the Agents SDK, pydantic-ai).

Passed through to a backend that speaks Responses (OpenAI, Azure, a vLLM member
declaring ``responses: native``); bridged statelessly to chat completions for
the rest (:mod:`router.inbound.responses_bridge`, :mod:`router.inbound.responses_stream`).

State: with ``responses.store`` configured, each response (unless the client
sent ``store: false``) is kept with its conversation for the team that made it
(:mod:`router.inbound.responses_store`): ``previous_response_id`` prepends the
kept conversation to the new input before routing (so any backend can take
the next turn, and quotas reserve the whole prompt), and ``GET`` / ``DELETE
/v1/responses/{id}`` read and drop it. Without a store, ``store: false`` and
stateless clients work as ever; ``previous_response_id`` is a 400 saying how to
turn the store on.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from typing import Any

import orjson

from router.errors import InvalidRequest, NotFound, ServiceUnavailable, SpillwayError
from router.inbound.base import AnswerTranslator, ClientCall, Codec, validate
from router.inbound.responses_bridge import ResponsesToChat, response_shell
from router.inbound.responses_contract import ResponsesRequest
from router.inbound.responses_store import CallState, ResponseStore, Stored
from router.inbound.responses_stream import TERMINAL, failed_response, sse, terminal_event
from router.quota import tokens as tokenest

log = logging.getLogger("spillway.responses")

STORE_OFF = (
    "previous_response_id needs the gateway to keep responses, and this gateway keeps "
    "none: set `responses: {store: {ttl_seconds: 86400}}` in its config, or send the "
    "whole conversation as input with store: false."
)
_RESP_ID = re.compile(rb'"id"\s*:\s*"(resp[^"\\]{0,200})"')
_SEP = b"\x1e"
_NO_PREVIOUS = re.compile(rb'"previous_response_id"\s*:\s*null')


def bound(raw: bytes) -> int:
    """:func:`router.quota.tokens.bound` for a Responses body, whose images
    (``input_image``) name ``image_url`` once each, not twice as chat's do."""
    images = raw.count(b'"input_image"')
    if not images:
        return tokenest.bound(raw)
    counted = raw.count(b'"image_url"') // 2 or 1
    return tokenest.bound(raw) + max(0, images - counted) * tokenest.IMAGE_TOKENS


def estimate(req: ResponsesRequest, raw_size: int) -> int:
    """A typical prompt-token count: about four characters per token."""
    if isinstance(req.input, str):
        return (len(req.input) + len(req.instructions or "")) // 4 + 1
    return raw_size // 4 + 1


def opening(req: ResponsesRequest, limit: int) -> bytes:
    """A 16-byte digest of the conversation's opening: the instructions and each
    message up to and including the first user message, at most ``limit`` bytes."""
    h = hashlib.blake2b(digest_size=16)
    left = limit
    if req.instructions:
        data = req.instructions.encode()[:left]
        h.update(b"system" + _SEP + data + _SEP)
        left -= len(data)
    items = [] if req.input is None else req.input
    if isinstance(items, str):
        h.update(b"user" + _SEP + items.encode()[:left])
        return h.digest()
    for item in items:
        if left <= 0 or item.kind != "message":
            break
        h.update((item.role or "").encode() + _SEP)
        parts = [item.content] if isinstance(item.content, str) else item.content or []
        for part in parts:
            text = part if isinstance(part, str) else part.text or part.image_url or part.type
            data = text.encode()[:left]
            h.update(data)
            left -= len(data)
        h.update(_SEP)
        if item.role == "user":
            break
    return h.digest()


class NativeWatch:
    """A passed-through answer, watched: the response id and event count (for an
    in-band failure), and, when the response is to be kept, the Response itself (its
    stream's last event held back until it is kept)."""

    def __init__(self, call: ClientCall, state: CallState) -> None:
        self.call = call
        self.state = state
        self.rid: str | None = None
        self.seq = 0
        self.held = b""
        self.ended = False
        state.progress = self

    def body(self, data: bytes) -> bytes:
        previous = self.state.previous
        if self.state.keep or previous is not None:
            try:
                doc = orjson.loads(data)
            except orjson.JSONDecodeError:
                return data
            if isinstance(doc, dict) and isinstance(doc.get("output"), list):
                self.state.final = doc
                if previous is not None:  # the backend got the conversation, not the id
                    doc["previous_response_id"] = previous
                    return orjson.dumps(doc)
        return data

    def chunk(self, data: bytes) -> bytes:
        previous = self.state.previous
        if previous is not None:  # the backend got the conversation, not the id
            data = _NO_PREVIOUS.sub(b'"previous_response_id":' + orjson.dumps(previous), data)
        if self.rid is None:
            found = _RESP_ID.search(data)
            if found is not None:
                self.rid = found.group(1).decode()
        self.seq += data.count(b"\n\n")
        if self.held:
            self.held += data
            return b""
        if not any(kind in data for kind in TERMINAL):
            return data
        start = 0
        for event in data.split(b"\n\n"):
            doc = terminal_event(event)
            if doc is not None:
                self.ended = True
                if doc.get("type") != "response.failed" and self.state.keep:
                    self.state.final = doc.get("response")
                    self.held = data[start:]  # held until the response is kept
                    return data[:start]
                return data
            start += len(event) + 2
        return data

    def finish(self) -> bytes:
        held, self.held = self.held, b""
        return held

    def failure(self, exc: SpillwayError) -> bytes:
        if self.held:  # the response was complete when the connection broke
            return self.finish()
        if self.ended:
            return b""
        self.ended = True
        doc = failed_response(self.call, self.rid or "resp_unknown", exc)
        fields = {"type": "response.failed", "sequence_number": self.seq, "response": doc}
        return sse("response.failed", fields)


class ResponsesCodec(Codec):
    endpoint = "responses"
    api = "responses"
    kind = "chat"
    path = "/v1/responses"
    bridges = {"chat": ResponsesToChat()}

    def __init__(self, store: ResponseStore | None = None) -> None:
        self.store = store

    def prefix_key(self, request: ResponsesRequest, limit: int) -> bytes:
        return opening(request, limit)

    def parse(self, raw: bytes, model: str | None = None) -> ClientCall:
        req, doc = validate(ResponsesRequest, raw, model)
        if req.background:
            raise InvalidRequest(
                "background responses are not supported by this gateway; stream instead.",
                param="background", code="unsupported_parameter",
            )  # fmt: skip
        if req.conversation is not None:
            raise InvalidRequest(
                "conversation is not supported by this gateway; use previous_response_id "
                "or send the conversation as input.",
                param="conversation", code="unsupported_parameter",
            )  # fmt: skip
        if req.previous_response_id is not None and self.store is None:
            raise InvalidRequest(STORE_OFF, param="previous_response_id", code="store_disabled")
        size = len(raw)
        return ClientCall(
            codec=self, request=req, raw=raw, doc=doc, model=req.model, stream=bool(req.stream),
            max_output=req.max_output_tokens, outputs=1, prompt_bound=bound(raw),
            estimate=lambda: estimate(req, size), user=req.user, tools=bool(req.tools),
            state=CallState(keep=self.store is not None and req.store is not False),
        )  # fmt: skip

    async def prepare(self, call: ClientCall, team: str) -> None:
        state: CallState = call.state
        state.team = team
        req: ResponsesRequest = call.request
        rid = req.previous_response_id
        if rid is None or self.store is None:
            return
        try:
            stored = await self.store.get(rid, team)
        except Exception as exc:  # noqa: BLE001 - the store's client raises its own kinds
            raise _unavailable(exc) from None
        if stored is None:
            raise NotFound(
                f"Previous response with id '{rid}' not found.",
                param="previous_response_id", code="previous_response_not_found",
            )  # fmt: skip
        doc = orjson.loads(call.raw)
        new = doc.get("input")
        if isinstance(new, str):
            new = [{"type": "message", "role": "user", "content": new}]
        items = [*stored.input, *(stored.response.get("output") or ()), *(new or ())]
        doc["input"] = items
        doc["model"] = req.model
        del doc["previous_response_id"]
        raw = orjson.dumps(doc)
        expanded, call.doc = validate(ResponsesRequest, raw, None)
        call.request, call.raw = expanded, raw
        call.prompt_bound = bound(raw)
        call.estimate = lambda: estimate(expanded, len(raw))
        state.previous, state.input = rid, items

    def own_answers(self, call: ClientCall) -> AnswerTranslator | None:
        return NativeWatch(call, call.state)

    async def answered(self, call: ClientCall) -> None:
        state: CallState = call.state
        final = state.final
        if not state.keep or self.store is None or not isinstance(final, dict):
            return
        rid = final.get("id")
        if not isinstance(rid, str) or final.get("status") not in ("completed", "incomplete"):
            return
        if state.input is None:
            new = orjson.loads(call.raw).get("input")
            state.input = (
                [{"type": "message", "role": "user", "content": new}]
                if isinstance(new, str)
                else list(new or ())
            )
        final["store"] = True
        if state.previous is not None:
            final["previous_response_id"] = state.previous
        try:
            await self.store.put(rid, Stored(state.team, state.input, final))
        except Exception as exc:  # noqa: BLE001 - the answer is delivered all the same
            log.warning("response %s not kept: %s", rid, exc)

    def stream_failure(self, exc: SpillwayError, call: ClientCall) -> bytes:
        state: CallState | None = call.state
        if state is not None and state.progress is not None:
            return state.progress.failure(exc)
        doc = response_shell(call, "resp_unknown", time.time())
        doc["status"], doc["error"] = "failed", {"code": "server_error", "message": exc.message}
        return sse("response.failed", {"type": "response.failed", "sequence_number": 0,
                                       "response": doc})  # fmt: skip

    # -- GET / DELETE /v1/responses/{id} ------------------------------------------------
    def _store(self) -> ResponseStore:
        if self.store is None:
            raise InvalidRequest(
                "This gateway keeps no responses: set `responses: {store: {ttl_seconds: "
                "86400}}` in its config to read them back.", code="store_disabled",
            )  # fmt: skip
        return self.store

    async def retrieve(self, rid: str, team: str) -> dict[str, Any]:
        store = self._store()
        try:
            stored = await store.get(rid, team)
        except Exception as exc:  # noqa: BLE001 - the store's client raises its own kinds
            raise _unavailable(exc) from None
        if stored is None:
            raise NotFound(f"Response with id '{rid}' not found.", code="not_found")
        return stored.response

    async def delete(self, rid: str, team: str) -> dict[str, Any]:
        store = self._store()
        try:
            deleted = await store.delete(rid, team)
        except Exception as exc:  # noqa: BLE001
            raise _unavailable(exc) from None
        if not deleted:
            raise NotFound(f"Response with id '{rid}' not found.", code="not_found")
        return {"id": rid, "object": "response.deleted", "deleted": True}


def _unavailable(exc: Exception) -> ServiceUnavailable:
    log.warning("response store unavailable: %s", exc)
    return ServiceUnavailable("The response store is unavailable; retry shortly.")
