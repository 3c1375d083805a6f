"""Anthropic Messages -> chat completions, for backends that speak only chat.

The request (:func:`to_chat`):

* ``system`` (a string or text blocks) and mid-conversation ``system`` turns ->
  system messages; user and assistant turns -> messages of the same role:
  text -> text, images (base64 or URL) -> ``image_url`` parts, plain-text
  documents -> text; ``tool_use`` -> the assistant's ``tool_calls``;
  ``tool_result`` -> ``tool`` messages right after the assistant turn (an
  error result reads ``[error] ...``; images of a result follow in a user
  message); the turn's other blocks follow as a user message;
* past ``thinking`` and ``redacted_thinking`` blocks are not sent back (chat
  templates drop past reasoning; redacted thinking is only Anthropic's);
  ``cache_control`` is ignored wherever it appears (chat has no cache marks);
* client tools -> function tools (``input_schema`` -> ``parameters``); tools with
  ``defer_loading`` are not sent (the model sees them only once searched);
  ``tool_choice`` auto/any/none/tool -> auto/required/none/named, with
  ``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``;
* ``max_tokens``, ``stop_sequences`` -> ``stop``, ``temperature``, ``top_p``,
  ``top_k``, ``metadata.user_id`` -> ``user``; ``thinking`` enabled/disabled ->
  ``chat_template_kwargs.enable_thinking`` (and ``thinking_token_budget``);
  ``output_config.effort`` -> ``reasoning_effort``, ``output_config.format`` ->
  a JSON-schema ``response_format``;
* Anthropic-only service settings (``context_management``, ``service_tier``,
  ``inference_geo``, ``speed``, ``cache_control``, ...) steer Anthropic's own
  service: ignored.

What chat completions cannot carry is a 400 naming it, never dropped: server
tools, ``mcp_servers``, ``container``, PDF and other binary documents,
``max_tokens: 0``, block types without a chat form, unknown parameters.

The answer: a ``chat.completion`` -> a Message (:class:`ChatToMessages`);
streams are translated by :mod:`router.inbound.messages_stream`.
"""

from __future__ import annotations

from typing import Any

import orjson

from router.contract import ChatCompletionRequest
from router.errors import InvalidRequest, UpstreamError
from router.inbound.base import ClientCall, validate
from router.inbound.messages_contract import (
    Base64Source,
    Block,
    CountTokensRequest,
    DocumentBlock,
    ImageBlock,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    Turn,
    UrlSource,
)
from router.inbound.messages_stream import ChatStreamToMessages, stop_reason

# top-level fields read below, or that only steer Anthropic's own service
_READ = frozenset({
    "model", "messages", "system", "tools", "tool_choice", "thinking", "max_tokens", "stream",
    "stop_sequences", "temperature", "top_p", "top_k", "metadata", "output_config",
})  # fmt: skip
_IGNORED = frozenset({
    "context_management", "service_tier", "inference_geo", "speed", "cache_control",
    "diagnostics", "user_profile_id", "workspace_id", "betas",
})  # fmt: skip


