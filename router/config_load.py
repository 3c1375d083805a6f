"""Loading the YAML config: ``${ENV}`` interpolation, validation errors that name
the YAML path, and the cross-checks between sections (:mod:`router.config` holds
the models).

Every problem is reported with the YAML path it sits at (``pools.gpu.members[0]
.backend: ...``). Strings may use ``${VAR}`` (an error when VAR is unset) and
``${VAR:-default}``; ``$$`` is a literal dollar sign.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from router.config import USER_PREFIX, Budget, Config, ConfigError
from router.serving import endpoint_checks

DEFAULT_CONFIG = "default.yaml"
# libyaml's safe loader when PyYAML was built with it: several times faster on big configs
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ----------------------------------------------------------------- interpolation

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        return _VAR.sub(sub, node)
    if isinstance(node, dict):
        return {
            k: _interpolate(v, env, f"{path}.{k}" if path else str(k), problems)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(v, env, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    return node


def _loc_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        else:
            out += f".{item}" if out else str(item)
    return out or "<root>"


# ------------------------------------------------------------------ cross-checks


def _cross_check(cfg: Config) -> list[str]:
    problems: list[str] = []
    metrics_port = cfg.server.metrics_port
    taken = {cfg.listen.port: "listen.port"}
    if cfg.admin is not None:
        taken[cfg.admin.listen.port] = "admin.listen.port"
    if metrics_port and metrics_port in taken:
        problems.append(f"server.metrics_port: {metrics_port} is {taken[metrics_port]} as well")
    for name, pool in cfg.pools.items():
        for i, m in enumerate(pool.members):
            if m.backend not in cfg.backends:
                problems.append(
                    f"pools.{name}.members[{i}].backend: undefined backend {m.backend!r}"
                )
        if pool.budget and pool.budget.pools:
            problems.append(f"pools.{name}.budget.pools: a pool budget cannot be scoped")
        if pool.queue is not None and pool.queue.min_share:
            bands = len({0, *(t.priority for t in cfg.teams.values() if t.priority >= 0)})
            if pool.queue.min_share * (bands - 1) >= 1:
                problems.append(
                    f"pools.{name}.queue.min_share: {bands - 1} priority bands below the top "
                    f"one at {pool.queue.min_share:g} each would leave the top band nothing"
                )
    model_names = set(cfg.models)
    seen_names: dict[str, str] = {}
    for name, entry in cfg.models.items():
        for alias in entry.aliases:
            if alias in model_names or alias in seen_names:
                problems.append(f"models.{name}.aliases: {alias!r} is already a model or alias")
            seen_names[alias] = name
        for r, route in enumerate(entry.routes):
            for p, pool_name in enumerate(route.pools):
                if pool_name not in cfg.pools:
                    problems.append(
                        f"models.{name}.routes[{r}].pools[{p}]: undefined pool {pool_name!r}"
                    )
            if route.when and route.when.teams:
                for t, team_name in enumerate(route.when.teams):
                    if team_name not in cfg.teams:
                        problems.append(
                            f"models.{name}.routes[{r}].when.teams[{t}]: "
                            f"undefined team {team_name!r}"
                        )
            if route.when and route.when.headers:
                for h, pattern in route.when.headers.items():
                    if pattern.startswith("~"):
                        try:
                            re.compile(pattern[1:])
                        except re.error as exc:
                            problems.append(
                                f"models.{name}.routes[{r}].when.headers.{h}: bad regex: {exc}"
                            )
    for name, team in cfg.teams.items():
        for i, model in enumerate(team.models or []):
            if not any(c in model for c in "*?[") and model not in model_names:
                problems.append(f"teams.{name}.models[{i}]: undefined model {model!r}")
        problems += _budget_scopes(cfg, f"teams.{name}", team.budgets)
    ids: set[str] = set()
    digests: set[str] = set()
    for i, key in enumerate(cfg.keys):
        if key.team not in cfg.teams:
            problems.append(f"keys[{i}].team: undefined team {key.team!r}")
        if key.id in ids:
            problems.append(f"keys[{i}].id: duplicate key id {key.id!r}")
        ids.add(key.id)
        digest = key.digest()
        if digest in digests:
            problems.append(f"keys[{i}]: the same secret is already used by another key")
        digests.add(digest)
        problems += _budget_scopes(cfg, f"keys[{i}]", key.budgets)
        if key.id.startswith(USER_PREFIX):
            problems.append(f"keys[{i}].id: ids starting with {USER_PREFIX!r} are SSO users'")
    problems += _identity_checks(cfg)
    return problems + endpoint_checks(cfg)


def _identity_checks(cfg: Config) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for i, issuer in enumerate(cfg.auth.jwt):
        if issuer.issuer in seen:
            problems.append(f"auth.jwt[{i}].issuer: {issuer.issuer!r} is listed twice")
        seen.add(issuer.issuer)
        for value, team in issuer.teams.items():
            if team not in cfg.teams:
                problems.append(f"auth.jwt[{i}].teams.{value}: undefined team {team!r}")
    if cfg.admin is not None:
        if not cfg.database.url:
            problems.append("admin: the admin API keeps keys in the database: set database.url")
        if cfg.admin.jwt is not None and not cfg.auth.jwt:
            problems.append("admin.jwt: admin tokens are verified by auth.jwt issuers; none set")
    return problems


def _budget_scopes(cfg: Config, where: str, budgets: list[Budget]) -> list[str]:
    problems = []
    for b, budget in enumerate(budgets):
        for p, pool in enumerate(budget.pools or []):
            if pool not in cfg.pools:
                problems.append(f"{where}.budgets[{b}].pools[{p}]: undefined pool {pool!r}")
    return problems


# ------------------------------------------------------------------------ loading


def parse_config(
    text: str, source: str = "config", env: Mapping[str, str] | None = None, *,
    interleaved: bool = False,
) -> Config:  # fmt: skip
    """Parse YAML text into a checked :class:`Config`; raise :class:`ConfigError`.

    ``interleaved``: parse with the pure-Python loader, for a worker thread beside a
    running event loop (libyaml's faster loader holds the GIL while it reads the whole
    document, stalling the loop as if it ran on it)."""
    loader = yaml.SafeLoader if interleaved else _YAML_LOADER
    try:
        doc = yaml.load(text, Loader=loader)  # a safe loader (no arbitrary objects)
    except yaml.YAMLError as exc:
        raise ConfigError([f"invalid YAML: {exc}"], source) from None
    if not isinstance(doc, dict):
        raise ConfigError(["<root>: the config must be a mapping"], source)
    problems: list[str] = []
    doc = _interpolate(doc, os.environ if env is None else env, "", problems)
    if problems:
        raise ConfigError(problems, source)
    try:
        cfg = Config.model_validate(doc)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            msg = "unknown key (typo?)" if err["type"] == "extra_forbidden" else err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            lines.append(f"{_loc_path(err['loc'])}: {msg}")
        raise ConfigError(lines, source) from None
    problems = _cross_check(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def default_config_text() -> str:
    return resources.files("router").joinpath(DEFAULT_CONFIG).read_text(encoding="utf-8")


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Load ``path``; ``None`` loads the packaged default config."""
    if path is None:
        return parse_config(default_config_text(), "default config", env)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror}"], str(path)) from None
    return parse_config(text, str(path), env)
