"""The gateway's changes to a client's OpenAI-style body before it is forwarded."""

from __future__ import annotations

from typing import Any

from router.errors import BackendRejectedParam
from router.fim import infill
from router.providers.base import Call


def patch_body(
    call: Call,
    backend: str,
    blocked: frozenset[str] = frozenset(),
    unsupported: str = "drop",
    cap_param: str = "max_tokens",
) -> dict[str, Any]:
    """The client's JSON object with the gateway's changes applied (a copy).

    A completion with ``suffix`` for a member with a FIM template gets the
    infilling prompt instead (:func:`router.fim.infill`).

    ``blocked`` names the parameters the backend does not take: with
    ``unsupported == "reject"`` the first one the client set (not null) is a
    400 naming it and the backend; otherwise they are dropped. Two are the
    gateway's to handle whatever the policy: ``stream_options`` is not sent
    (nor asked for usage), ``max_completion_tokens`` is sent as ``max_tokens``.

    An output cap of the gateway's (``call.max_tokens``: a clamp, or the pool's cap
    when the client set none) goes in the parameter the client used, else in
    ``cap_param``: OpenAI's reasoning models take only ``max_completion_tokens``.
    """
    body = dict(call.body)
    body["model"] = call.member_model
    if call.fim is not None and body.get("suffix") is not None:
        infill(body, call.fim)
    if "stream_options" in blocked:  # such a backend reports usage on its own, or not at all
        body.pop("stream_options", None)
    elif call.stream:
        opts = body.get("stream_options")
        opts = dict(opts) if isinstance(opts, dict) else {}
        opts["include_usage"] = True
        body["stream_options"] = opts
    if "max_completion_tokens" in blocked and "max_completion_tokens" in body:
        value = body.pop("max_completion_tokens")  # the older name for the same cap
        if body.get("max_tokens") is None:
            body["max_tokens"] = value
    if call.max_tokens is not None:
        named = False
        for name in ("max_completion_tokens", "max_tokens"):
            if name in body:
                body[name] = call.max_tokens
                named = True
        if not named:
            body[cap_param] = call.max_tokens
    if blocked:
        extras = [k for k in body if k in blocked]
        if unsupported == "reject":
            for k in extras:
                if body[k] is not None:
                    raise BackendRejectedParam(
                        f"Parameter {k!r} is not supported by backend {backend!r}.", param=k
                    )
        for k in extras:
            del body[k]
    return body
