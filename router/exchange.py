"""The state of one client request as it goes through the gateway."""

from __future__ import annotations

from router.auth import Principal
from router.contract import ChatCompletionRequest
from router.providers import Adapter, Usage
from router.quota import tokens as tokenest
from router.routing.rules import Decision


class Exchange:
    """The state of one client request, for settlement, metrics and the log."""

    __slots__ = (
        "adapter", "backend", "clamped", "committed", "decision", "model", "opened_at", "out",
        "pool", "principal", "prompt_bound", "queued", "read_at", "request", "rid", "started",
        "status", "ttft", "usage",
    )  # fmt: skip

    def __init__(self, rid: str, started: float) -> None:
        self.rid = rid
        self.started = started
        self.principal: Principal | None = None
        self.request: ChatCompletionRequest | None = None
        self.decision: Decision | None = None
        self.model = ""
        self.pool = ""
        self.backend = ""
        self.status = 200
        self.ttft: float | None = None
        self.usage: Usage | None = None
        self.adapter: Adapter | None = None  # the attempt in flight or the one that answered
        self.prompt_bound = 0
        self.out = 0
        self.clamped = False
        self.committed = False  # the response has started: no retry, no refund
        self.opened_at = 0.0
        self.read_at = 0.0
        self.queued = 0.0  # seconds spent waiting in pool queues


def billable(x: Exchange) -> tuple[int, int]:
    """(prompt, completion) tokens to charge; an unreported prompt is estimated."""
    usage = x.usage
    if usage is None:
        return 0, 0
    prompt = usage.prompt_tokens
    if not usage.reported and not prompt and x.request is not None:
        prompt = tokenest.estimate(x.request)
    return prompt, usage.completion_tokens
