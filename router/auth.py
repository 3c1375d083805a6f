"""Bearer token -> :class:`Principal` (key id and team).

Keys are held only as SHA-256 digests. The lookup hashes the presented token
and looks the digest up in a dict, so no secret is ever compared byte by byte.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from router.config import Budget, Config, Limits
from router.errors import AuthenticationFailed


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    team: str
    limits: Limits  # the key's own limits where set, else its team's
    key_budgets: tuple[Budget, ...] = field(default=())


def _merge(team: Limits, key: Limits | None) -> Limits:
    if key is None:
        return team
    return Limits(
        requests_per_minute=key.requests_per_minute or team.requests_per_minute,
        tokens_per_minute=key.tokens_per_minute or team.tokens_per_minute,
        concurrent=key.concurrent or team.concurrent,
    )


class Authenticator:
    def __init__(self, cfg: Config) -> None:
        self._by_digest: dict[bytes, Principal] = {}
        for key in cfg.keys:
            team = cfg.teams[key.team]
            self._by_digest[bytes.fromhex(key.digest())] = Principal(
                key_id=key.id,
                team=key.team,
                limits=_merge(team.limits, key.limits),
                key_budgets=tuple(key.budgets),
            )

    def authenticate(self, authorization: str | None, api_key: str | None = None) -> Principal:
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
        principal = self._by_digest.get(hashlib.sha256(token.encode()).digest())
        if principal is None:
            raise AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
        return principal
