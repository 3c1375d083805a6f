"""Pydantic models of the OpenAI chat-completions contract.

The request model covers every OpenAI field and every vLLM extra (vLLM 0.33's
``ChatCompletionRequest``). Unknown fields are kept (``extra="allow"``) so that
they are forwarded untouched. Answers are not modelled here: relayed answers are
never re-validated, and the providers that build answers (simulate, the
translators) write OpenAI's JSON directly; the suite checks them against OpenAI's
published JSON Schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

__all__ = [
    "MAX_TOKENS", "VLLM_EXTRAS", "ChatCompletionRequest", "Count", "CountOrAll", "FieldError",
    "Int32", "Int64", "PositiveCount", "ValidationError", "error_param",
]  # fmt: skip

# Integers are bounded by what a backend can take, so that nothing between the client,
# Redis and the upstream truncates or wraps them: token counts and token ids fit an
# int32, seeds and priorities an int64. Floats are finite.
MAX_TOKENS = 2**31 - 1
Int32 = Annotated[int, Field(ge=-(2**31), le=MAX_TOKENS)]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


Count = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
PositiveCount = Annotated[int, Field(ge=1, le=MAX_TOKENS)]
CountOrAll = Annotated[int, Field(ge=-1, le=MAX_TOKENS)]  # vLLM's -1: all, or no limit


class _Open(BaseModel):
    """Base for contract objects: unknown keys are kept, floats are finite."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


# --------------------------------------------------------------------------- parts


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageURL(_Open):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Open):
    data: str
    format: str


class AudioPart(_Open):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FilePart(_Open):
    type: Literal["file"]
    file: dict[str, Any]


class RefusalPart(_Open):
    type: Literal["refusal"]
    refusal: str


class OtherPart(_Open):
    """A part type the gateway does not know (vLLM's video_url, audio_url, ...)."""

    type: str


_KNOWN_PARTS = {"text", "image_url", "input_audio", "file", "refusal"}


def type_tag(known: Iterable[str]) -> Callable[[Any], str]:
    """A discriminator for a union on ``type``: the value's type when ``known``, else
    ``other`` (the union's catch-all member)."""
    names = frozenset(known)

    def tag(value: Any) -> str:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        return kind if isinstance(kind, str) and kind in names else "other"  # a list: no tag

    return tag


_part_tag = type_tag(_KNOWN_PARTS)


ContentPart = Annotated[
    Annotated[TextPart, Tag("text")]
    | Annotated[ImagePart, Tag("image_url")]
    | Annotated[AudioPart, Tag("input_audio")]
    | Annotated[FilePart, Tag("file")]
    | Annotated[RefusalPart, Tag("refusal")]
    | Annotated[OtherPart, Tag("other")],
    Discriminator(_part_tag),
]
Content = str | Annotated[list[ContentPart], Field(min_length=1)]


# ------------------------------------------------------------------------ messages


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Open):
    role: Literal["system"]
    content: Content
    name: str | None = None


class DeveloperMessage(_Open):
    role: Literal["developer"]
    content: Content
    name: str | None = None


class UserMessage(_Open):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None


class ToolMessage(_Open):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


class FunctionMessage(_Open):
    role: Literal["function"]
    content: str | None
    name: str


_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def _role_tag(value: Any) -> str | None:
    role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
    return role if isinstance(role, str) and role in _ROLES else None  # a list: no role


Message = Annotated[
    Annotated[SystemMessage, Tag("system")]
    | Annotated[DeveloperMessage, Tag("developer")]
    | Annotated[UserMessage, Tag("user")]
    | Annotated[AssistantMessage, Tag("assistant")]
    | Annotated[ToolMessage, Tag("tool")]
    | Annotated[FunctionMessage, Tag("function")],
    Discriminator(
        _role_tag,
        custom_error_type="invalid_role",
        custom_error_message=(
            "role must be one of 'system', 'developer', 'user', 'assistant', 'tool'"
        ),
    ),
]


# --------------------------------------------------------------------------- tools


class FunctionDefinition(_Open):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(_Open):
    type: Literal["function"]
    function: FunctionDefinition


class CustomTool(_Open):
    type: Literal["custom"]
    custom: dict[str, Any]


Tool = Annotated[FunctionTool | CustomTool, Field(discriminator="type")]


class NamedFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: NamedFunction


class AllowedToolsChoice(_Open):
    type: Literal["allowed_tools"]
    allowed_tools: dict[str, Any]


class CustomToolChoice(_Open):
    type: Literal["custom"]
    custom: dict[str, Any]


ToolChoice = (
    Literal["none", "auto", "required"]
    | Annotated[
        NamedToolChoice | AllowedToolsChoice | CustomToolChoice, Field(discriminator="type")
    ]
)


# ---------------------------------------------------------------- response format


class ResponseFormatText(_Open):
    type: Literal["text"]


class ResponseFormatJSONObject(_Open):
    type: Literal["json_object"]


class JSONSchemaSpec(_Open):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatJSONSchema(_Open):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


class ResponseFormatStructuralTag(_Open):
    type: Literal["structural_tag"]


ResponseFormat = Annotated[
    ResponseFormatText
    | ResponseFormatJSONObject
    | ResponseFormatJSONSchema
    | ResponseFormatStructuralTag,
    Field(discriminator="type"),
]


