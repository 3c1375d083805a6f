"""Who may call: JWT issuers, the admin listener, the key database and tracing (part of
:mod:`router.config`)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from router.config_base import Limits, PositiveFloat, _Strict
from router.config_connect import Listen

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
