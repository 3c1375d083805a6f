"""A running gateway's answer to ``spillway explain --url``: the config's explanation
plus what only live state knows (member health and load, budget use), per pool."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from router.auth import Principal
from router.quota.base import StoreUnavailable
from router.routing.explain import explain
from router.runtime import Runtime


def _members(rt: Runtime, pool: str, now: float) -> list[str]:
    bal = rt.balancers[pool]
    out = []
    for m in bal.members:
        s = m.state
        parts = ["healthy" if s.healthy else f"ejected ({max(0.0, s.ejected_until - now):.1f}s)"]
        limit = f"/{s.max_concurrency}" if s.max_concurrency is not None else ""
        parts.append(f"{s.inflight}{limit} in flight")
        if s.load_known:
            parts.append(
                f"vLLM running {s.running:g} waiting {s.waiting:g} KV cache {s.kv_cache:.0%}"
            )
        if s.ttft_ewma is not None:
            parts.append(f"first byte ~{s.ttft_ewma * 1000:.0f} ms")
        if bal.saturated(m):
            parts.append("SATURATED")
        out.append(f"member {m.backend}: " + ", ".join(parts))
    return out


async def _budgets(
    rt: Runtime, principal: Principal, pool: str, prompt: int, out: int
) -> tuple[list[str], str | None]:
    """Lines on each budget, and the name of one that cannot take the request."""
    checks = [c for c in rt.quota.checks(principal, pool) if c.kind == "b"]
    if not checks:
        return [], None
    try:
        _, used = await rt.quota.primary.status(checks)
    except StoreUnavailable:
        _, used = await rt.quota.fallback.status(checks)
    lines = []
    short: str | None = None
    for c, u in zip(checks, used, strict=True):
        base, per_out = c.amounts(prompt, 1)
        left = c.limit - u
        verdict = "fits"
        if base + per_out * out > left:
            fit = int((left - base) // per_out) if per_out else 0
            if fit >= 1 and rt.quota.clamp:
                verdict = f"would clamp max_tokens to {fit}"
            else:
                verdict = "SPENT for this request"
                short = short or c.describe()
        unit = "$" if c.unit == "usd" else ""
        lines.append(
            f"budget {c.describe()}: {unit}{c.display(u):,.2f} of {unit}{c.display(c.limit):,.2f}"
            f" used this {c.window}: {verdict}"
        )
    return lines, short


async def live_explain(
    rt: Runtime,
    principal: Principal,
    *,
    model: str,
    prompt_tokens: int | None,
    headers: Mapping[str, str],
    stream: bool,
    tools: bool,
    max_tokens: int | None,
) -> dict[str, Any]:
    doc = explain(
        rt.cfg,
        team=principal.team,
        model=model,
        prompt_tokens=prompt_tokens,
        headers=headers,
        stream=stream,
        tools=tools,
    )
    doc["request"]["key"] = principal.key_id
    doc["request"]["headers"] = {}  # the caller's own headers: not echoed back
    if doc["problem"]:
        return doc
    doc["unknown"] = []
    doc["notes"].append(
        "live state of one gateway replica; budgets are estimated from the prompt size given"
    )
    now = asyncio.get_running_loop().time()
    first: str | None = None
    prompt = prompt_tokens or 0
    for p in doc["pools"]:
        pool = p["pool"]
        details = _members(rt, pool, now)
        out = max_tokens or rt.cfg.pools[pool].max_output_tokens
        budget_lines, short = await _budgets(rt, principal, pool, prompt, out)
        details += budget_lines
        status = rt.balancers[pool].status()
        gate = rt.scheduler.gates.get(pool)
        if gate is not None:
            waiting = ", ".join(f"{team or 'other'} (priority {band}) {n}"
                                for band, team, n in gate.queue.depths())  # fmt: skip
            details.append(
                f"queue: {len(gate.queue)} waiting" + (f": {waiting}" if waiting else "")
            )
        if status == "saturated" and gate is not None and short is None:
            if first is None:
                first = pool
                verdict = "WOULD WAIT in its queue for a turn, then serve or move on"
            else:
                verdict = "fallback if the pools above fail (would wait in its queue)"
        elif status != "ok":
            verdict = f"would be skipped: {status}"
        elif short is not None:
            verdict = f"would be skipped: budget spent ({short})"
        elif first is None:
            first = pool
            verdict = "WOULD SERVE the request"
        else:
            verdict = "fallback if the pools above fail"
        p["live"] = {"status": status, "verdict": verdict, "details": details}
    doc["serving_pool"] = first
    return doc