def cannot(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(
        f"{what} cannot be translated for this model's chat-completions backend ({param}).",
        param=param, code="untranslatable",
    )  # fmt: skip


def prompt_of(req: CountTokensRequest) -> dict[str, Any]:
    """The chat-completions body of a request's prompt: its model, messages, tools
    and thinking settings (400 for what it cannot carry)."""
    for name in req.model_extra or {}:
        if name not in _READ and name not in _IGNORED:
            raise cannot(name, f"The parameter {name!r}")
    messages: list[dict[str, Any]] = []
    if req.system:
        text = req.system if isinstance(req.system, str) else _texts(req.system)
        if text:
            messages.append({"role": "system", "content": text})
    for i, turn in enumerate(req.messages):
        messages.extend(_turn(turn, f"messages[{i}]"))
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    _tools(req, body)
    _thinking(req, body)
    return body


def to_chat(req: MessagesRequest) -> dict[str, Any]:
    """The chat-completions body of a Messages request (400 for what it cannot carry)."""
    if req.max_tokens < 1:
        raise cannot("max_tokens", "max_tokens 0 (cache pre-warming)")
    body = prompt_of(req)
    body["max_tokens"] = req.max_tokens
    if req.stream:
        body["stream"] = True
    if req.stop_sequences:
        body["stop"] = req.stop_sequences
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    user = (req.metadata or {}).get("user_id")
    if isinstance(user, str) and user:
        body["user"] = user
    return body


def _texts(blocks: list[TextBlock]) -> str:
    return "\n".join(b.text for b in blocks if b.text)


def _turn(turn: Turn, where: str) -> list[dict[str, Any]]:
    content = turn.content
    if turn.role == "system":
        if isinstance(content, str):
            return [{"role": "system", "content": content}]
        if not all(isinstance(b, TextBlock) for b in content):
            raise cannot(f"{where}.content", "A system turn with blocks other than text")
        return [{"role": "system", "content": "\n".join(b.text for b in content
                                                        if isinstance(b, TextBlock))}]  # fmt: skip
    if isinstance(content, str):
        return [{"role": turn.role, "content": content}]
    if turn.role == "assistant":
        return [_assistant(content, where)]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        here = f"{where}.content[{j}]"
        if isinstance(block, ToolResultBlock):
            out.append(_tool_result(block, here, parts))
        else:
            parts.extend(_user_parts(block, here))
    if parts:
        out.append({"role": "user", "content": _compact(parts)})
    return out


def _compact(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A lone text part as a string (what every chat template takes)."""
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _user_parts(block: Block, where: str) -> list[dict[str, Any]]:
    if isinstance(block, TextBlock):
        return [{"type": "text", "text": block.text}] if block.text else []
    if isinstance(block, ImageBlock):
        return [_image(block, where)]
    if isinstance(block, DocumentBlock):
        return [_document(block, where)]
    if isinstance(block, ThinkingBlock | RedactedThinkingBlock):
        return []
    raise cannot(f"{where}.type", f"A {block.type!r} block in a user turn")


def _image(block: ImageBlock, where: str) -> dict[str, Any]:
    source = block.source
    if isinstance(source, Base64Source):
        url = f"data:{source.media_type};base64,{source.data}"
    elif isinstance(source, UrlSource):
        url = source.url
    else:
        raise cannot(f"{where}.source.type", f"An image from a {source.type!r} source")
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: DocumentBlock, where: str) -> dict[str, Any]:
    source = block.source
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        title = block.model_extra.get("title") if block.model_extra else None
        text = source["data"] if not isinstance(title, str) else f"{title}\n\n{source['data']}"
        return {"type": "text", "text": text}
    if source.get("type") == "content" and isinstance(source.get("content"), list):
        texts = [c.get("text") for c in source["content"] if isinstance(c, dict)]
        if all(isinstance(t, str) for t in texts):
            return {"type": "text", "text": "\n".join(t for t in texts if t)}
    kind = source.get("media_type") or source.get("type")
    raise cannot(f"{where}.source", f"A {kind} document (the model takes text)")


def _tool_result(block: ToolResultBlock, where: str, after: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``tool`` message; the result's images go to ``after`` (the user message
    that follows the tool messages)."""
    content = block.content
    text = ""
    if isinstance(content, str):
        text = content
    elif content:
        texts: list[str] = []
        for k, part in enumerate(content):
            if isinstance(part, TextBlock):
                texts.append(part.text)
            elif isinstance(part, ImageBlock):
                after.append(_image(part, f"{where}.content[{k}]"))
            elif isinstance(part, DocumentBlock):
                texts.append(_document(part, f"{where}.content[{k}]")["text"])
            else:
                raise cannot(f"{where}.content[{k}].type", f"A {part.type!r} tool result part")
        text = "\n".join(texts)
    if block.is_error:
        text = "[error] " + text
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}


def _assistant(blocks: list[Block], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append({"id": block.id, "type": "function", "function": {
                "name": block.name, "arguments": orjson.dumps(block.input).decode()}})  # fmt: skip
        elif not isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            raise cannot(
                f"{where}.content[{j}].type", f"A {block.type!r} block in an assistant turn"
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(req: CountTokensRequest, body: dict[str, Any]) -> None:
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(req.tools or ()):
        if not tool.client:
            kind = tool.type or "a tool without input_schema"
            raise cannot(f"tools[{i}]", f"The server tool {kind!r}")
        extra = tool.model_extra or {}
        if extra.get("defer_loading") is True:
            continue
        fn: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description:
            fn["description"] = tool.description
        if extra.get("strict") is True:
            fn["strict"] = True
        tools.append({"type": "function", "function": fn})
    for name in ("mcp_servers", "container"):
        if (req.model_extra or {}).get(name):
            raise cannot(name, f"{name!r} (Anthropic-hosted)")
    choice = req.tool_choice
    if tools:
        body["tools"] = tools
        if choice is not None:
            if choice.type == "tool":
                if not choice.name:
                    raise InvalidRequest("tool_choice.name: field required", param="tool_choice")
                body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
            else:
                body["tool_choice"] = {"auto": "auto", "any": "required",
                                       "none": "none"}[choice.type]  # fmt: skip
            if choice.disable_parallel_tool_use:
                body["parallel_tool_calls"] = False
    elif choice is not None and choice.type not in ("none", "auto"):
        raise InvalidRequest(
            "tool_choice may only be specified while providing tools.", param="tool_choice"
        )


def _thinking(req: CountTokensRequest, body: dict[str, Any]) -> None:
    thinking = req.thinking
    if thinking is not None and thinking.type != "adaptive":
        enabled = thinking.type == "enabled"
        body["chat_template_kwargs"] = {"enable_thinking": enabled}
        if enabled and thinking.budget_tokens:
            body["thinking_token_budget"] = thinking.budget_tokens
    config = (req.model_extra or {}).get("output_config")
    if not isinstance(config, dict):
        return
    effort = config.get("effort")
    if isinstance(effort, str):
        body["reasoning_effort"] = effort
    fmt = config.get("format")
    if isinstance(fmt, dict):
        if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise cannot("output_config.format", "This output format")
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": fmt["schema"]}}  # fmt: skip


# ------------------------------------------------------------------------ bridge


class MessagesToChat:
    """The Messages codec's bridge to chat completions."""

    def request(self, call: ClientCall) -> tuple[Any, bytes]:
        raw = orjson.dumps(to_chat(call.request))
        return validate(ChatCompletionRequest, raw, None)[0], raw

    def answers(self, call: ClientCall) -> ChatToMessages:
        req: MessagesRequest = call.request
        return ChatToMessages(call.model, tuple(req.stop_sequences or ()))


class ChatToMessages(ChatStreamToMessages):
    """One attempt's chat answers -> Messages answers (bodies here, streams in the base)."""

    def body(self, data: bytes) -> bytes:
        try:
            doc = orjson.loads(data)
            choice = doc["choices"][0]
            message = choice["message"]
            return orjson.dumps(self._message(doc, choice, message))
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise UpstreamError(
                "The backend answered a chat completion the gateway cannot read."
            ) from None

    def _message(
        self, doc: dict[str, Any], choice: dict[str, Any], message: dict[str, Any]
    ) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        reasoning = message.get("reasoning") or message.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
        text = message.get("content")
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
        for tc in message.get("tool_calls") or ():
            fn = tc["function"]
            args = fn.get("arguments") or "{}"
            try:
                value = orjson.loads(args)
            except orjson.JSONDecodeError:
                value = None
            if not isinstance(value, dict):
                raise UpstreamError(
                    "The backend answered tool arguments that are not a JSON object."
                )
            content.append({"type": "tool_use", "id": tc.get("id") or f"toolu_{len(content)}",
                            "name": fn["name"], "input": value})  # fmt: skip
        reason, sequence = stop_reason(choice, bool(message.get("tool_calls")), self.stops)
        return {
            "id": self.message_id(doc.get("id")), "type": "message", "role": "assistant",
            "model": self.model, "content": content, "stop_reason": reason,
            "stop_sequence": sequence, "usage": self.usage_of(doc.get("usage")),
        }  # fmt: skip
