"""Validate Messages API bodies with the official ``anthropic`` SDK's own types.

The SDK's request types are TypedDicts whose lists are ``Iterable`` (pydantic
validates those lazily), so validated values are walked to the end to make
every nested block face its validator. Unknown top-level keys are refused
(``extra="forbid"``), as the API refuses them.
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

import pydantic
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.beta import message_create_params as beta_params
from anthropic.types.message_create_params import (
    MessageCreateParamsNonStreaming,
    MessageCreateParamsStreaming,
)

_FORBID = pydantic.ConfigDict(extra="forbid")


@cache
def _request_adapter(stream: bool, beta: bool = False) -> pydantic.TypeAdapter[Any]:
    params: Any = MessageCreateParamsStreaming if stream else MessageCreateParamsNonStreaming
    if beta:
        params = (
            beta_params.MessageCreateParamsStreaming
            if stream
            else beta_params.MessageCreateParamsNonStreaming
        )
    # a list around the TypedDict so that the adapter may carry a config; the beta
    # types have TypedDicts open to extra items (fallbacks), which keep them open
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pydantic.warnings.PydanticDeprecatedSince20)
        warnings.filterwarnings("ignore", message=".*allows extra items.*")
        return pydantic.TypeAdapter(list[params], config=_FORBID)


def _drain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drain(v) for k, v in value.items()}
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump()
    if isinstance(value, str | bytes):
        return value
    if hasattr(value, "__iter__"):
        return [_drain(v) for v in value]
    return value


def validate_request(body: dict[str, Any], *, beta: bool = False) -> dict[str, Any]:
    """Raise ``pydantic.ValidationError`` unless ``body`` is a valid MessageCreateParams
    (of the beta API, ``/v1/messages?beta=true``, when ``beta``)."""
    validated = _request_adapter(bool(body.get("stream")), beta)
    out: dict[str, Any] = _drain(validated.validate_python([body]))[0]
    return out


def validate_message(doc: dict[str, Any]) -> Message:
    """A non-streamed response body, as the SDK parses it."""
    return Message.model_validate(doc)


@cache
def _event_adapter() -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(RawMessageStreamEvent)


def validate_event(doc: dict[str, Any]) -> Any:
    """One streamed event (anything but ``ping`` and ``error``), as the SDK parses it."""
    return _event_adapter().validate_python(doc)
