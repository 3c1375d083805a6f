"""Pydantic models of OpenAI's Responses request (``POST /v1/responses``).

Only what the gateway reads is typed: the input items and their content parts,
the tools and the fields a bridge translates. Unknown fields and item types
are kept (``extra="allow"``) so a native backend gets the body as sent; a
bridge refuses, with a 400 naming it, whatever it cannot carry.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.contract import FieldError


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputPart(_Open):
    """A content part: input_text / output_text (``text``), input_image, input_file,
    refusal; the type decides which fields matter."""

    type: str
    text: str | None = None
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None
    file_data: str | None = None
    file_url: str | None = None
    filename: str | None = None
    refusal: str | None = None


class InputItem(_Open):
    """One input item. ``type`` is absent on the short message form ``{role, content}``."""

    type: str | None = None
    id: str | None = None
    # message
    role: str | None = None
    content: str | list[InputPart] | None = None
    # function_call / function_call_output / custom tool calls
    call_id: str | None = None
    name: str | None = None
    namespace: str | None = None
    arguments: str | None = None
    output: str | list[InputPart] | None = None
    input: str | None = None

    @property
    def kind(self) -> str:
        return self.type or "message"

    @model_validator(mode="after")
    def _shape(self) -> InputItem:
        kind = self.kind
        if kind == "message":
            if self.role not in ("user", "assistant", "system", "developer"):
                raise FieldError(
                    "input", "a message's role must be one of user, assistant, system, developer"
                )
            if self.content is None:
                raise FieldError("input", "a message needs content")
        elif kind == "function_call":
            if not self.call_id or not self.name or self.arguments is None:
                raise FieldError("input", "a function_call item needs call_id, name and arguments")
        elif kind in ("function_call_output", "custom_tool_call_output") and (
            not self.call_id or self.output is None
        ):
            raise FieldError("input", f"a {kind} item needs call_id and output")
        elif kind == "custom_tool_call" and (not self.call_id or not self.name):
            raise FieldError("input", "a custom_tool_call item needs call_id and name")
        return self


class FunctionToolSpec(_Open):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    format: dict[str, Any] | None = None  # a custom tool's input format
    tools: list[FunctionToolSpec] | None = None  # a namespace's functions


class TextFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(_Open):
    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningConfig(_Open):
    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(_Open):
    """``POST /v1/responses`` body."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    tools: list[FunctionToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    store: bool | None = None
    previous_response_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    metadata: dict[str, str] | None = None
    stream: bool | None = None
    user: str | None = None
    include: list[str] | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None

    @model_validator(mode="after")
    def _rules(self) -> ResponsesRequest:
        if self.input is None and self.previous_response_id is None:
            raise FieldError("input", "input is required")
        if isinstance(self.tool_choice, str) and self.tool_choice not in (
            "none", "auto", "required",
        ):  # fmt: skip
            raise FieldError("tool_choice", "tool_choice must be none, auto, required or an object")
        for i, tool in enumerate(self.tools or ()):
            inner = tool.tools if tool.type == "namespace" else [tool]
            if tool.type in ("function", "custom", "namespace") and not all(
                t.name for t in inner or ()
            ):
                raise FieldError(f"tools[{i}].name", "a function tool needs a name")
        return self

    def items(self) -> list[dict[str, Any]]:
        """The input as a list of item objects (a string is one user message)."""
        if self.input is None:
            return []
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        return [item.model_dump(mode="json", exclude_unset=True, by_alias=True)
                for item in self.input]  # fmt: skip


FunctionToolSpec.model_rebuild()
