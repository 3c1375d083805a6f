"""OpenAI chat-completions request -> Anthropic Messages API request.

Works on the already-validated :class:`router.contract.ChatCompletionRequest`
(no second JSON parse). The mapping (see the Anthropic reference in the
project's docs):

* system and developer messages -> top-level ``system``;
* user/assistant turns -> content blocks (text; images from data URLs as
  ``base64`` sources and from http(s) URLs as ``url`` sources);
* assistant ``tool_calls`` -> ``tool_use`` blocks; ``tool`` messages ->
  ``tool_result`` blocks in the user turn that follows (consecutive results
  share one turn); consecutive turns of one role are merged so roles alternate;
* tools -> ``input_schema``; tool_choice none/auto/required/named ->
  none/auto/any/tool; ``parallel_tool_calls: false`` ->
  ``disable_parallel_tool_use``;
* stop -> ``stop_sequences``; ``max_tokens`` always sent;
  user/safety_identifier -> ``metadata.user_id``; a JSON-schema
  response_format -> ``output_config.format``;
* temperature, top_p and top_k only for backends that list them in
  ``allow_params``: Anthropic deprecated them and its current models answer
  400 to any of them (its SDK no longer has them), older models still take them.

Parameters Anthropic has no equivalent for (penalties, seed, logprobs, n > 1,
vLLM extras, unknown fields, sampling parameters not allowed) and temperatures
above 1 follow the backend's ``unsupported_params`` policy: ``drop`` (a
temperature clamped to 1) or ``reject`` (400 naming the parameter and
backend). Content that cannot be represented (audio, files, custom tools) is
always a 400.
"""

from __future__ import annotations

from typing import Any

import orjson

from router.contract import (
    AllowedToolsChoice,
    AssistantMessage,
    ChatCompletionRequest,
    CustomToolChoice,
    DeveloperMessage,
    FunctionTool,
    ImagePart,
    NamedToolChoice,
    RefusalPart,
    ResponseFormatJSONSchema,
    ResponseFormatText,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
)
from router.errors import BackendRejectedParam

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

# Request fields the translation reads (or that need no counterpart).
_TRANSLATED = frozenset({
    "messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "top_k", "stop", "stream", "stream_options", "tools", "tool_choice",
    "parallel_tool_calls", "user", "safety_identifier", "response_format",
})  # fmt: skip
# Values that ask for nothing: such a field is ignored even under ``reject``.
_NEUTRAL: dict[str, Any] = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0,
                            "top_logprobs": 0}  # fmt: skip


class Policy:
    """How a backend treats parameters it cannot honour."""

    __slots__ = ("backend", "reject", "sampling")

    def __init__(
        self, backend: str, unsupported: str, sampling: frozenset[str] = frozenset()
    ) -> None:
        self.backend = backend
        self.reject = unsupported == "reject"
        self.sampling = sampling  # the sampling parameters the backend's models take

    def unsupported(self, param: str, why: str = "") -> None:
        """Raise under ``reject``; return (the caller drops it) under ``drop``."""
        if self.reject:
            raise BackendRejectedParam(
                f"Parameter {param!r} is not supported by backend {self.backend!r}{why}.",
                param=param,
            )

    def cannot(self, param: str, what: str) -> BackendRejectedParam:
        """Content that cannot be sent at all, whatever the policy."""
        return BackendRejectedParam(
            f"Backend {self.backend!r} (Anthropic) does not accept {what} ({param}).", param=param
        )


