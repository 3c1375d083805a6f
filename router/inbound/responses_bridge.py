"""Responses -> chat completions: the request, and a complete answer back.

The request: ``instructions`` and system/developer messages become system
messages (leading ones merged into one, as chat templates want), user and
assistant messages keep their text and image parts, ``function_call`` items
become the assistant's ``tool_calls`` and ``function_call_output`` items tool
messages; ``reasoning`` items are for backends that take them and are left
out. Function tools (those of a ``namespace`` too, named
``<namespace>__<name>``) become chat function tools; built-in tools
(web_search, file_search, ...) have no chat equivalent and are a 400 naming
them. ``text.format`` becomes ``response_format``, ``reasoning.effort``
``reasoning_effort``, ``max_output_tokens`` ``max_completion_tokens``.

The answer: a chat completion becomes a Response object (reasoning, message and
function_call output items, usage in Responses' fields), see
:func:`response_from_chat`; streams are in :mod:`router.inbound.responses_stream`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import orjson

from router.contract import ChatCompletionRequest
from router.errors import InvalidRequest
from router.inbound.base import ClientCall, validate
from router.inbound.responses_contract import FunctionToolSpec, InputPart, ResponsesRequest

NAMESPACE_SEP = "__"
CODEX_WEB_SEARCH = (
    ' (Codex: set `web_search = "disabled"` in ~/.codex/config.toml, or pass '
    '`-c web_search="disabled"`)'
)


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(12).hex()}"


# ----------------------------------------------------------------------------- request


def _text_of(parts: str | list[InputPart], where: str) -> str:
    if isinstance(parts, str):
        return parts
    texts: list[str] = []
    for part in parts:
        if part.type in ("input_text", "output_text", "text"):
            texts.append(part.text or "")
        elif part.type == "refusal":
            texts.append(part.refusal or "")
        else:
            raise InvalidRequest(
                f"A {where} cannot carry a {part.type!r} part to this model's backend.",
                param="input", code="unsupported_content",
            )  # fmt: skip
    return "\n".join(texts)


def _parts(parts: str | list[InputPart]) -> str | list[dict[str, Any]]:
    """A user message's content in chat's form."""
    if isinstance(parts, str):
        return parts
    out: list[dict[str, Any]] = []
    for part in parts:
        kind = part.type
        if kind in ("input_text", "output_text", "text"):
            out.append({"type": "text", "text": part.text or ""})
        elif kind == "input_image":
            if not part.image_url:
                raise InvalidRequest(
                    "An input_image by file_id cannot be sent to this model's backend; "
                    "send image_url (a URL or a data: URL).",
                    param="input", code="unsupported_content",
                )  # fmt: skip
            image: dict[str, Any] = {"url": part.image_url}
            if part.detail in ("auto", "low", "high"):
                image["detail"] = part.detail
            out.append({"type": "image_url", "image_url": image})
        elif kind == "input_file" and part.file_data:
            file: dict[str, Any] = {"file_data": part.file_data}
            if part.filename:
                file["filename"] = part.filename
            out.append({"type": "file", "file": file})
        else:
            raise InvalidRequest(
                f"A {kind!r} content part cannot be sent to this model's backend "
                "(it has no Responses API; chat completions take text, images and file data).",
                param="input", code="unsupported_content",
            )  # fmt: skip
    return out or ""


def given(**fields: Any) -> dict[str, Any]:
    """The fields that are not None."""
    return {k: v for k, v in fields.items() if v is not None}


def _function_name(name: str, namespace: str | None) -> str:
    return f"{namespace}{NAMESPACE_SEP}{name}" if namespace else name


def _untranslatable(kind: str, what: str, param: str, code: str) -> InvalidRequest:
    hint = CODEX_WEB_SEARCH if kind.startswith("web_search") else ""
    return InvalidRequest(f"{what}{hint}.", param=param, code=code)


def _unsupported_tool(kind: str) -> InvalidRequest:
    return _untranslatable(
        kind, f"The tool type {kind!r} is built into OpenAI's Responses API and this "
        "model's backend does not have it; send function tools only", "tools", "unsupported_tool",
    )  # fmt: skip


def _chat_tool(tool: FunctionToolSpec, namespace: str | None) -> dict[str, Any]:
    assert tool.name is not None
    fn = given(name=_function_name(tool.name, namespace), description=tool.description,
               parameters=tool.parameters, strict=tool.strict)  # fmt: skip
    return {"type": "function", "function": fn}


def _custom_tool(tool: FunctionToolSpec) -> dict[str, Any]:
    """A custom tool (free-text input) as a function taking one string, ``input``."""
    assert tool.name is not None
    fmt = tool.format or {}
    about = "The tool's input, as free text."
    if fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        about = f"The tool's input, in this {fmt.get('syntax', '')} grammar:\n{fmt['definition']}"
    params = {"type": "object", "properties": {"input": {"type": "string", "description": about}},
              "required": ["input"], "additionalProperties": False}  # fmt: skip
    fn = given(name=tool.name, description=tool.description, parameters=params)
    return {"type": "function", "function": fn}


def chat_tools(tools: list[FunctionToolSpec]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in tools:
        if tool.type == "function" and tool.name:
            out.append(_chat_tool(tool, None))
        elif tool.type == "custom" and tool.name:
            out.append(_custom_tool(tool))
        elif tool.type == "namespace" and tool.name:
            for inner in tool.tools or ():
                if inner.type != "function" or not inner.name:
                    raise _unsupported_tool(f"{tool.name}.{inner.type}")
                out.append(_chat_tool(inner, tool.name))
        else:
            raise _unsupported_tool(tool.type)
    return out


@dataclass(frozen=True, slots=True)
class Origin:
    """What a chat function name stands for in the client's tools."""

    name: str
    namespace: str | None = None
    custom: bool = False  # a custom tool: its call's input is the function's ``input``


