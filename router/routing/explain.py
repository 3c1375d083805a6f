"""``spillway explain``: which route and pools a request would take, and why (pure).

:func:`explain` works on the config alone and returns a JSON-ready document:
the model the name resolves to, every route with each condition and whether
it holds, the chosen route's pools in order, and for each pool what would make
a request skip it (a spent budget, saturation, no healthy member). What only a
running gateway knows (budget use, health, load) is listed as unknown; a
running gateway fills a ``live`` entry per pool (:mod:`router.inspect`).
:func:`render` turns the document into the text the CLI prints.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from multidict import CIMultiDict

from router.config import Budget, Config, When
from router.errors import InvalidRequest
from router.routing.rules import Facts, Rules
from router.routing.scheduler import PRIORITY_HEADER, asked_priority, band_of

UNKNOWN_OFFLINE = [
    "budget use: whether a budget listed is spent (or would clamp max_tokens)",
    "member health: ejections after failures, probe results",
    "load: in-flight requests and scraped vLLM queues, hence saturation",
]


def _amounts(b: Budget) -> str:
    parts = []
    for unit, window, amount in b.amounts():
        if unit == "usd":
            parts.append(f"usd_per_{window} {amount:,.2f}")
        else:
            parts.append(f"tokens_per_{window} {int(amount):,}")
    return ", ".join(parts)


def _conditions(when: When | None, f: Facts) -> list[tuple[bool, str]]:
    """Each condition of ``when`` with whether it holds; mirrors ``rules._CompiledWhen``."""
    w = when or When()
    out: list[tuple[bool, str]] = []
    if w.teams is not None:
        out.append((f.team in w.teams, f"teams {w.teams}: team is {f.team!r}"))
    if w.tools is not None:
        out.append(
            (
                f.tools == w.tools,
                f"tools {str(w.tools).lower()}: request has {'tools' if f.tools else 'no tools'}",
            )
        )
    if w.stream is not None:
        out.append(
            (
                f.stream == w.stream,
                f"stream {str(w.stream).lower()}: request "
                f"{'streams' if f.stream else 'does not stream'}",
            )
        )
    for name, pattern in (w.headers or {}).items():
        value = f.headers.get(name)
        if value is None:
            out.append((False, f"header {name} {pattern!r}: not sent"))
        elif pattern.startswith("~"):
            ok = re.fullmatch(pattern[1:], value) is not None
            out.append((ok, f"header {name} matches /{pattern[1:]}/: sent {value!r}"))
        else:
            out.append((value == pattern, f"header {name} = {pattern!r}: sent {value!r}"))
    if w.prompt_tokens_over is not None:
        n = f.prompt_tokens()
        out.append((n > w.prompt_tokens_over, f"prompt_tokens_over {w.prompt_tokens_over}: {n}"))
    if w.prompt_tokens_under is not None:
        n = f.prompt_tokens()
        out.append((n < w.prompt_tokens_under, f"prompt_tokens_under {w.prompt_tokens_under}: {n}"))
    return out


def _budgets(cfg: Config, team: str, pool: str) -> list[str]:
    out = []
    p = cfg.pools[pool]
    if p.budget is not None:
        out.append(f"pool {pool!r} budget {_amounts(p.budget)}")
    t = cfg.teams.get(team)
    for b in t.budgets if t else []:
        if b.pools is None:
            out.append(f"team {team!r} budget {_amounts(b)} (all pools: a spent one answers 429)")
        elif pool in b.pools:
            out.append(f"team {team!r} budget {_amounts(b)} (pools {', '.join(b.pools)})")
    if any(k.team == team and k.budgets for k in cfg.keys):
        out.append("the calling key's own budgets (some keys of this team have them)")
    return out


def _capacity(cfg: Config, pool: str) -> list[str]:
    """When the pool counts as saturated: every healthy member full."""
    p = cfg.pools[pool]
    full = []
    if any(cfg.backends[m.backend].max_concurrency is not None for m in p.members):
        limits = []
        for m in p.members:
            mc = cfg.backends[m.backend].max_concurrency
            limits.append(f"{m.backend} {mc if mc is not None else 'no limit'}")
        full.append("at max_concurrency (" + ", ".join(limits) + ")")
    if p.max_waiting is not None:
        scraped = [m.backend for m in p.members if cfg.backends[m.backend].metrics_url]
        where = ", ".join(scraped) if scraped else "none: no member has metrics_url"
        full.append(f"more than {p.max_waiting} waiting (scraped: {where})")
    if not full:
        return []
    return ["every healthy member is " + " or ".join(full)]


def _queue(cfg: Config, team: str, pool: str, headers: Mapping[str, str]) -> str | None:
    """What a saturated pool with a queue does with the request."""
    q = cfg.pools[pool].queue
    if q is None:
        return None
    t = cfg.teams[team]
    priority = t.priority
    asked = headers.get(PRIORITY_HEADER)
    lowered = ""
    if asked is not None:
        try:
            priority = min(priority, asked_priority(asked))
            lowered = f" ({PRIORITY_HEADER}: {asked.strip()})"
        except InvalidRequest:
            return f"the request is refused (400): {PRIORITY_HEADER} {asked!r} is not an integer"
    band = band_of({0, *(x.priority for x in cfg.teams.values())}, priority)
    if band < 0:
        return (
            f"priority band {band}{lowered} is sheddable: never queued, moved on at once "
            "while the pool is full or others wait"
        )
    share = f", each lower band owed {q.min_share:.0%}" if q.min_share else ""
    return (
        f"waits up to {q.max_wait_ms} ms for a turn (queue of {q.max_depth}), then moves on; "
        f"turns by priority band (this request: {band}{lowered}){share}, then fair across "
        f"teams by weight (team {team!r}: {t.weight:g}) charged by reserved tokens"
    )


def _pool(
    cfg: Config, team: str, pool: str, position: int, headers: Mapping[str, str]
) -> dict[str, Any]:
    p = cfg.pools[pool]
    health = cfg.routing.health
    capacity = _capacity(cfg, pool)
    queue = _queue(cfg, team, pool, headers)
    if queue is not None and queue.startswith("waits") and capacity:
        capacity = [f"{capacity[0]}, after waiting in its queue"]
    affinity = "none"
    if p.affinity == "user":
        affinity = "the request's `user`"
    elif p.affinity == "header":
        affinity = f"header {p.affinity_header}"
    return {
        "position": position,
        "pool": pool,
        "strategy": p.strategy,
        "affinity": affinity,
        "queue": queue,
        "members": [
            {
                "backend": m.backend,
                "model": m.model,
                "weight": m.weight,
                "provider": cfg.backends[m.backend].provider,
            }
            for m in p.members
        ],
        "skipped_if": {
            "budget": _budgets(cfg, team, pool) or ["no budget applies"],
            "saturated": capacity or ["never (no max_concurrency, no max_waiting)"],
            "unhealthy": [
                f"no member healthy ({health.failure_threshold} consecutive failures eject "
                f"a member for {health.ejection_seconds:g}s, doubling to "
                f"{health.max_ejection_seconds:g}s)"
            ],
        },
        "live": None,
    }


def explain(
    cfg: Config,
    *,
    team: str,
    model: str,
    prompt_tokens: int | None,
    headers: Mapping[str, str],
    stream: bool = False,
    tools: bool = False,
) -> dict[str, Any]:
    """What the config says about a request of ``team`` for ``model``."""
    rules = Rules(cfg)
    headers = CIMultiDict(headers)
    assumed = prompt_tokens is None
    size = 0 if prompt_tokens is None else prompt_tokens
    doc: dict[str, Any] = {
        "request": {
            "model": model,
            "team": team,
            "stream": stream,
            "tools": tools,
            "prompt_tokens": size,
            "prompt_tokens_assumed": assumed,
            "headers": dict(headers),
        },
        "model": None,
        "allowed": False,
        "routes": [],
        "route": None,
        "pools": [],
        "problem": None,
        "unknown": list(UNKNOWN_OFFLINE),
        "notes": [],
    }
    if assumed:
        doc["notes"].append("prompt size not given (--prompt-tokens): assuming 0 tokens")
    resolved = rules.resolve(model)
    if resolved is None:
        doc["problem"] = f"no model, alias or glob matches {model!r}: the answer is 404"
        return doc
    doc["model"] = resolved
    if resolved != model:
        how = "alias" if model in cfg.models[resolved].aliases else "glob"
        doc["notes"].append(f"{model!r} resolves to {resolved!r} by {how}")
    if team not in cfg.teams:
        doc["problem"] = f"team {team!r} is not configured"
        return doc
    if not rules.allowed(team, resolved):
        doc["problem"] = f"team {team!r} may not use {resolved!r} (teams.{team}.models): 403"
        return doc
    doc["allowed"] = True
    facts = Facts(
        team=team, stream=stream, tools=tools, headers=headers, prompt_tokens=lambda: size
    )
    decision = rules.decide(resolved, facts)
    for i, route in enumerate(cfg.models[resolved].routes):
        conds = _conditions(route.when, facts)
        name = route.name or f"{resolved}#{i}"
        doc["routes"].append(
            {
                "index": i,
                "name": name,
                "pools": list(route.pools),
                "matches": all(ok for ok, _ in conds),
                "conditions": [{"holds": ok, "what": what} for ok, what in conds],
            }
        )
        if decision is not None and decision.route_index == i:
            break
    if decision is None:
        doc["problem"] = "no route matches: the answer is 404 (no_matching_route)"
        return doc
    doc["route"] = decision.route_name
    doc["pools"] = [_pool(cfg, team, p, i + 1, headers) for i, p in enumerate(decision.pools)]
    if cfg.quota.on_budget_short == "clamp":
        doc["notes"].append(
            "a budget that cannot cover max_tokens but has room left clamps max_tokens "
            "(second pass) rather than skipping the pool for good"
        )
    return doc


# ---------------------------------------------------------------------------- text


def render(doc: dict[str, Any]) -> str:
    r = doc["request"]
    size = f"{r['prompt_tokens']:,}" + (" (assumed)" if r["prompt_tokens_assumed"] else "")
    lines = [
        f"request: model {r['model']!r}, team {r['team']!r}, "
        f"stream {'yes' if r['stream'] else 'no'}, tools {'yes' if r['tools'] else 'no'}, "
        f"prompt {size} tokens"
        + (
            ", headers " + ", ".join(f"{k}={v}" for k, v in r["headers"].items())
            if r["headers"]
            else ""
        ),
    ]
    for note in doc["notes"]:
        lines.append(f"note: {note}")
    if doc["routes"]:
        lines.append(f"routes of {doc['model']!r} (the first that matches wins):")
        for route in doc["routes"]:
            mark = "MATCH" if route["matches"] else "no   "
            lines.append(f"  {mark} {route['name']} -> {', '.join(route['pools'])}")
            for c in route["conditions"]:
                lines.append(f"          {'yes' if c['holds'] else 'NO '}  {c['what']}")
            if not route["conditions"]:
                lines.append("          (no conditions: matches every request)")
    if doc["problem"]:
        lines.append(f"result: {doc['problem']}")
        return "\n".join(lines) + "\n"
    lines.append(f"route taken: {doc['route']}; candidate pools, tried in order:")
    for p in doc["pools"]:
        members = ", ".join(f"{m['backend']} ({m['model']})" for m in p["members"])
        lines.append(f"  {p['position']}. {p['pool']}: {p['strategy']} over {members}")
        if p["affinity"] != "none":
            lines.append(f"       affinity: {p['affinity']}")
        if p["queue"]:
            lines.append(f"       when saturated: {p['queue']}")
        live = p.get("live")
        if live:
            lines.append(f"       now: {live['verdict']}")
            for line in live["details"]:
                lines.append(f"            {line}")
        skip = p["skipped_if"]
        lines.append("       skipped if a budget is spent: " + "; ".join(skip["budget"]))
        lines.append("       skipped if saturated: " + "; ".join(skip["saturated"]))
        lines.append("       skipped if unhealthy: " + "; ".join(skip["unhealthy"]))
    lines.append("  a failure before the first byte moves to the next member, then the next pool")
    if doc["unknown"]:
        lines.append("not known from the config alone:")
        lines += [f"  - {u}" for u in doc["unknown"]]
    return "\n".join(lines) + "\n"
