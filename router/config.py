"""The YAML config: pydantic models, ``${ENV}`` interpolation, cross-checks.

Every problem is reported with the YAML path it sits at (``pools.gpu.members[0]
.backend: ...``). Unknown keys are errors so typos are caught. Strings may use
``${VAR}`` (an error when VAR is unset) and ``${VAR:-default}``; ``$$`` is a
literal dollar sign.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from router.contract import VLLM_EXTRAS

DEFAULT_CONFIG = "default.yaml"
ANTHROPIC_SAMPLING = frozenset({"temperature", "top_p", "top_k"})
WINDOWS = ("minute", "hour", "day", "month")


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: " + "; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Listen(_Strict):
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080


class RedisSettings(_Strict):
    url: str = ""
    on_error: Literal["allow", "deny"] = "allow"
    cluster: bool = False
    key_prefix: str = "spillway"
    socket_timeout_seconds: PositiveFloat = 0.5
    connect_timeout_seconds: PositiveFloat = 0.5
    max_connections: PositiveInt = 64


class Timeouts(_Strict):
    """Per-backend timeouts, in seconds."""

    connect: PositiveFloat = 5.0
    first_byte: PositiveFloat = 120.0
    idle: PositiveFloat = 60.0
    total: PositiveFloat = 900.0


class SimulateSettings(_Strict):
    """Knobs of the built-in simulated model."""

    # time to first token; with a prefix cache, for a prompt none of which is cached
    ttft_ms: Annotated[float, Field(ge=0)] = 0.0
    tokens_per_second: Annotated[float, Field(ge=0)] = 0.0  # 0: as fast as possible
    failure_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    failure_status: Annotated[int, Field(ge=400, le=599)] = 503
    seed: int = 0
    # requests generated at once (vLLM's max_num_seqs); the rest wait in line. 0: no limit
    max_num_seqs: Annotated[int, Field(ge=0)] = 0
    # prefix cache: an LRU of this many blocks of block_size prompt tokens (0: none);
    # time to first token scales with the share of the prompt not found in it
    prefix_cache_blocks: Annotated[int, Field(ge=0)] = 0
    block_size: PositiveInt = 16


class Backend(_Strict):
    provider: Literal["openai", "anthropic", "azure", "simulate"]
    url: str | None = None
    api_key: SecretStr | None = None
    token_env: str | None = None  # azure without api_key: bearer token from this variable
    headers: dict[str, str] = Field(default_factory=dict)
    # vllm: forward every vLLM extra; openai: hosted API, drop (or reject) them
    flavour: Literal["vllm", "openai"] = "vllm"
    unsupported_params: Literal["drop", "reject"] = "drop"
    # openai flavour: the vLLM extras it takes anyway; anthropic: the sampling
    # parameters its models still take (deprecated upstream: not sent unless listed)
    allow_params: list[str] = Field(default_factory=list)
    # further parameters an OpenAI-compatible backend refuses (per unsupported_params;
    # stream_options is then never sent, max_completion_tokens is sent as max_tokens)
    deny_params: list[str] = Field(default_factory=list)
    metrics_url: str | None = None
    max_concurrency: PositiveInt | None = None
    timeouts: Timeouts = Timeouts()
    api_version: str | None = None
    anthropic_version: str = "2023-06-01"
    simulate: SimulateSettings = SimulateSettings()

    @model_validator(mode="after")
    def _url_rules(self) -> Backend:
        if self.provider in ("openai", "azure") and not self.url:
            raise ValueError(f"provider {self.provider!r} needs url")
        if self.url and not re.match(r"^https?://[^/\s]+", self.url):
            raise ValueError(f"url must be an http(s) URL, got {self.url!r}")
        for name in (self.url, self.metrics_url):
            if name and name.startswith("http://") and "@" in name.split("/")[2]:
                raise ValueError("credentials in a URL are not allowed; use api_key")
        if self.token_env is not None:
            if self.provider != "azure":
                raise ValueError("token_env is only used by provider 'azure'")
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", self.token_env):
                raise ValueError(
                    f"token_env must name an environment variable, got {self.token_env!r}"
                )
        if self.provider == "azure" and self.api_key is None and self.token_env is None:
            raise ValueError("provider 'azure' needs api_key or token_env")
        if self.deny_params and self.provider not in ("openai", "azure"):
            raise ValueError("deny_params is only used by providers 'openai' and 'azure'")
        for name in ("model", "messages"):
            if name in self.deny_params:
                raise ValueError(f"deny_params: {name!r} cannot be denied")
        allowed, kind = VLLM_EXTRAS, "a vLLM extra parameter"
        if self.provider == "anthropic":
            allowed, kind = ANTHROPIC_SAMPLING, "one of " + ", ".join(sorted(ANTHROPIC_SAMPLING))
        unknown = [p for p in self.allow_params if p not in allowed]
        if unknown:
            raise ValueError(f"allow_params: {unknown[0]!r} is not {kind}")
        return self


class Member(_Strict):
    backend: str
    model: str
    weight: PositiveFloat = 1.0


class Price(_Strict):
    input_per_mtok: Annotated[float, Field(ge=0)] = 0.0
    output_per_mtok: Annotated[float, Field(ge=0)] = 0.0


class Budget(_Strict):
    """Token or USD amounts per UTC calendar window; ``pools`` scopes a team budget."""

    tokens_per_hour: PositiveInt | None = None
    tokens_per_day: PositiveInt | None = None
    tokens_per_month: PositiveInt | None = None
    usd_per_hour: PositiveFloat | None = None
    usd_per_day: PositiveFloat | None = None
    usd_per_month: PositiveFloat | None = None
    pools: list[str] | None = None

    @model_validator(mode="after")
    def _has_amount(self) -> Budget:
        if not self.amounts():
            raise ValueError("a budget needs at least one of tokens_per_* or usd_per_*")
        return self

    def amounts(self) -> list[tuple[Literal["tokens", "usd"], str, float]]:
        """(unit, window, amount) for every amount set."""
        out: list[tuple[Literal["tokens", "usd"], str, float]] = []
        for window in ("hour", "day", "month"):
            tok = getattr(self, f"tokens_per_{window}")
            if tok is not None:
                out.append(("tokens", window, float(tok)))
            usd = getattr(self, f"usd_per_{window}")
            if usd is not None:
                out.append(("usd", window, float(usd)))
        return out


class QueueSettings(_Strict):
    """A saturated pool queues requests, fair across teams, instead of spilling at once."""

    max_wait_ms: PositiveInt = 5000  # then on to the next pool of the route, or 429
    max_depth: PositiveInt = 1000  # requests waiting, all teams and priorities together
    # while a lower priority band has requests waiting it gets at least this share of
    # the pool (by reserved tokens), so higher bands cannot starve it
    min_share: Annotated[float, Field(ge=0, le=0.5)] = 0.05


class PrefixAffinitySettings(_Strict):
    """``strategy: prefix_affinity``: a conversation stays on the member holding its prefix."""

    # no member takes more than (1 + epsilon) x the mean load (requests at the members)
    epsilon: Annotated[float, Field(gt=0, le=10)] = 0.25
    max_prefix_bytes: Annotated[int, Field(ge=64, le=1048576)] = 65536  # hashed at most


Strategy = Literal["round_robin", "weighted", "least_loaded", "lowest_latency", "prefix_affinity"]


class Pool(_Strict):
    strategy: Strategy = "round_robin"
    members: Annotated[list[Member], Field(min_length=1)]
    budget: Budget | None = None
    price: Price = Price()
    max_output_tokens: PositiveInt = 4096
    affinity: Literal["none", "user", "header"] = "none"
    affinity_header: str = "x-session-id"
    max_waiting: Annotated[int, Field(ge=0)] | None = None
    queue: QueueSettings | None = None  # None: a saturated pool is skipped at once
    prefix_affinity: PrefixAffinitySettings = PrefixAffinitySettings()


class When(_Strict):
    teams: list[str] | None = None
    prompt_tokens_over: Annotated[int, Field(ge=0)] | None = None
    prompt_tokens_under: PositiveInt | None = None
    headers: dict[str, str] | None = None
    tools: bool | None = None
    stream: bool | None = None


class Route(_Strict):
    name: str | None = None
    when: When | None = None
    pools: Annotated[list[str], Field(min_length=1)]


class ModelEntry(_Strict):
    routes: Annotated[list[Route], Field(min_length=1)]
    aliases: list[str] = Field(default_factory=list)
    description: str | None = None


class Limits(_Strict):
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    concurrent: PositiveInt | None = None


PRIORITY_LIMIT = 1000  # priorities (config and x-spillway-priority) lie within +-this


class Team(_Strict):
    models: list[str] | None = None  # None: every model
    limits: Limits = Limits()
    budgets: list[Budget] = Field(default_factory=list)
    weight: Annotated[float, Field(gt=0, le=1000)] = 1.0  # share of a queued pool
    # queued requests of higher priority go first; negative: shed, never queued
    priority: Annotated[int, Field(ge=-PRIORITY_LIMIT, le=PRIORITY_LIMIT)] = 0


class Key(_Strict):
    id: Annotated[str, Field(min_length=1, max_length=128)]
    team: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    key: SecretStr | None = None
    limits: Limits | None = None
    budgets: list[Budget] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_secret(self) -> Key:
        if (self.sha256 is None) == (self.key is None):
            raise ValueError("a key needs exactly one of sha256 or key")
        if self.key is not None and len(self.key.get_secret_value()) < 8:
            raise ValueError("key must be at least 8 characters")
        return self

    def digest(self) -> str:
        if self.sha256 is not None:
            return self.sha256.lower()
        assert self.key is not None
        return hashlib.sha256(self.key.get_secret_value().encode()).hexdigest()


class ServerSettings(_Strict):
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    max_header_bytes: Annotated[int, Field(ge=1024, le=65536)] = 8190
    max_headers: Annotated[int, Field(ge=16, le=512)] = 100
    body_timeout_seconds: PositiveFloat = 30.0
    keepalive_timeout_seconds: PositiveFloat = 75.0
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 30.0
    # after SIGTERM, /readyz fails this long before the listener closes (load balancers
    # stop sending first); then in-flight requests get shutdown_grace_seconds to finish
    drain_delay_seconds: Annotated[float, Field(ge=0)] = 0.0
    # poll the config file this often and reload it when it changes (0: only on SIGHUP)
    watch_config_seconds: Annotated[float, Field(ge=0)] = 2.0
    route_headers: bool = True


class QuotaSettings(_Strict):
    on_budget_short: Literal["clamp", "reject"] = "clamp"
    lease_seconds: PositiveInt = 900


class RetrySettings(_Strict):
    """Retries before the first byte reaches the client, to another member or pool."""

    max_attempts: PositiveInt = 3  # upstream attempts per request, all pools together
    # retries in the last window_seconds never exceed budget_ratio x the requests in that
    # window, plus min_per_second x window_seconds (so a quiet gateway can still retry)
    budget_ratio: Annotated[float, Field(ge=0)] = 0.2
    min_per_second: Annotated[float, Field(ge=0)] = 5.0
    window_seconds: PositiveFloat = 10.0
    attempt_timeout_seconds: PositiveFloat | None = None  # to the first byte of one attempt
    backoff_base_seconds: Annotated[float, Field(ge=0)] = 0.02  # full jitter, doubling
    backoff_max_seconds: Annotated[float, Field(ge=0)] = 0.5
    retry_after_max_seconds: Annotated[float, Field(ge=0)] = 2.0  # longer: not retried there


class HealthSettings(_Strict):
    """Passive ejection of failing members, active probes, load scraping."""

    failure_threshold: PositiveInt = 3  # consecutive failures that eject a member
    ejection_seconds: PositiveFloat = 5.0  # first cooldown; doubles while it keeps failing
    max_ejection_seconds: PositiveFloat = 300.0
    interval_seconds: PositiveFloat = 1.0  # probes of ejected members and /metrics scrapes
    probe_timeout_seconds: PositiveFloat = 2.0
    probe_path: str = "/models"  # GET {url}{probe_path}; backends without url probe metrics_url
    scrape_timeout_seconds: PositiveFloat = 1.0


class RoutingSettings(_Strict):
    retries: RetrySettings = RetrySettings()
    health: HealthSettings = HealthSettings()


class LoggingSettings(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"
    requests: bool = True


class MetricsSettings(_Strict):
    """How often the gauges read off the request path (budgets, backend health) refresh."""

    refresh_seconds: PositiveFloat = 10.0


class Config(_Strict):
    listen: Listen = Listen()
    redis: RedisSettings = RedisSettings()
    server: ServerSettings = ServerSettings()
    quota: QuotaSettings = QuotaSettings()
    routing: RoutingSettings = RoutingSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    backends: dict[str, Backend]
    pools: dict[str, Pool]
    models: dict[str, ModelEntry]
    teams: dict[str, Team] = Field(default_factory=dict)
    keys: list[Key] = Field(default_factory=list)


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
    return problems


def _budget_scopes(cfg: Config, where: str, budgets: list[Budget]) -> list[str]:
    problems = []
    for b, budget in enumerate(budgets):
        for p, pool in enumerate(budget.pools or []):
            if pool not in cfg.pools:
                problems.append(f"{where}.budgets[{b}].pools[{p}]: undefined pool {pool!r}")
    return problems


# ------------------------------------------------------------------------ loading


def parse_config(text: str, source: str = "config", env: Mapping[str, str] | None = None) -> Config:
    """Parse YAML text into a checked :class:`Config`; raise :class:`ConfigError`."""
    try:
        doc = yaml.safe_load(text)
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