def tool_origins(tools: list[FunctionToolSpec] | None) -> dict[str, Origin]:
    """Chat function name -> its origin, for a namespace's functions and custom tools."""
    found: dict[str, Origin] = {}
    for tool in tools or ():
        if tool.type == "custom" and tool.name:
            found[tool.name] = Origin(tool.name, custom=True)
        elif tool.type == "namespace" and tool.name:
            for inner in tool.tools or ():
                if inner.name:
                    found[_function_name(inner.name, tool.name)] = Origin(inner.name, tool.name)
    return found


def custom_input(arguments: str) -> str:
    """A custom tool's input from the function arguments the model wrote."""
    try:
        doc = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    return (
        doc["input"] if isinstance(doc, dict) and isinstance(doc.get("input"), str) else arguments
    )


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    kind = choice.get("type")
    if kind in ("function", "custom") and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if kind == "allowed_tools" and isinstance(choice.get("tools"), list):
        names = [{"type": "function", "function": {"name": t["name"]}}
                 for t in choice["tools"] if isinstance(t, dict) and t.get("type") == "function"
                 and isinstance(t.get("name"), str)]  # fmt: skip
        return {"type": "allowed_tools",
                "allowed_tools": {"mode": choice.get("mode", "auto"), "tools": names}}  # fmt: skip
    raise InvalidRequest(
        f"tool_choice of type {kind!r} cannot be sent to this model's backend.",
        param="tool_choice", code="unsupported_tool",
    )  # fmt: skip


