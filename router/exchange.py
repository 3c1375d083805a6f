"""The state of one client request as it goes through the gateway."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from router.auth import Principal
from router.inbound.base import ClientCall
from router.providers import Adapter, Usage
from router.routing.rules import Decision


class Exchange:
    """The state of one client request, for settlement, metrics and the log."""

    __slots__ = (
        "adapter", "backend", "call", "clamped", "client_rid", "committed", "decision",
        "endpoint", "model", "opened_at", "out", "pool", "pools", "principal", "queued",
        "read_at", "response", "rid", "span", "started", "status", "ttft", "usage",
    )  # fmt: skip

    def __init__(
        self, rid: str, started: float, endpoint: str, client_rid: str | None = None
    ) -> None:
        self.rid = rid  # the gateway's own id: unique per request
        self.client_rid = client_rid  # the client's x-request-id: echoed, never trusted
        self.started = started
        self.endpoint = endpoint  # the client API: chat, completions, embeddings
        self.principal: Principal | None = None
        self.call: ClientCall | None = None
        self.decision: Decision | None = None
        self.pools: tuple[str, ...] = ()  # the route's pools that can serve the call
        self.model = ""
        self.pool = ""
        self.backend = ""
        self.status = 200
        self.ttft: float | None = None
        self.usage: Usage | None = None
        self.adapter: Adapter | None = None  # the attempt in flight or the one that answered
        self.out = 0
        self.clamped = False
        self.committed = False  # the response has started: no retry, no refund
        self.response: web.StreamResponse | None = None  # the one that started
        self.opened_at = 0.0
        self.read_at = 0.0
        self.queued = 0.0  # seconds spent waiting in pool queues
        self.span: Any = None  # the request's trace span when tracing is on

    @property
    def echo_id(self) -> str:
        """The id the client sees in ``x-request-id`` and the upstream gets: the
        client's own when it sent one, else the gateway's."""
        return self.client_rid or self.rid


def billable(x: Exchange) -> tuple[int, int]:
    """(prompt, completion) tokens to charge; an unreported prompt is estimated."""
    usage = x.usage
    if usage is None:
        return 0, 0
    prompt = usage.prompt_tokens
    if not usage.reported and not prompt and x.call is not None:
        prompt = x.call.estimate()
    return prompt, usage.completion_tokens
