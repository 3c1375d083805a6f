"""What a request is checked against: the checks of a (key, pool) pair.

A :class:`Check` is one counter with one limit: a rate limit of the key or
team, a concurrency slot set, or one amount of a budget (team, key, pool).
The amount a request reserves on a check is ``base + per_out * out`` where
``out`` is the output-token cap, so a store can clamp ``out`` to what the
tightest budget has left.

Keys carry a Redis Cluster hash tag: everything of a team (its keys included)
shares ``{team:<name>}``; a pool's own budget lives under ``{pool:<name>}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from router.config import Budget, Config, Limits, Pool, Price

Kind = Literal["r", "c", "b"]  # rate counter, concurrency slots, budget
NANO_PER_USD = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Check:
    kind: Kind
    key: str  # base key; the store appends the window's bucket
    tag: str  # hash tag: checks of one tag can go in one script on a Cluster
    window: str  # minute | hour | day | month ('' for concurrency)
    limit: float
    unit: Literal["requests", "tokens", "usd", "slots"]
    scope: Literal["key", "team", "pool"]
    owner: str  # key id, team or pool name
    name: str  # the config name: requests_per_minute, usd_per_month, ...
    pools: tuple[str, ...] | None = None  # the budget's pool scope
    in_price: float = 0.0  # nano-USD per prompt token (usd budgets)
    out_price: float = 0.0  # nano-USD per output token
    # as the scripts get them, encoded once: the check's values, its key
    spec: bytes = field(init=False, repr=False, compare=False)
    key_bytes: bytes = field(init=False, repr=False, compare=False)
    limit_text: str = field(init=False, repr=False, compare=False)  # x-ratelimit-limit-*

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", ",".join(self.script_args()).encode())
        object.__setattr__(self, "key_bytes", self.key.encode())
        object.__setattr__(self, "limit_text", str(int(self.limit)))

    @property
    def pool_specific(self) -> bool:
        """A pool budget or a team/key budget scoped to pools: another pool may fit."""
        return self.scope == "pool" or self.pools is not None

    def describe(self) -> str:
        scope = f" (pools: {', '.join(self.pools)})" if self.pools else ""
        return f"{self.scope} {self.owner!r} {self.name}{scope}"

    def amounts(self, prompt: int, n: int) -> tuple[float, float]:
        """(base, per_out): what a request reserves is base + per_out * out."""
        if self.kind == "c":
            return 1.0, 0.0
        if self.unit == "requests":
            return 1.0, 0.0
        if self.unit == "usd":
            return prompt * self.in_price, n * self.out_price
        return float(prompt), float(n)

    def charge(self, prompt: int, completion: int) -> int:
        """What actual usage costs on this check (settlement)."""
        if self.kind == "c":
            return 0
        if self.unit == "requests":
            return 1
        if self.unit == "usd":
            return math.ceil(prompt * self.in_price + completion * self.out_price)
        return prompt + completion

    def script_args(self) -> list[str]:
        """This check's 6 values as the Lua scripts read them (``read_checks`` in
        common.lua); joined once in ``spec``."""
        unit = {"requests": "q", "tokens": "t", "usd": "u", "slots": "s"}[self.unit]
        return [self.kind, self.window, repr(self.limit), unit, repr(self.in_price),
                repr(self.out_price)]  # fmt: skip

    def display(self, amount: float) -> float | int:
        """Stored units -> the config's units (nano-USD -> USD; counts as integers)."""
        return amount / NANO_PER_USD if self.unit == "usd" else int(amount)


class Checks(tuple[Check, ...]):
    """A plan's checks, as the planner hands them out (one per caller and pool, until
    the config changes). ``encoded``: what a store derives from them once (the Redis
    store: its script keys and values), kept with the plan so it lives as long."""

    encoded: Any = None


