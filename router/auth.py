"""Bearer token -> :class:`Principal`: the one place a request asks who is calling.

Keys from the config are held only as SHA-256 digests: the lookup hashes the
presented token and looks the digest up in a dict, so no secret is ever
compared byte by byte, and a config key costs one hash and one lookup. A
token that is not a config key is looked up among the database keys (the same
digest, another dict), and only a token shaped like a JWT goes on to the JWT
verifier (signature checks). The sources are given by the runtime
(:mod:`router.identity` implements them), so this module imports none of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from router.config import Budget, Config, Limits
from router.errors import AuthenticationFailed

Source = Literal["config", "database", "jwt"]


@dataclass(frozen=True, slots=True, eq=False)
class Principal:
    """Who is calling. ``key_id`` names the caller's own counters and log lines: a key's
    id, or ``user:<id>`` for an SSO user. Built once per key (or verified token), so the
    quota planner can cache its checks by identity."""

    key_id: str
    team: str
    key_limits: Limits | None = None  # the caller's own limits; the team's apply as well
    key_budgets: tuple[Budget, ...] = ()
    models: tuple[str, ...] | None = None  # the caller's own model allowlist (None: team's)
    source: Source = "config"


class KeyLookup(Protocol):
    """Keys kept elsewhere (the database), by the SHA-256 digest of the secret."""

    def lookup(self, digest: bytes) -> Principal | None:
        """The key's principal; None when unknown. Raises AuthenticationFailed when the
        key is known but may not be used (expired)."""
        ...


class TokenVerifier(Protocol):
    """Signed tokens (JWTs) from the configured identity providers."""

    def verify(self, token: str, digest: bytes) -> Principal | Awaitable[Principal]:
        """The principal of a valid token (a cached verdict is returned directly); raises
        AuthenticationFailed (401) or PermissionDenied (403)."""
        ...


def presented_key(headers: Mapping[str, str]) -> str | None:
    """A key sent without ``Authorization``: Azure's ``api-key`` or Anthropic's
    ``x-api-key`` header."""
    return headers.get("api-key") or headers.get("x-api-key")


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts, the first a JSON object (``eyJ`` is ``{"``)."""
    return token.startswith("eyJ") and token.count(".") == 2


def config_principals(cfg: Config) -> dict[bytes, Principal]:
    out: dict[bytes, Principal] = {}
    for key in cfg.keys:
        out[bytes.fromhex(key.digest())] = Principal(
            key_id=key.id, team=key.team, key_limits=key.limits, key_budgets=tuple(key.budgets)
        )
    return out


class Authenticator:
    __slots__ = ("_by_digest", "_keys", "_tokens")

    def __init__(
        self, cfg: Config, keys: KeyLookup | None = None, tokens: TokenVerifier | None = None
    ) -> None:
        self._by_digest = config_principals(cfg)
        self._keys = keys
        self._tokens = tokens

    async def authenticate(
        self, authorization: str | None, api_key: str | None = None
    ) -> Principal:
        """Resolve ``Authorization: Bearer <token>`` (or an ``api-key`` header)."""
        token: str | None = None
        if authorization:
            scheme, _, rest = authorization.partition(" ")
            if scheme.lower() != "bearer" or not rest.strip():
                raise AuthenticationFailed(
                    "Authorization header must be 'Bearer <key>'.", code="invalid_api_key"
                )
            token = rest.strip()
        elif api_key:
            token = api_key.strip()
        if not token:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        try:
            raw = token.encode()
        except UnicodeEncodeError:  # bytes that are not UTF-8 (aiohttp keeps them escaped)
            raise AuthenticationFailed(
                "Incorrect API key provided.", code="invalid_api_key"
            ) from None
        digest = hashlib.sha256(raw).digest()
        principal = self._by_digest.get(digest)
        if principal is not None:
            return principal
        if self._keys is not None:
            principal = self._keys.lookup(digest)
            if principal is not None:
                return principal
        if self._tokens is not None and looks_like_jwt(token):
            verdict = self._tokens.verify(token, digest)
            if isinstance(verdict, Principal):
                return verdict
            return await verdict
        raise AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
