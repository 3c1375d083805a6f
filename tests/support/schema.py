"""Validate against OpenAI's published JSON Schema (vendored in tests/fixtures)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

BUNDLE = Path(__file__).parent.parent / "fixtures" / "openai_chat_schemas.json"


@cache
def _bundle() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(BUNDLE.read_text())
    return doc


@cache
def _validator(root: str) -> jsonschema.protocols.Validator:
    doc = dict(_bundle())
    doc["$ref"] = f"#/$defs/{root}"
    cls = jsonschema.validators.validator_for(doc)
    return cls(doc)  # type: ignore[no-any-return]


def validate(root: str, instance: Any) -> None:
    """Raise jsonschema.ValidationError unless ``instance`` is a valid ``root``."""
    _validator(root).validate(instance)