def bucket_start(window: str, now: float) -> datetime:
    t = datetime.fromtimestamp(now, UTC)
    if window == "minute":
        return t.replace(second=0, microsecond=0)
    if window == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    if window == "day":
        return t.replace(hour=0, minute=0, second=0, microsecond=0)
    return t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def bucket_id(window: str, now: float) -> int:
    """The same bucket numbers as the Lua scripts."""
    if window == "minute":
        return int(now // 60)
    if window == "hour":
        return int(now // 3600)
    if window == "day":
        return int(now // 86400)
    t = datetime.fromtimestamp(now, UTC)
    return t.year * 12 + t.month - 1


RATE_SPAN = 60.0  # rate limits slide over the last 60 s (see rate_keys in common.lua)


def rate_weight(now: float) -> float:
    """The weight of the previous minute's count: the part of it within the last 60 s."""
    return 1.0 - (now - (now // RATE_SPAN) * RATE_SPAN) / RATE_SPAN


def rate_wait(cur: float, prev: float, limit: float, cost: float, now: float) -> float:
    """Seconds until a rate check has room for ``cost`` more, nothing else arriving
    (``cur``, ``prev``: this and the previous minute's counts). As ``rate_wait`` in Lua."""
    elapsed = now - (now // RATE_SPAN) * RATE_SPAN
    if cost > limit:
        return RATE_SPAN - elapsed
    room = limit - cost
    if prev > 0 and cur <= room:
        return max(0.0, RATE_SPAN * (1 - (room - cur) / prev) - elapsed)
    extra = RATE_SPAN * (1 - room / cur) if cur > 0 else 0.0
    return RATE_SPAN - elapsed + extra


def reset_at(window: str, now: float) -> float:
    """Epoch seconds when the window holding ``now`` ends."""
    if window == "minute":
        return (now // 60 + 1) * 60
    if window == "hour":
        return (now // 3600 + 1) * 3600
    if window == "day":
        return (now // 86400 + 1) * 86400
    start = bucket_start("month", now)
    nxt = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return nxt.timestamp()


def _slug(pools: list[str] | None) -> str:
    return "all" if not pools else "+".join(sorted(pools))


class KeySpec(Protocol):
    """The caller a request is checked for (``router.auth.Principal``): a config key, a
    database key or an SSO user (``user:<id>``), each with its own counters."""

    @property
    def key_id(self) -> str: ...
    @property
    def team(self) -> str: ...
    @property
    def key_limits(self) -> Limits | None: ...
    @property
    def key_budgets(self) -> tuple[Budget, ...]: ...


@dataclass(frozen=True, slots=True, eq=False)
class ConfigKey:
    """A key of the config as a :class:`KeySpec`."""

    key_id: str
    team: str
    key_limits: Limits | None
    key_budgets: tuple[Budget, ...]


CACHE_LIMIT = 8192  # cached (caller, pool) plans; SSO users make the set open-ended


class Planner:
    """Builds, and caches, the checks for each (caller, pool) of one config.

    A cached plan is reused only for the very caller object it was built for, so a
    database key whose limits changed (a new object) gets a new plan.
    """

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self._prefix = cfg.redis.key_prefix
        self._cache: dict[tuple[str, str], tuple[KeySpec, tuple[Check, ...]]] = {}
        self._budgets: tuple[tuple[Check, str], ...] | None = None
        self._keys = {k.id: ConfigKey(k.id, k.team, k.limits, tuple(k.budgets)) for k in cfg.keys}

    def spec(self, key: KeySpec | str) -> KeySpec:
        """``key`` itself, or the config key of that id."""
        return self._keys[key] if isinstance(key, str) else key

    def checks(self, key: KeySpec | str, pool: str) -> tuple[Check, ...]:
        if isinstance(key, str):
            key = self._keys[key]
        hit = self._cache.get((key.key_id, pool))
        if hit is not None and hit[0] is key:
            return hit[1]
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        checks = Checks(self._build(key, pool))
        self._cache[(key.key_id, pool)] = (key, checks)
        return checks

    def identity_checks(self, key: KeySpec | str) -> tuple[Check, ...]:
        """Rate limits, slots and unscoped budgets of a key and its team (no pool)."""
        return tuple(self._build(self.spec(key), None))

    def scoped_pools(self, key: KeySpec | str) -> list[str]:
        """Pools whose checks differ from the key's identity checks."""
        key = self.spec(key)
        team = self._cfg.teams[key.team]
        pools = [p for p, pc in self._cfg.pools.items() if pc.budget is not None]
        for b in [*team.budgets, *key.key_budgets]:
            pools += b.pools or []
        return list(dict.fromkeys(p for p in pools if p in self._cfg.pools))

    def _build(self, key: KeySpec, pool: str | None) -> list[Check]:
        key_id = key.key_id
        team = self._cfg.teams[key.team]
        tag = f"{{team:{key.team}}}"
        base = f"{self._prefix}:{tag}"
        out: list[Check] = []
        out += _limits(team.limits, tag, f"{base}:team", "team", key.team)
        if key.key_limits is not None:
            out += _limits(key.key_limits, tag, f"{base}:key:{key_id}", "key", key_id)
        price = self._cfg.pools[pool].price if pool is not None else None
        for budget in team.budgets:
            if pool is None or budget.pools is None or pool in budget.pools:
                out += _budget(budget, tag, f"{base}:team:b", "team", key.team, price)
        for budget in key.key_budgets:
            if pool is None or budget.pools is None or pool in budget.pools:
                out += _budget(budget, tag, f"{base}:key:{key_id}:b", "key", key_id, price)
        if pool is not None:
            pool_cfg: Pool = self._cfg.pools[pool]
            if pool_cfg.budget is not None:
                ptag = f"{{pool:{pool}}}"
                out += _budget(
                    pool_cfg.budget, ptag, f"{self._prefix}:{ptag}:b", "pool", pool, price
                )
        return out

    def budget_checks(self) -> tuple[tuple[Check, str], ...]:
        """Every budget amount of the config with its team ('' for a pool budget).

        The same counters admission uses, for the budget gauges.
        """
        if self._budgets is not None:
            return self._budgets
        out: list[tuple[Check, str]] = []
        for name, team in self._cfg.teams.items():
            tag = f"{{team:{name}}}"
            for budget in team.budgets:
                checks = _budget(budget, tag, f"{self._prefix}:{tag}:team:b", "team", name, None)
                out += [(c, name) for c in checks]
        for key in self._cfg.keys:
            tag = f"{{team:{key.team}}}"
            base = f"{self._prefix}:{tag}:key:{key.id}:b"
            for budget in key.budgets:
                out += [(c, key.team) for c in _budget(budget, tag, base, "key", key.id, None)]
        for pool in self._cfg.pools:
            out += [(c, "") for c in self.pool_budget_checks(pool)]
        self._budgets = tuple(out)
        return self._budgets

    def pool_budget_checks(self, pool: str) -> tuple[Check, ...]:
        cfg = self._cfg.pools[pool]
        if cfg.budget is None:
            return ()
        ptag = f"{{pool:{pool}}}"
        return tuple(_budget(cfg.budget, ptag, f"{self._prefix}:{ptag}:b", "pool", pool, cfg.price))


def _limits(
    limits: Limits, tag: str, base: str, scope: Literal["key", "team"], owner: str
) -> list[Check]:
    out = []
    if limits.requests_per_minute:
        out.append(Check("r", f"{base}:rpm", tag, "minute", limits.requests_per_minute,
                         "requests", scope, owner, "requests_per_minute"))  # fmt: skip
    if limits.tokens_per_minute:
        out.append(Check("r", f"{base}:tpm", tag, "minute", limits.tokens_per_minute,
                         "tokens", scope, owner, "tokens_per_minute"))  # fmt: skip
    if limits.concurrent:
        out.append(Check("c", f"{base}:conc", tag, "", limits.concurrent,
                         "slots", scope, owner, "concurrent"))  # fmt: skip
    return out


def _budget(
    budget: Budget,
    tag: str,
    base: str,
    scope: Literal["key", "team", "pool"],
    owner: str,
    price: Price | None,
) -> list[Check]:
    out = []
    scope_slug = _slug(budget.pools)
    pools = tuple(budget.pools) if budget.pools else None
    for unit, window, amount in budget.amounts():
        if unit == "usd":
            p = price or Price()
            out.append(Check(
                "b", f"{base}:usd:{window}:{scope_slug}", tag, window, amount * NANO_PER_USD,
                "usd", scope, owner, f"usd_per_{window}", pools,
                in_price=p.input_per_mtok * 1000, out_price=p.output_per_mtok * 1000,
            ))  # fmt: skip
        else:
            out.append(Check(
                "b", f"{base}:tokens:{window}:{scope_slug}", tag, window, amount,
                "tokens", scope, owner, f"tokens_per_{window}", pools,
            ))  # fmt: skip
    return out
