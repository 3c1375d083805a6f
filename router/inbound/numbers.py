"""Why a body orjson refused is a 400, and which parameter it names.

JSON has no ``NaN`` or ``Infinity``, and a number literal beyond a double
(``1e400``, a 400-digit integer) has no value any backend could take. orjson
refuses all of them; so does the gateway, naming the field (unknown fields
included) so the client can see what to fix. Anything else orjson refuses is
malformed JSON. Only refused bodies get here: the cost is off the hot path.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pydantic_core

from router.errors import InvalidRequest

INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1


def unreadable(raw: bytes, exc: orjson.JSONDecodeError) -> InvalidRequest:
    """The 400 for a body orjson refused with ``exc``."""
    try:  # the lenient parser: NaN and Infinity in, big numbers as they are
        doc = pydantic_core.from_json(raw, allow_inf_nan=True)
    except ValueError:
        doc = None
    if doc is not None:
        where = _non_finite(doc, "")
        if where is not None:
            param, value = where
            return InvalidRequest(
                f"Invalid request: {param}: {value} is not a number JSON can carry; "
                "numbers must be finite and within a double's range.",
                param=param, code="invalid_number",
            )  # fmt: skip
    return InvalidRequest(
        f"We could not parse the JSON body of your request. ({exc})", code="invalid_json"
    )


def _non_finite(value: Any, path: str) -> tuple[str, str] | None:
    """(dotted path, value) of the first number that is not finite or is an integer
    beyond 64 bits, depth first."""
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        text = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
        return path or "body", text
    if isinstance(value, int) and not isinstance(value, bool):
        if INT64_MIN <= value <= UINT64_MAX:
            return None
        return path or "body", f"an integer of {value.bit_length()} bits"
    if isinstance(value, dict):
        for k, v in value.items():
            found = _non_finite(v, f"{path}.{k}" if path else str(k))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _non_finite(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None
