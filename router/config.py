"""The YAML config's pydantic models (loading, interpolation and cross-checks:
:mod:`router.config_load`): pools, models, teams, keys, quotas and the gateway's own
settings here; where it connects in :mod:`router.config_connect`, who may call in
:mod:`router.config_identity`, the shared base in :mod:`router.config_base`.

Unknown keys are errors so typos are caught; each model checks its own fields.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from router.config_base import (
    ANTHROPIC_SAMPLING,
    USER_PREFIX,
    WINDOWS,
    ConfigError,
    Limits,
    PositiveFloat,
    PositiveInt,
    _Strict,
)
from router.config_connect import (
    TLS_OPTIONS,
    Backend,
    Listen,
    RedisSettings,
    SentinelSettings,
    SimulateSettings,
    Timeouts,
    TLSSettings,
    redis_url_options,
)
from router.config_identity import (
    AdminJwt,
    AdminSettings,
    AuthSettings,
    DatabaseSettings,
    JwtAlgorithm,
    JwtIssuer,
    Sha256Hex,
    TracingSettings,
)
from router.fim import PRESETS, FimTemplate
from router.serving import FimTemplateConfig, fim_setting

# re-exported: the config's parts, for importers of router.config
__all__ = [
    "ANTHROPIC_SAMPLING",
    "TLS_OPTIONS",
    "USER_PREFIX",
    "WINDOWS",
    "AdminJwt",
    "AdminSettings",
    "AuthSettings",
    "Backend",
    "ConfigError",
    "DatabaseSettings",
    "JwtAlgorithm",
    "JwtIssuer",
    "Limits",
    "Listen",
    "PositiveFloat",
    "PositiveInt",
    "RedisSettings",
    "SentinelSettings",
    "Sha256Hex",
    "SimulateSettings",
    "TLSSettings",
    "Timeouts",
    "TracingSettings",
    "_Strict",
    "redis_url_options",
]


class Member(_Strict):
    backend: str
    model: str
    weight: PositiveFloat = 1.0
    # fill-in-the-middle: "native" (the backend takes `suffix`), a preset, or a template
    fim: str | FimTemplateConfig | None = None
    # the backend is vLLM and counts tokens at /tokenize (Messages' count_tokens)
    tokenize: bool = False
    # OpenAI Responses: "native" (the server has /v1/responses, e.g. vLLM), "bridge"
    # (translated to chat completions); default: native for OpenAI (flavour openai)
    # and Azure, bridged for the rest
    responses: Literal["native", "bridge"] | None = None

    @field_validator("fim", mode="before")
    @classmethod
    def _fim_setting(cls, value: Any) -> Any:
        return fim_setting(value)

    def fim_template(self) -> FimTemplate | None:
        """The template the gateway renders (None: no FIM, or the backend's own)."""
        if isinstance(self.fim, FimTemplateConfig):
            return self.fim.template()
        if self.fim is None or self.fim == "native":
            return None
        return PRESETS[self.fim]


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
    kind: Literal["chat", "embeddings"] = "chat"  # chat: chat + completions endpoints
    routes: Annotated[list[Route], Field(min_length=1)]
    aliases: list[str] = Field(default_factory=list)
    description: str | None = None


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
    # serve /metrics on this port of its own (on the listen host), not on the API port:
    # it lists every team's spend (None: on the API port, as /metrics)
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None


class ResponsesStoreSettings(_Strict):
    """Responses kept for previous_response_id and GET /v1/responses/{id}."""

    ttl_seconds: PositiveInt = 86400
    max_entries: PositiveInt = 10000  # kept in process memory (quotas without Redis)


class ResponsesSettings(_Strict):
    store: ResponsesStoreSettings | None = None  # None: nothing is kept


class QuotaSettings(_Strict):
    on_budget_short: Literal["clamp", "reject"] = "clamp"
    lease_seconds: PositiveInt = 900
    # budget counters read this often and restored if Redis comes back empty (0: never)
    checkpoint_seconds: Annotated[float, Field(ge=0)] = 5.0
    checkpoint_file: str = ""  # also kept in this file, so a restarted gateway has it


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
    # a member whose provider refused the gateway's credentials or configuration
    # (401/402/403, 404) is taken out at once, for this long
    auth_ejection_seconds: PositiveFloat = 300.0
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
    responses: ResponsesSettings = ResponsesSettings()
    routing: RoutingSettings = RoutingSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    backends: dict[str, Backend]
    pools: dict[str, Pool]
    models: dict[str, ModelEntry]
    teams: dict[str, Team] = Field(default_factory=dict)
    keys: list[Key] = Field(default_factory=list)
    auth: AuthSettings = AuthSettings()
    admin: AdminSettings | None = None
    database: DatabaseSettings = DatabaseSettings()
    tracing: TracingSettings = TracingSettings()
