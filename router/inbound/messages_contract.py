"""Pydantic models of Anthropic's Messages API request (``POST /v1/messages``).

Only what the gateway reads is typed: the top-level fields, the turns and the
content blocks a translation to chat completions understands (text, image,
document, tool_use, tool_result, thinking, redacted_thinking). Every object
keeps its unknown keys (``extra="allow"``) and a block of a type the gateway
does not know is kept as :class:`OtherBlock`, so a native backend receives the
body exactly as sent (the raw bytes, with the model name replaced) and a
translation can name what it cannot carry.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from router.contract import type_tag


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# ------------------------------------------------------------------------ blocks


class TextBlock(_Open):
    type: Literal["text"]
    text: str


class Base64Source(_Open):
    type: Literal["base64"]
    media_type: str
    data: str


class UrlSource(_Open):
    type: Literal["url"]
    url: str


class OtherSource(_Open):
    type: str


Source = Annotated[
    Annotated[Base64Source, Tag("base64")]
    | Annotated[UrlSource, Tag("url")]
    | Annotated[OtherSource, Tag("other")],
    Discriminator(type_tag(("base64", "url"))),
]


class ImageBlock(_Open):
    type: Literal["image"]
    source: Source


class DocumentBlock(_Open):
    type: Literal["document"]
    source: dict[str, Any]


class ToolUseBlock(_Open):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(_Open):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Open):
    type: Literal["redacted_thinking"]
    data: str


class OtherBlock(_Open):
    """A block type the gateway does not translate (server tools' results,
    search results, container uploads, ...): passed natively, else a 400."""

    type: str


ResultPart = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[DocumentBlock, Tag("document")]
    | Annotated[OtherBlock, Tag("other")],
    Discriminator(type_tag(("text", "image", "document"))),
]


class ToolResultBlock(_Open):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ResultPart] | None = None
    is_error: bool | None = None


_BLOCKS = {"text", "image", "document", "tool_use", "tool_result", "thinking",
           "redacted_thinking"}  # fmt: skip


Block = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[DocumentBlock, Tag("document")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")]
    | Annotated[OtherBlock, Tag("other")],
    Discriminator(type_tag(_BLOCKS)),
]


class Turn(_Open):
    # "system": a mid-conversation system message (newer API versions)
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


# ------------------------------------------------------------------------- tools


class Tool(_Open):
    """A client tool (``type`` absent or ``custom``) or a server tool (any other
    ``type``, such as ``web_search_20250305``)."""

    name: str
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None

    @property
    def client(self) -> bool:
        return self.type in (None, "custom") and self.input_schema is not None


class ToolChoice(_Open):
    type: Literal["auto", "any", "none", "tool"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(_Open):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None


# ----------------------------------------------------------------------- request


class CountTokensRequest(_Open):
    """``POST /v1/messages/count_tokens``: the prompt of a Messages request."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: list[Turn]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``."""

    messages: Annotated[list[Turn], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=0)]
    stream: bool | None = None
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    metadata: dict[str, Any] | None = None