class _Messages:
    """Chat messages, built item by item: an assistant's text and its tool calls
    make one message; leading system text is one system message."""

    def __init__(self) -> None:
        self.out: list[dict[str, Any]] = []

    def system(self, text: str) -> None:
        if len(self.out) == 1 and self.out[0]["role"] == "system":
            self.out[0]["content"] += "\n\n" + text
        else:
            self.out.append({"role": "system", "content": text})

    def _assistant(self) -> dict[str, Any]:
        last = self.out[-1] if self.out else None
        if last is None or last["role"] != "assistant":
            last = {"role": "assistant", "content": None}
            self.out.append(last)
        return last

    def assistant_text(self, text: str) -> None:
        msg = self._assistant()
        if msg.get("tool_calls"):  # text after the calls: a message of its own
            msg = {"role": "assistant", "content": None}
            self.out.append(msg)
        msg["content"] = text if msg["content"] is None else msg["content"] + text

    def tool_call(self, call_id: str, name: str, arguments: str) -> None:
        msg = self._assistant()
        msg.setdefault("tool_calls", []).append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        )

    def add(self, msg: dict[str, Any]) -> None:
        self.out.append(msg)


def chat_request(req: ResponsesRequest) -> dict[str, Any]:
    """The chat-completions body for ``req``."""
    msgs = _Messages()
    if req.instructions:
        msgs.system(req.instructions)
    entries = req.input
    if isinstance(entries, str):
        msgs.add({"role": "user", "content": entries})
        entries = []
    for item in entries or ():
        kind = item.kind
        if kind == "message":
            assert item.content is not None
            if item.role in ("system", "developer"):
                msgs.system(_text_of(item.content, f"{item.role} message"))
            elif item.role == "assistant":
                msgs.assistant_text(_text_of(item.content, "assistant message"))
            else:
                msgs.add({"role": "user", "content": _parts(item.content)})
        elif kind == "function_call":
            assert item.call_id and item.name and item.arguments is not None
            msgs.tool_call(item.call_id, _function_name(item.name, item.namespace), item.arguments)
        elif kind == "custom_tool_call" and item.call_id and item.name:
            args = orjson.dumps({"input": item.input or ""}).decode()
            msgs.tool_call(item.call_id, item.name, args)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            assert item.output is not None
            output = item.output if isinstance(item.output, str) else _parts(item.output)
            msgs.add({"role": "tool", "tool_call_id": item.call_id, "content": output})
        elif kind == "reasoning":
            continue  # reasoning is for backends that take it back
        else:
            raise _untranslatable(
                kind, f"Input items of type {kind!r} cannot be sent to this model's backend "
                "(it has no Responses API)", "input", "unsupported_input",
            )  # fmt: skip
    if not msgs.out:
        raise InvalidRequest("input has no message to answer.", param="input")
    body: dict[str, Any] = {"model": req.model, "messages": msgs.out}
    if req.stream:
        body["stream"] = True
    if req.tools:
        tools = chat_tools(req.tools)
        if tools:
            body["tools"] = tools
    if req.tool_choice is not None and (req.tools or req.tool_choice == "none"):
        body["tool_choice"] = _tool_choice(req.tool_choice)
    body.update(given(
        parallel_tool_calls=req.parallel_tool_calls, temperature=req.temperature,
        top_p=req.top_p, user=req.user, metadata=req.metadata,
    ))  # fmt: skip
    if req.max_output_tokens is not None:
        body["max_completion_tokens"] = req.max_output_tokens
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        spec = given(name=fmt.name or "output", schema=fmt.schema_, strict=fmt.strict,
                     description=fmt.description)  # fmt: skip
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    effort = req.reasoning.effort if req.reasoning is not None else None
    if effort and effort != "none":
        body["reasoning_effort"] = effort
    return body


class ResponsesToChat:
    """The bridge from Responses to chat completions (a :class:`router.inbound.base.Bridge`)."""

    def request(self, call: ClientCall) -> tuple[ChatCompletionRequest, bytes]:
        raw = orjson.dumps(chat_request(call.request))
        return validate(ChatCompletionRequest, raw, None)[0], raw

    def answers(self, call: ClientCall) -> Any:
        from router.inbound.responses_stream import ChatToResponses

        return ChatToResponses(call)


# ------------------------------------------------------------------------------ answer