def to_messages_request(
    req: ChatCompletionRequest, *, model: str, max_tokens: int, stream: bool, policy: Policy
) -> dict[str, Any]:
    """The Messages API body (a dict ready for ``orjson.dumps``)."""
    _check_unsupported(req, policy)
    system, turns = _turns(req, policy)
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": turns}
    if system:
        body["system"] = system[0]["text"] if len(system) == 1 else system
    if stream:
        body["stream"] = True
    _sampling(req, body, policy)
    if req.stop:
        body["stop_sequences"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    user = req.user or req.safety_identifier
    if user:
        body["metadata"] = {"user_id": user}
    _tools(req, body, policy)
    fmt = req.response_format
    if isinstance(fmt, ResponseFormatJSONSchema):
        schema = fmt.json_schema.schema_ or {"type": "object"}
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    elif fmt is not None and not isinstance(fmt, ResponseFormatText):
        policy.unsupported("response_format", f" with type {fmt.type!r}")
    return body


def _sampling(req: ChatCompletionRequest, body: dict[str, Any], policy: Policy) -> None:
    """temperature, top_p, top_k: deprecated by Anthropic (current models answer 400
    to them), so sent only when the backend lists them in ``allow_params``."""
    if req.temperature is not None:
        temperature = req.temperature
        if "temperature" not in policy.sampling:
            policy.unsupported("temperature")
        else:
            if temperature > 1.0:
                policy.unsupported("temperature", " above 1 (Anthropic accepts 0 to 1)")
                temperature = 1.0
            body["temperature"] = temperature
    if req.top_p is not None:
        if "top_p" in policy.sampling:
            body["top_p"] = req.top_p
        else:
            policy.unsupported("top_p")
    if req.top_k is not None and req.top_k > 0:
        if "top_k" in policy.sampling:
            body["top_k"] = req.top_k
        else:
            policy.unsupported("top_k")


def _check_unsupported(req: ChatCompletionRequest, policy: Policy) -> None:
    if not policy.reject:
        return
    for name in req.model_fields_set:
        if name in _TRANSLATED:
            continue
        value = getattr(req, name)
        if value is None or value is False or value in ({}, []):
            continue
        if name in _NEUTRAL and _NEUTRAL[name] == value:
            continue
        policy.unsupported(name)
    for name, value in (req.model_extra or {}).items():
        if value is not None:
            policy.unsupported(name)


# ------------------------------------------------------------------------ messages


def _turns(
    req: ChatCompletionRequest, policy: Policy
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for i, msg in enumerate(req.messages):
        where = f"messages[{i}]"
        if isinstance(msg, SystemMessage | DeveloperMessage):
            system.extend(_blocks(msg.content, f"{where}.content", policy, images=False))
        elif isinstance(msg, UserMessage):
            add("user", _blocks(msg.content, f"{where}.content", policy, images=True))
        elif isinstance(msg, AssistantMessage):
            add("assistant", _assistant_blocks(msg, where, policy))
        elif isinstance(msg, ToolMessage):
            add("user", [_tool_result(msg, where, policy)])
        else:
            raise policy.cannot(f"{where}.role", "the legacy 'function' role; use tools")
    if not turns:
        raise policy.cannot("messages", "a conversation without a user message")
    if turns[0]["role"] != "user":
        raise policy.cannot(
            "messages", "a conversation whose first non-system message is not from the user"
        )
    for turn in turns:  # the compact form for a lone text block
        blocks = turn["content"]
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            turn["content"] = blocks[0]["text"]
    return system, turns


def _blocks(content: Any, where: str, policy: Policy, *, images: bool) -> list[dict[str, Any]]:
    """OpenAI content (a string or parts) as Anthropic blocks: text (a refusal reads
    as text), and images where the turn may carry them (user turns, tool results)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    out: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart | RefusalPart):
            text = part.text if isinstance(part, TextPart) else part.refusal
            if text:
                out.append({"type": "text", "text": text})
        elif images and isinstance(part, ImagePart):
            out.append(_image(part.image_url.url, f"{where}[{j}].image_url.url", policy))
        else:
            raise policy.cannot(f"{where}[{j}]", f"{part.type!r} content here")
    return out


def _image(url: str, where: str, policy: Policy) -> dict[str, Any]:
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or media_type not in IMAGE_TYPES:
            raise policy.cannot(
                where, "this image; send a base64 data URL of a JPEG, PNG, GIF or WebP image"
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                            "data": data}}  # fmt: skip
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise policy.cannot(where, "an image URL that is neither http(s) nor a data URL")


def _assistant_blocks(msg: AssistantMessage, where: str, policy: Policy) -> list[dict[str, Any]]:
    blocks = (
        [] if msg.content is None
        else _blocks(msg.content, f"{where}.content", policy, images=False)
    )  # fmt: skip
    for k, call in enumerate(msg.tool_calls or ()):
        args = call.function.arguments
        try:
            value = orjson.loads(args) if args.strip() else {}
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise BackendRejectedParam(
                f"{where}.tool_calls[{k}].function.arguments must be a JSON object "
                f"for backend {policy.backend!r}.",
                param=f"{where}.tool_calls[{k}].function.arguments",
            )
        blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name,
                       "input": value})  # fmt: skip
    if msg.function_call is not None:
        raise policy.cannot(f"{where}.function_call", "the legacy function_call; use tool_calls")
    return blocks


def _tool_result(msg: ToolMessage, where: str, policy: Policy) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": msg.tool_call_id}
    content = msg.content
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        parts = _blocks(content, f"{where}.content", policy, images=True)
        if parts:
            block["content"] = parts
    return block


# --------------------------------------------------------------------------- tools


def _tools(req: ChatCompletionRequest, body: dict[str, Any], policy: Policy) -> None:
    if not req.tools:
        if req.tool_choice is not None and req.tool_choice != "none":
            policy.unsupported("tool_choice")  # legacy functions only
        return
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(req.tools):
        if not isinstance(tool, FunctionTool):
            raise policy.cannot(f"tools[{i}]", f"{tool.type!r} tools")
        fn = tool.function
        schema = dict(fn.parameters) if fn.parameters else {}
        schema.setdefault("type", "object")
        if schema["type"] == "object" and "properties" not in schema:
            schema["properties"] = {}
        spec: dict[str, Any] = {"name": fn.name, "input_schema": schema}
        if fn.description:
            spec["description"] = fn.description
        if fn.strict:
            spec["strict"] = True
        tools.append(spec)
    body["tools"] = tools
    choice = req.tool_choice
    mapped: dict[str, Any] | None
    if choice is None or choice == "auto":
        mapped = {"type": "auto"} if req.parallel_tool_calls is False else None
    elif choice == "none":
        mapped = {"type": "none"}
    elif choice == "required":
        mapped = {"type": "any"}
    elif isinstance(choice, NamedToolChoice):
        mapped = {"type": "tool", "name": choice.function.name}
    else:
        assert isinstance(choice, AllowedToolsChoice | CustomToolChoice)
        policy.unsupported("tool_choice", f" with type {choice.type!r}")
        mapped = {"type": "auto"} if req.parallel_tool_calls is False else None
    if mapped is not None:
        if req.parallel_tool_calls is False and mapped["type"] != "none":
            mapped["disable_parallel_tool_use"] = True
        body["tool_choice"] = mapped