class StreamOptions(_Open):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None
    continuous_usage_stats: bool | None = None


# -------------------------------------------------------------------------- request

Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class VllmServingExtras(_Open):
    """vLLM's serving extras that chat and completions share (scheduling priority,
    ids, returned token ids, prefix-cache salt, disaggregated-serving parameters)."""

    priority: Int64 | None = None
    request_id: str | None = None
    session_id: str | None = None
    return_tokens_as_token_ids: bool | None = None
    return_token_ids: bool | None = None
    cache_salt: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    kv_transfer_params: dict[str, Any] | None = None
    ec_transfer_params: dict[str, Any] | None = None
    vllm_xargs: dict[str, Any] | None = None


class ChatCompletionRequest(VllmServingExtras):
    """``POST /v1/chat/completions`` body: OpenAI's fields plus vLLM's extras."""

    # OpenAI
    messages: Annotated[list[Message], Field(min_length=1)]
    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_tokens: PositiveCount | None = None
    max_completion_tokens: PositiveCount | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stop: str | Annotated[list[str], Field(max_length=64)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: CountOrAll | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    seed: Int64 | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(min_length=1)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None

    # vLLM extras (sampling)
    use_beam_search: bool | None = None
    top_k: CountOrAll | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None
    length_penalty: float | None = None
    stop_token_ids: list[Int32] | None = None
    include_stop_str_in_output: bool | None = None
    ignore_eos: bool | None = None
    min_tokens: Count | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    truncate_prompt_tokens: CountOrAll | None = None
    truncation_side: Literal["left", "right"] | None = None
    prompt_logprobs: CountOrAll | None = None
    logprob_token_ids: Annotated[list[Int32], Field(min_length=1)] | None = None
    allowed_token_ids: list[Int32] | None = None
    bad_words: list[str] | None = None
    thinking_token_budget: Int32 | None = None
    include_reasoning: bool | None = None
    repetition_detection: dict[str, Any] | None = None
    stream_interval: PositiveCount | None = None
    # vLLM extras (prompt and template)
    echo: bool | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    add_special_tokens: bool | None = None
    documents: list[dict[str, str]] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, Any] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    # vLLM extras (serving)
    return_weight_versions: bool | None = None
    return_prompt_text: bool | None = None

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ChatCompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise _FieldError(
                "stream_options", "stream_options can only be set when stream is true"
            )
        if self.stop is not None:
            stops = [self.stop] if isinstance(self.stop, str) else self.stop
            if any(s == "" for s in stops):
                raise _FieldError("stop", "stop strings must not be empty")
        if (
            self.tool_choice is not None
            and self.tool_choice != "none"
            and not self.tools
            and not self.functions
        ):
            raise _FieldError("tool_choice", "tool_choice requires tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tools:
            names = {t.function.name for t in self.tools if isinstance(t, FunctionTool)}
            if self.tool_choice.function.name not in names:
                raise _FieldError(
                    "tool_choice",
                    f"tool_choice names function {self.tool_choice.function.name!r}, "
                    "which is not in tools",
                )
        return self

    # -- derived values the gateway needs -----------------------------------------
    def output_limit(self) -> int | None:
        """The client's cap on generated tokens (per choice)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def wants_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


VLLM_EXTRAS: frozenset[str] = frozenset(
    {
        "use_beam_search", "top_k", "min_p", "repetition_penalty", "length_penalty",
        "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
        "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
        "truncation_side", "prompt_logprobs", "logprob_token_ids", "allowed_token_ids",
        "bad_words", "thinking_token_budget", "include_reasoning", "repetition_detection",
        "stream_interval", "echo", "add_generation_prompt", "continue_final_message",
        "add_special_tokens", "documents", "chat_template", "chat_template_kwargs",
        "media_io_kwargs", "mm_processor_kwargs", "structured_outputs", "priority",
        "request_id", "session_id", "return_tokens_as_token_ids", "return_token_ids",
        "return_weight_versions", "return_prompt_text", "cache_salt", "kv_transfer_params",
        "ec_transfer_params", "vllm_xargs",
    }
)  # fmt: skip


class _FieldError(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


_UNION_LABELS = ("str", "int", "float", "bool", "list[", "dict[", "tagged-union[", "function-",
                 "literal[")  # fmt: skip
_TAGS = _ROLES | _KNOWN_PARTS | {
    "other", "custom", "json_object", "json_schema", "structural_tag", "allowed_tools",
}  # fmt: skip
_UNION_FIELDS = {"response_format", "tool_choice"}


def error_param(exc: ValidationError) -> tuple[str | None, str]:
    """The dotted path of the first invalid field and a one-line message."""
    err = exc.errors(include_url=False)[0]
    ctx_err = err.get("ctx", {}).get("error")
    if isinstance(ctx_err, _FieldError):
        return ctx_err.param, str(ctx_err)
    parts: list[str] = []
    prev: str | int | None = None
    for item in err["loc"]:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith(_UNION_LABELS):
            continue
        elif item in _TAGS and (isinstance(prev, int) or prev in _UNION_FIELDS):
            pass  # the tag a discriminated union adds after its field or index
        else:
            parts.append(("." if parts else "") + item)
        prev = item
    param = "".join(parts) or None
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "field required"
    return param, f"{param}: {msg}" if param else msg


FieldError = _FieldError  # raised by a model validator: the error names ``param``