def usage_of(chat_usage: Any) -> dict[str, Any] | None:
    """Chat usage -> Responses usage (None when absent)."""
    if not isinstance(chat_usage, dict):
        return None
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    completion = int(chat_usage.get("completion_tokens") or 0)
    pdet = chat_usage.get("prompt_tokens_details")
    cdet = chat_usage.get("completion_tokens_details")
    cached = pdet.get("cached_tokens") if isinstance(pdet, dict) else None
    reasoning = cdet.get("reasoning_tokens") if isinstance(cdet, dict) else None
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(cached or 0)},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(reasoning or 0)},
        "total_tokens": prompt + completion,
    }


def response_shell(call: ClientCall, rid: str, created: float) -> dict[str, Any]:
    """A Response object without output: the request's settings echoed."""
    req: ResponsesRequest = call.request
    return {
        "id": rid, "object": "response", "created_at": created, "status": "in_progress",
        "background": False, "error": None, "incomplete_details": None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "model": call.model, "output": [],
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": call.state.previous if call.state else req.previous_response_id,
        "reasoning": req.reasoning.model_dump(exclude_none=True) if req.reasoning else None,
        "store": bool(call.state is not None and call.state.keep),
        "temperature": req.temperature, "top_p": req.top_p,
        "text": req.text.model_dump(by_alias=True, exclude_none=True)
        if req.text is not None else {"format": {"type": "text"}},
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or ()],
        "truncation": "disabled", "usage": None, "user": req.user,
        "metadata": req.metadata or {},
    }  # fmt: skip


def finish(doc: dict[str, Any], finish_reason: str | None, usage: dict[str, Any] | None) -> None:
    """Set the status (incomplete on a length or content-filter stop) and usage."""
    if finish_reason == "length":
        doc["status"] = "incomplete"
        doc["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        doc["status"] = "incomplete"
        doc["incomplete_details"] = {"reason": "content_filter"}
    else:
        doc["status"] = "completed"
    doc["completed_at"] = time.time()
    doc["usage"] = usage


def message_item(mid: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": mid, "type": "message", "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}]}  # fmt: skip


def reasoning_item(rid: str, text: str) -> dict[str, Any]:
    return {"id": rid, "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}  # fmt: skip


def function_item(
    fid: str, call_id: str, name: str, arguments: str, origins: dict[str, Origin],
    status: str = "completed",
) -> dict[str, Any]:  # fmt: skip
    """A call of chat function ``name``: a function_call item, or a custom_tool_call."""
    origin = origins.get(name)
    if origin is not None and origin.custom:
        text = custom_input(arguments) if arguments else ""
        return {"id": fid, "type": "custom_tool_call", "status": status, "call_id": call_id,
                "name": origin.name, "input": text}  # fmt: skip
    item: dict[str, Any] = {"id": fid, "type": "function_call", "status": status,
                            "call_id": call_id, "name": name, "arguments": arguments}  # fmt: skip
    if origin is not None:
        item["namespace"], item["name"] = origin.namespace, origin.name
    return item


def response_from_chat(call: ClientCall, chat: dict[str, Any], rid: str) -> dict[str, Any]:
    doc = response_shell(call, rid, float(chat.get("created") or time.time()))
    names = tool_origins(call.request.tools)
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    thought = msg.get("reasoning_content") or msg.get("reasoning")
    if isinstance(thought, str) and thought:
        output.append(reasoning_item(new_id("rs"), thought))
    text = msg.get("content")
    if isinstance(text, str) and text:
        output.append(message_item(new_id("msg"), text))
    refusal = msg.get("refusal")
    if isinstance(refusal, str) and refusal:
        output.append({"id": new_id("msg"), "type": "message", "role": "assistant",
                       "status": "completed",
                       "content": [{"type": "refusal", "refusal": refusal}]})  # fmt: skip
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") or {} if isinstance(tc, dict) else {}
        output.append(function_item(
            new_id("fc"), str(tc.get("id") or new_id("call")), str(fn.get("name") or ""),
            str(fn.get("arguments") or ""), names,
        ))  # fmt: skip
    doc["output"] = output
    finish(doc, choice.get("finish_reason"), usage_of(chat.get("usage")))
    return doc
