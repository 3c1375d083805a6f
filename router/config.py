"""The YAML config's pydantic models (loading, interpolation and cross-checks:
:mod:`router.config_load`).

Unknown keys are errors so typos are caught; each model checks its own fields.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.asyncio.connection import parse_url as redis_parse_url

from router.fim import PRESETS, FimTemplate
from router.serving import VLLM_PARAMS, FimTemplateConfig, fim_setting

ANTHROPIC_SAMPLING = frozenset({"temperature", "top_p", "top_k"})
WINDOWS = ("minute", "hour", "day", "month")
USER_PREFIX = "user:"  # principal ids of SSO users


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


TLS_OPTIONS = frozenset(
    {"ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
)


def redis_url_options(url: str) -> dict[str, Any]:
    """What a Redis URL gives, read by redis-py's own parser: host, port or unix socket
    path, username, password, db, and the TLS options (query parameters of a
    ``rediss://`` URL). Raises ValueError for anything else."""
    parsed: dict[str, Any] = dict(redis_parse_url(url))
    options: dict[str, Any] = {}
    for name, value in parsed.items():
        if name == "connection_class":
            if value is SSLConnection:
                options["ssl"] = True
            elif value is UnixDomainSocketConnection:
                options["unix"] = True
        elif name in ("host", "port", "path", "username", "password", "db") or name in TLS_OPTIONS:
            options[name] = value
        else:
            raise ValueError(f"unknown option {name!r} in the redis URL")
    tls = sorted(name for name in options if name in TLS_OPTIONS)
    if tls and not options.get("ssl"):
        raise ValueError(f"{tls[0]} needs a rediss:// URL")
    if "ssl_check_hostname" in options:
        options["ssl_check_hostname"] = str(options["ssl_check_hostname"]).lower() in (
            "1", "true", "yes",
        )  # fmt: skip
    reqs = options.get("ssl_cert_reqs")
    if reqs is not None and reqs not in ("required", "optional", "none"):
        raise ValueError("ssl_cert_reqs must be required, optional or none")
    return options


class SentinelSettings(_Strict):
    """Redis Sentinel: the sentinels to ask, and the service whose primary to use."""

    hosts: Annotated[list[str], Field(min_length=1)]  # host:port
    service: Annotated[str, Field(min_length=1)]
    username: str = ""  # the sentinels' own ACL user and password, when they have one
    password: SecretStr | None = None
    tls: bool = False  # speak TLS to the sentinels too (with the url's ssl_* options)

    @model_validator(mode="after")
    def _hosts(self) -> SentinelSettings:
        for host in self.hosts:
            name, _, port = host.rpartition(":")
            if not name or not port.isdigit():
                raise ValueError(f"sentinel host must be host:port, got {host!r}")
        return self


class RedisSettings(_Strict):
    # redis://[user:password@]host[:port][/db], rediss://... (TLS, ssl_* query options),
    # unix:///path/to/socket[?db=N]; with sentinel: credentials, db and TLS of the primary
    url: str = ""
    on_error: Literal["allow", "deny"] = "allow"
    cluster: bool = False
    sentinel: SentinelSettings | None = None
    key_prefix: str = "spillway"
    socket_timeout_seconds: PositiveFloat = 0.5
    connect_timeout_seconds: PositiveFloat = 0.5
    max_connections: PositiveInt = 64
    health_check_seconds: Annotated[int, Field(ge=0)] = 15  # PING an idle connection first

    @property
    def enabled(self) -> bool:
        """Quotas are kept in Redis (else in-process)."""
        return bool(self.url) or self.sentinel is not None

    @model_validator(mode="after")
    def _url(self) -> RedisSettings:
        if self.url:
            try:
                options = redis_url_options(self.url)
            except ValueError as exc:
                raise ValueError(f"url: {exc}") from None
            if self.cluster and options.get("db"):
                raise ValueError("url: a Redis Cluster has only database 0")
            if self.cluster and options.get("unix"):
                raise ValueError("url: a Redis Cluster is not reached over a unix socket")
        if self.sentinel is not None and self.cluster:
            raise ValueError("sentinel and cluster cannot be used together")
        return self


class Timeouts(_Strict):
    """Per-backend timeouts, in seconds."""

    connect: PositiveFloat = 5.0
    first_byte: PositiveFloat = 120.0
    idle: PositiveFloat = 60.0
    total: PositiveFloat = 900.0


class TLSSettings(_Strict):
    """How a backend's TLS is checked: the system's CAs by default, a private CA
    (``ca_file``, PEM), a client certificate for mTLS (``cert_file`` + ``key_file``),
    or no verification at all (``verify: false``, warned about at start)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True

    @model_validator(mode="after")
    def _loads(self) -> TLSSettings:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        for path in (self.ca_file, self.cert_file, self.key_file):
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"cannot read {path}")
        try:
            self.context()
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the TLS files: {exc}") from None
        return self

    def context(self) -> ssl.SSLContext:
        """A client context built from these settings (reads the files)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


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
    api_key_file: str | None = None  # the key in a file, read again when it changes
    token_env: str | None = None  # azure: an Entra bearer token from this variable
    token_file: str | None = None  # azure: an Entra bearer token from this file
    # how often a credential from a file or the environment is read again (also at
    # once after the backend refused it)
    credential_refresh_seconds: PositiveFloat = 60.0
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
    tls: TLSSettings | None = None
    proxy: str | None = None  # egress proxy URL; default: HTTPS_PROXY/HTTP_PROXY/NO_PROXY
    api_version: str | None = None
    anthropic_version: str = "2023-06-01"
    simulate: SimulateSettings = SimulateSettings()
    # the provider bills what it generates even when the client hangs up (hosted APIs):
    # a cancelled non-streamed request is then read to its end in the background and
    # charged what the upstream reports. Default: true for hosted providers (anthropic,
    # azure, openai with flavour openai), false for self-hosted servers (vLLM aborts).
    bills_cancelled: bool | None = None

    @property
    def bills_generation(self) -> bool:
        """Whether a request cancelled by its client is still billed (see bills_cancelled)."""
        if self.bills_cancelled is not None:
            return self.bills_cancelled
        if self.provider in ("anthropic", "azure"):
            return True
        return self.provider == "openai" and self.flavour == "openai"

    @model_validator(mode="after")
    def _url_rules(self) -> Backend:
        if self.provider in ("openai", "azure") and not self.url:
            raise ValueError(f"provider {self.provider!r} needs url")
        if self.url and not re.match(r"^https?://[^/\s]+", self.url):
            raise ValueError(f"url must be an http(s) URL, got {self.url!r}")
        for name in (self.url, self.metrics_url):
            if name and name.startswith("http://") and "@" in name.split("/")[2]:
                raise ValueError("credentials in a URL are not allowed; use api_key")
        if self.proxy is not None and not re.match(r"^https?://[^/\s]+", self.proxy):
            raise ValueError("proxy must be an http(s) URL")
        sources = [n for n in ("api_key", "api_key_file", "token_env", "token_file")
                   if getattr(self, n) is not None]  # fmt: skip
        if len(sources) > 1:
            raise ValueError(f"give one credential, not {' and '.join(sources)}")
        for name in ("token_env", "token_file"):
            if getattr(self, name) is not None and self.provider != "azure":
                raise ValueError(f"{name} is only used by provider 'azure'")
        if self.token_env is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", self.token_env):
            raise ValueError(f"token_env must name an environment variable, got {self.token_env!r}")
        if self.provider == "azure" and not sources:
            raise ValueError(
                "provider 'azure' needs api_key, api_key_file, token_env or token_file"
            )
        if self.deny_params and self.provider not in ("openai", "azure"):
            raise ValueError("deny_params is only used by providers 'openai' and 'azure'")
        for name in ("model", "messages"):
            if name in self.deny_params:
                raise ValueError(f"deny_params: {name!r} cannot be denied")
        allowed, kind = VLLM_PARAMS, "a vLLM extra parameter"
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


JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


class JwtIssuer(_Strict):
    """An identity provider whose signed tokens (OIDC ID or access tokens) are accepted."""

    issuer: Annotated[str, Field(min_length=1)]
    audience: Annotated[list[str], Field(min_length=1)]
    jwks_url: str | None = None
    jwks_file: str | None = None
    algorithms: Annotated[list[JwtAlgorithm], Field(min_length=1)] = ["RS256", "ES256"]
    team_claim: str = "groups"  # a string or a list of strings; the first that maps wins
    teams: Annotated[dict[str, str], Field(min_length=1)]  # claim value -> team
    user_claim: str = "sub"  # who the user is, for auth.user_limits and the access log
    leeway_seconds: Annotated[float, Field(ge=0, le=300)] = 30.0
    refresh_seconds: PositiveFloat = 300.0  # JWKS re-read this often
    # an unknown kid re-reads the JWKS at most this often (garbage tokens cannot flood the IdP)
    min_refresh_seconds: Annotated[float, Field(ge=0)] = 10.0
    fetch_timeout_seconds: PositiveFloat = 5.0

    @model_validator(mode="before")
    @classmethod
    def _audience_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("audience"), str):
            return {**data, "audience": [data["audience"]]}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> JwtIssuer:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("an issuer needs exactly one of jwks_url or jwks_file")
        if self.jwks_url is not None and not re.match(r"^https?://[^/\s]+", self.jwks_url):
            raise ValueError(f"jwks_url must be an http(s) URL, got {self.jwks_url!r}")
        return self


