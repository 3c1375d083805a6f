"""A real aiohttp server that speaks Anthropic's Messages API (``POST /v1/messages``).

It enforces the rules the API enforces and a translator can get wrong, and
answers violations the way Anthropic does (HTTP 400,
``{"type":"error","error":{"type":"invalid_request_error","message":...}}``):

* ``x-api-key`` must match (401 ``authentication_error``) and
  ``anthropic-version`` must be sent;
* ``model`` and ``max_tokens`` are required; unknown top-level keys are refused;
* ``messages`` is non-empty, starts with ``user``, roles alternate, only
  ``user``/``assistant`` roles (the system prompt is top-level), no empty
  content or empty text blocks (except a final assistant turn);
* ``tool_use`` only in assistant turns; every ``tool_use`` is answered by a
  ``tool_result`` in the very next user turn, tool results come first in that
  turn and answer a ``tool_use`` of the previous assistant turn;
* ``tool_choice`` needs tools (and a named tool must exist);
* temperature/top_p/top_k (deprecated by Anthropic) are a 400 for a current model
  (``sampling_deprecated``, the default); for an older model they must be in range;
* every request also passes the official SDK's ``MessageCreateParams`` types.

Answers are deterministic: with tools (and a ``tool_choice`` other than
``none``) and no tool results in the last turn, it calls the named or first
tool with input built from its schema; otherwise it answers words ``w0 w1 ...``
(or, after tool results, ``Result: <the results>``), honouring ``max_tokens``
and ``stop_sequences``. Streams follow the documented event flow, tool input
in small ``input_json_delta`` fragments. Knobs make it fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pydantic
from aiohttp import web
from anthropic.types.beta.message_create_params import MessageCreateParamsBase as BetaParams
from anthropic.types.message_create_params import MessageCreateParamsBase

from tests.support.anthropic_types import validate_request
from tests.support.fake_chat_tools import schema_value
from tests.support.fakes import FakeServer, Seen, play

# Sampling parameters Anthropic deprecated: the SDK no longer has them, current models
# answer 400 to them, older models still take them.
SAMPLING = ("temperature", "top_p", "top_k")
KNOWN_KEYS = set(MessageCreateParamsBase.__annotations__) | {"stream", *SAMPLING}
# the API versions the API takes: the classic one, and what newer SDKs send
VERSIONS = ("2023-06-01", "2026-10-21")
BETA_KEYS = KNOWN_KEYS | set(BetaParams.__annotations__)  # /v1/messages?beta=true


class Invalid(Exception):
    pass


@dataclass
class AnthropicBehaviour:
    api_key: str = "sk-ant-test-key"
    error: tuple[int, str, str] | None = None  # (status, error type, message) for every request
    retry_after: str | None = None
    words: int = 6
    stream_error_after: int | None = None  # an `error` event after this many text deltas
    break_after: int | None = None  # drop the connection after this many events
    cache_read: int = 0  # reported cache_read_input_tokens
    sampling_deprecated: bool = True  # a current model: temperature/top_p/top_k are a 400
    chunk_delay: float = 0.0
    rejected: list[str] = field(default_factory=list)  # messages of refused requests
    use_tools: bool = True  # False: answer text even when tools are given
    tool_name: str | None = None  # the tool to call (default: the named or first one)
    tool_input: dict[str, Any] | None = None  # its input (default: built from its schema)


def error_body(etype: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": etype, "message": message},
        "request_id": "req_fake0123456789",
    }


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content) if isinstance(content, list) else []


def check_rules(body: dict[str, Any], *, beta: bool = False) -> None:
    """Raise :class:`Invalid` with Anthropic's wording for the first broken rule. The
    beta API also takes beta fields and mid-conversation ``system`` turns."""
    if beta:
        body = {**body, "messages": [m for m in body.get("messages") or ()
                                     if m.get("role") != "system"]}  # fmt: skip
    for key in body:
        if key not in (BETA_KEYS if beta else KNOWN_KEYS):
            raise Invalid(f"{key}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid("model: Field required")
    if "max_tokens" not in body:
        raise Invalid("max_tokens: Field required")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        raise Invalid("max_tokens: Input should be greater than or equal to 1")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and not 0 <= value <= 1:
            raise Invalid(f"{name}: Input should be less than or equal to 1")
    top_k = body.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise Invalid("top_k: Input should be greater than or equal to 0")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        for block in system:
            if block.get("type") != "text":
                raise Invalid("system: system prompt blocks must be text")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: at least one message is required")
    prev_tool_ids: set[str] = set()
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise Invalid('messages: first message must use the "user" role')
        if i and messages[i - 1].get("role") == role:
            raise Invalid(
                f'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        blocks = _blocks(msg.get("content"))
        final_assistant = role == "assistant" and i == len(messages) - 1
        if not blocks and not final_assistant:
            raise Invalid(
                f"messages.{i}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        results: set[str] = set()
        seen_other = False
        tool_ids: set[str] = set()
        for j, block in enumerate(blocks):
            kind = block.get("type")
            if kind == "text" and not block.get("text"):
                raise Invalid("messages: text content blocks must be non-empty")
            if kind == "tool_use":
                if role != "assistant":
                    raise Invalid(
                        f"messages.{i}.content.{j}: tool_use is only allowed in assistant messages"
                    )
                tool_ids.add(block["id"])
            elif kind == "tool_result":
                if role != "user":
                    raise Invalid(
                        f"messages.{i}.content.{j}: tool_result is only allowed in user messages"
                    )
                if seen_other:
                    raise Invalid(
                        f"messages.{i}: tool_result blocks must come first in the "
                        "content of a user message"
                    )
                if block["tool_use_id"] not in prev_tool_ids:
                    raise Invalid(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {block['tool_use_id']}. Each `tool_result` "
                        "block must have a corresponding `tool_use` block in the previous "
                        "message."
                    )
                results.add(block["tool_use_id"])
            else:
                seen_other = True
            if kind == "image":
                source = block.get("source") or {}
                if source.get("type") == "base64" and source.get("media_type") not in (
                    "image/jpeg",
                    "image/png",
                    "image/gif",
                    "image/webp",
                ):
                    raise Invalid(f"messages.{i}.content.{j}.source.media_type: invalid")
        if prev_tool_ids and role == "user" and prev_tool_ids - results:
            missing = ", ".join(sorted(prev_tool_ids - results))
            raise Invalid(
                f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {missing}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )
        prev_tool_ids = tool_ids
    tools = body.get("tools") or []
    names = {t.get("name") for t in tools}
    for t, tool in enumerate(tools):
        if (tool.get("input_schema") or {}).get("type") != "object":
            raise Invalid(f"tools.{t}.custom.input_schema.type: Input should be 'object'")
    choice = body.get("tool_choice")
    if choice is not None:
        if choice.get("type") != "none" and not tools:
            raise Invalid("tool_choice: tool_choice may only be specified while providing tools")
        if choice.get("type") == "tool" and choice.get("name") not in names:
            raise Invalid(f"tool_choice: tool {choice.get('name')!r} not found in tools")


def _words_in(body: dict[str, Any]) -> int:
    n = 0
    system = body.get("system")
    for block in _blocks(system) if system else []:
        n += len(block.get("text", "").split())
    for msg in body["messages"]:
        for block in _blocks(msg["content"]):
            n += len(str(block.get("text", "")).split())
        n += 3
    return n


class FakeAnthropic(FakeServer):
    """``await start()``; ``url`` is the base (the API path is ``/v1/messages``)."""

    def __init__(self, behaviour: AnthropicBehaviour | None = None) -> None:
        self.behaviour = behaviour or AnthropicBehaviour()
        self.seen: list[Seen] = []
        self.refused = 0  # requests whose x-api-key was wrong
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count)
        super().__init__(app)

    @property
    def url(self) -> str:
        return self.base

    def _error(
        self, status: int, etype: str, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        return web.json_response(error_body(etype, message), status=status, headers=headers)

    async def _count(self, request: web.Request) -> web.Response:
        """count_tokens: the words of the prompt, as ``usage.input_tokens`` counts them."""
        if request.headers.get("x-api-key") != self.behaviour.api_key:
            self.refused += 1
            return self._error(401, "authentication_error", "invalid x-api-key")
        raw = await request.read()
        body = orjson.loads(raw)
        self.seen.append(Seen(request.path, dict(request.headers), body, raw, dict(request.query)))
        if not isinstance(body.get("model"), str) or not isinstance(body.get("messages"), list):
            return self._error(400, "invalid_request_error", "model and messages are required")
        return web.json_response({"input_tokens": _words_in(body)})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        b = self.behaviour
        # beta fields need the beta they belong to (the SDK's beta client also marks
        # its calls with ?beta=true)
        beta = request.query.get("beta") == "true" or "anthropic-beta" in request.headers
        if request.headers.get("x-api-key") != b.api_key:
            self.refused += 1
            return self._error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") not in VERSIONS:
            return self._error(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._error(400, "invalid_request_error", "There was an error parsing the body")
        self.seen.append(Seen(request.path, dict(request.headers), body, raw, dict(request.query)))
        try:
            check_rules(body, beta=beta)
            for name in SAMPLING:
                if name in body and b.sampling_deprecated:
                    raise Invalid(f"`{name}` is deprecated for this model.")
            validate_request({k: v for k, v in body.items() if k not in SAMPLING}, beta=beta)
        except Invalid as exc:
            b.rejected.append(str(exc))
            return self._error(400, "invalid_request_error", str(exc))
        except pydantic.ValidationError as exc:
            b.rejected.append(str(exc))
            return self._error(400, "invalid_request_error", str(exc).splitlines()[0])
        if b.error is not None:
            status, etype, message = b.error
            headers = {"retry-after": b.retry_after} if b.retry_after else None
            return self._error(status, etype, message, headers)
        message = self._answer(body)
        if body.get("stream"):
            return await self._stream(request, message)
        return web.json_response(message)

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        last = body["messages"][-1]
        results = [blk for blk in _blocks(last["content"]) if blk.get("type") == "tool_result"]
        tools = body.get("tools") or []
        choice = (body.get("tool_choice") or {}).get("type", "auto")
        content: list[dict[str, Any]]
        stop_sequence = None
        b = self.behaviour
        if tools and choice != "none" and not results and b.use_tools:
            tool = tools[0]
            if choice == "tool":
                tool = next(t for t in tools if t["name"] == body["tool_choice"]["name"])
            elif b.tool_name is not None:
                tool = next(t for t in tools if t["name"] == b.tool_name)
            args = b.tool_input or schema_value(tool["input_schema"], tool["name"])
            content = [
                {
                    "type": "tool_use",
                    "id": f"toolu_fake{len(self.seen):04d}",
                    "name": tool["name"],
                    "input": args,
                }
            ]
            output = max(1, len(orjson.dumps(args)) // 4)
            stop = "tool_use"
        else:
            if results:
                parts = []
                for r in results:
                    c = r.get("content", "")
                    parts.append(
                        c if isinstance(c, str) else " ".join(x.get("text", "") for x in c)
                    )
                words = ["Result:", *" ".join(parts).split()]
            else:
                words = [f"w{i}" for i in range(self.behaviour.words)]
            stop = "end_turn"
            for s in body.get("stop_sequences") or ():
                if s in words:
                    words = words[: words.index(s)]
                    stop, stop_sequence = "stop_sequence", s
                    break
            if len(words) > body["max_tokens"]:
                words, stop = words[: body["max_tokens"]], "max_tokens"
            content = [{"type": "text", "text": " ".join(words)}]
            output = len(words)
        return {
            "id": f"msg_fake{len(self.seen):04d}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": _words_in(body),
                "output_tokens": output,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": self.behaviour.cache_read,
            },
        }

    async def _stream(self, request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        b = self.behaviour
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def ev(kind: str, obj: dict[str, Any]) -> bytes:
            return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**message["usage"], "output_tokens": 1},
        }
        events = [
            ev("message_start", {"type": "message_start", "message": start}),
            ev("ping", {"type": "ping"}),
        ]
        deltas = 0
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                first = {"type": "text", "text": ""}
                events.append(
                    ev(
                        "content_block_start",
                        {"type": "content_block_start", "index": index, "content_block": first},
                    )
                )
                for n, word in enumerate(block["text"].split(" ")):
                    if b.stream_error_after is not None and deltas >= b.stream_error_after:
                        events.append(ev("error", error_body("overloaded_error", "Overloaded")))
                        break
                    piece = word if n == 0 else " " + word
                    events.append(
                        ev(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "text_delta", "text": piece},
                            },
                        )
                    )
                    deltas += 1
                else:
                    events.append(
                        ev("content_block_stop", {"type": "content_block_stop", "index": index})
                    )
                    continue
                break  # the error event ends the stream
            else:
                first = {**block, "input": {}}
                events.append(
                    ev(
                        "content_block_start",
                        {"type": "content_block_start", "index": index, "content_block": first},
                    )
                )
                args = orjson.dumps(block["input"]).decode()
                for cut in range(0, len(args), 5):
                    events.append(
                        ev(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {
                                    "type": "input_json_delta",
                                    "partial_json": args[cut : cut + 5],
                                },
                            },
                        )
                    )
                events.append(
                    ev("content_block_stop", {"type": "content_block_stop", "index": index})
                )
        else:
            events.append(
                ev(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {
                            "stop_reason": message["stop_reason"],
                            "stop_sequence": message["stop_sequence"],
                        },
                        "usage": {"output_tokens": message["usage"]["output_tokens"]},
                    },
                )
            )
            events.append(ev("message_stop", {"type": "message_stop"}))
        return await play(
            request, resp, events, break_after=b.break_after, chunk_delay=b.chunk_delay
        )
