"""Where the gateway connects: listeners, Redis (standalone, TLS, Sentinel), per-backend
TLS, timeouts and the backends themselves (part of :mod:`router.config`)."""

from __future__ import annotations

import os
import re
import ssl
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, model_validator
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.asyncio.connection import parse_url as redis_parse_url

from router.config_base import ANTHROPIC_SAMPLING, PositiveFloat, PositiveInt, _Strict
from router.serving import VLLM_PARAMS


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
