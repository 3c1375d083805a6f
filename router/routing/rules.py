"""Request + principal -> the route and its ordered candidate pools (pure).

Model names resolve exactly first, then by alias, then by glob (``llama-*``)
in config order. The first route whose ``when`` matches wins; its pools are
tried in order.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router.config import Config, Route, When


@dataclass(slots=True)
class Facts:
    """What a ``when`` clause may look at."""

    team: str
    stream: bool
    tools: bool
    headers: Mapping[str, str]
    prompt_tokens: Callable[[], int]  # computed only if a rule asks


@dataclass(frozen=True, slots=True)
class Decision:
    model: str  # the config model name
    route_index: int
    route_name: str
    pools: tuple[str, ...]


class _CompiledWhen:
    __slots__ = ("headers", "prompt_over", "prompt_under", "stream", "teams", "tools")

    def __init__(self, when: When | None) -> None:
        w = when or When()
        self.teams = frozenset(w.teams) if w.teams else None
        self.prompt_over = w.prompt_tokens_over
        self.prompt_under = w.prompt_tokens_under
        self.tools = w.tools
        self.stream = w.stream
        self.headers: list[tuple[str, re.Pattern[str] | str]] = []
        for name, pattern in (w.headers or {}).items():
            compiled: re.Pattern[str] | str = (
                re.compile(pattern[1:]) if pattern.startswith("~") else pattern
            )
            self.headers.append((name, compiled))

    def matches(self, f: Facts) -> bool:
        if self.teams is not None and f.team not in self.teams:
            return False
        if self.tools is not None and f.tools != self.tools:
            return False
        if self.stream is not None and f.stream != self.stream:
            return False
        for name, pattern in self.headers:
            value = f.headers.get(name)
            if value is None:
                return False
            if isinstance(pattern, str):
                if value != pattern:
                    return False
            elif not pattern.fullmatch(value):
                return False
        if self.prompt_over is not None or self.prompt_under is not None:
            n = f.prompt_tokens()
            if self.prompt_over is not None and n <= self.prompt_over:
                return False
            if self.prompt_under is not None and n >= self.prompt_under:
                return False
        return True


def _route_name(model: str, index: int, route: Route) -> str:
    return route.name or f"{model}#{index}"


class Rules:
    def __init__(self, cfg: Config) -> None:
        self._routes: dict[str, list[tuple[_CompiledWhen, Decision]]] = {}
        self._first: dict[str, Decision] = {}
        self._exact: dict[str, str] = {}
        self._globs: list[tuple[str, str]] = []
        for name, entry in cfg.models.items():
            compiled = []
            for i, route in enumerate(entry.routes):
                compiled.append(
                    (
                        _CompiledWhen(route.when),
                        Decision(name, i, _route_name(name, i, route), tuple(route.pools)),
                    )
                )
            self._routes[name] = compiled
            if entry.routes[0].when is None:
                self._first[name] = compiled[0][1]
            for alias in [name, *entry.aliases]:
                if any(c in alias for c in "*?["):
                    self._globs.append((alias, name))
                else:
                    self._exact[alias] = name
        self._allow: dict[str, tuple[frozenset[str], tuple[str, ...]] | None] = {}
        for team, t in cfg.teams.items():
            if t.models is None:
                self._allow[team] = None
            else:
                exact = frozenset(m for m in t.models if not any(c in m for c in "*?["))
                globs = tuple(m for m in t.models if m not in exact)
                self._allow[team] = (exact, globs)
        self._names = {name: [name, *e.aliases] for name, e in cfg.models.items()}
        self.kinds = {name: e.kind for name, e in cfg.models.items()}

    def resolve(self, requested: str) -> str | None:
        """The config model a client's model name means, or None."""
        hit = self._exact.get(requested)
        if hit is not None:
            return hit
        for pattern, name in self._globs:
            if fnmatch.fnmatchcase(requested, pattern):
                return name
        return None

    def allowed(self, team: str, model: str, own: tuple[str, ...] | None = None) -> bool:
        """``own``: the caller's own allowlist (a database key's ``models``), on top of
        the team's; names or globs."""
        if own is not None and not any(fnmatch.fnmatchcase(model, m) for m in own):
            return False
        rule = self._allow.get(team)
        if rule is None:
            return team in self._allow
        exact, globs = rule
        return model in exact or any(fnmatch.fnmatchcase(model, g) for g in globs)

    def unconditional(self, model: str) -> Decision | None:
        """The decision when the model's first route has no ``when`` (no facts needed)."""
        return self._first.get(model)

    def decide(self, model: str, facts: Facts) -> Decision | None:
        for when, decision in self._routes[model]:
            if when.matches(facts):
                return decision
        return None

    def pools_for(self, team: str, own: tuple[str, ...] | None = None) -> set[str]:
        """The pools a team's requests (a caller with its own allowlist) may be routed
        to: those of the routes of the models it may use that no ``when.teams``
        keeps it from."""
        out: set[str] = set()
        for name, routes in self._routes.items():
            if self.allowed(team, name, own):
                for when, decision in routes:
                    if when.teams is None or team in when.teams:
                        out.update(decision.pools)
        return out

    def visible_models(self, team: str, own: tuple[str, ...] | None = None) -> list[str]:
        """Names a team (and a caller with its own allowlist) may send (config names
        and their literal aliases)."""
        out: list[str] = []
        for name, names in self._names.items():
            if self.allowed(team, name, own):
                out.extend(n for n in names if not any(c in n for c in "*?["))
        return out