class AuthSettings(_Strict):
    jwt: list[JwtIssuer] = Field(default_factory=list)
    # every SSO user's own limits (like a key's), counted per user on top of the team's
    user_limits: Limits | None = None
    token_cache_size: Annotated[int, Field(ge=0)] = 10000  # verified tokens remembered


class AdminJwt(_Strict):
    """Admin API callers with an SSO token whose ``claim`` holds one of ``values``."""

    claim: str = "groups"
    values: Annotated[list[str], Field(min_length=1)]


class AdminSettings(_Strict):
    """The key admin API, on a listener of its own (keep it off the public network)."""

    listen: Listen = Listen(host="127.0.0.1", port=8081)
    tokens: list[Sha256Hex] = Field(default_factory=list)  # sha256 of admin bearer tokens
    jwt: AdminJwt | None = None
    max_grace_seconds: Annotated[int, Field(ge=0)] = 7 * 86400  # rotation grace, at most

    @model_validator(mode="after")
    def _has_callers(self) -> AdminSettings:
        if not self.tokens and self.jwt is None:
            raise ValueError("admin needs tokens or jwt (who may call it)")
        return self


class DatabaseSettings(_Strict):
    """PostgreSQL holding the keys made through the admin API (empty url: none)."""

    url: str = ""
    schema_name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "spillway"
    resync_seconds: PositiveFloat = 30.0  # full re-read, in case a notification was lost
    connect_timeout_seconds: PositiveFloat = 5.0
    retry_seconds: PositiveFloat = 2.0  # reconnect delay while the database is down
    # a query on the follower's connection when it has been quiet this long: a database
    # that hangs or a network that drops everything is seen within this plus the timeout
    health_check_seconds: PositiveFloat = 5.0


class TracingSettings(_Strict):
    """OpenTelemetry traces over OTLP/HTTP (needs ``spillway[otel]``); off without endpoint."""

    otlp_endpoint: str = ""  # http://collector:4318 (or its /v1/traces URL)
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 1.0
    capture_content: bool = False  # record prompts and completions on the spans
    service_name: str = "spillway"
    headers: dict[str, str] = Field(default_factory=dict)
    export_interval_seconds: PositiveFloat = 5.0

    @model_validator(mode="after")
    def _endpoint(self) -> TracingSettings:
        if self.otlp_endpoint and not re.match(r"^https?://[^/\s]+", self.otlp_endpoint):
            raise ValueError(f"otlp_endpoint must be an http(s) URL, got {self.otlp_endpoint!r}")
        return self


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
