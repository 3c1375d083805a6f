"""SSO tokens: a JWT from a configured issuer -> :class:`Principal` (``user:<id>``).

PyJWT checks the signature against the issuer's JWKS and the ``iss``, ``aud``,
``exp`` and ``nbf`` claims (with ``leeway_seconds``); only the algorithms the
issuer lists are accepted (never ``none`` or an HMAC one). Every failure is a
401 whose message says what was wrong with the token, never the token itself;
a valid token whose ``team_claim`` maps to no configured team is a 403.

A verified token is remembered by its digest until it expires (or until the
issuer's key set changes), so a client sending the same token again costs a
dict lookup, like an API key.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt

from router.auth import Principal
from router.config import USER_PREFIX, Config, JwtIssuer
from router.errors import AuthenticationFailed, PermissionDenied
from router.identity.jwks import Jwks

_PLAIN_USER = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")
CODE = "invalid_token"


def user_principal_id(user: str) -> str:
    """``user:<id>``; an id that is long or has other characters is hashed (counter keys
    and log fields stay short and plain)."""
    if _PLAIN_USER.match(user):
        return USER_PREFIX + user
    return USER_PREFIX + "~" + hashlib.sha256(user.encode()).hexdigest()[:32]


def claim(payload: dict[str, Any], path: str) -> Any:
    """A claim by name, or by a dotted path into nested objects (``realm_access.roles``)."""
    if path in payload:
        return payload[path]
    node: Any = payload
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def claim_values(payload: dict[str, Any], path: str) -> list[str]:
    value = claim(payload, path)
    if isinstance(value, str):
        return value.split() if " " in value else [value]  # OAuth `scope` is space-separated
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _failed(message: str) -> AuthenticationFailed:
    return AuthenticationFailed(message, code=CODE)


@dataclass(slots=True)
class _Verified:
    principal: Principal
    until: float  # epoch seconds: exp plus leeway
    not_before: float
    issuer: str
    version: int  # of the issuer's key set


Refresher = Callable[[Jwks], Awaitable[None]]


class JwtVerifier:
    """Verifies tokens of the issuers of one config (built with each runtime)."""

    def __init__(self, cfg: Config, sets: dict[str, Jwks], refresh: Refresher) -> None:
        self._issuers = {i.issuer: i for i in cfg.auth.jwt}
        self._sets = {i.issuer: sets[i.jwks_url or str(i.jwks_file)] for i in cfg.auth.jwt}
        self._refresh = refresh
        self._user_limits = cfg.auth.user_limits
        self._cache: dict[bytes, _Verified] = {}
        self._cache_size = cfg.auth.token_cache_size
        self._principals: dict[tuple[str, str], Principal] = {}
        self._jwk_cache: dict[tuple[str, int, str, str], jwt.PyJWK] = {}

    def verify(self, token: str, digest: bytes) -> Principal | Awaitable[Principal]:
        hit = self._cache.get(digest)
        if hit is not None:
            now = time.time()
            if (
                hit.not_before <= now < hit.until
                and self._sets[hit.issuer].version == hit.version
            ):  # fmt: skip
                return hit.principal
            del self._cache[digest]
        return self._verify(token, digest)

    async def _verify(self, token: str, digest: bytes) -> Principal:
        issuer, payload, version = await self.claims(token)
        team = self._team(issuer, payload)
        user = claim(payload, issuer.user_claim)
        if not isinstance(user, str) or not user:
            raise _failed(f"The token has no {issuer.user_claim!r} claim naming the user.")
        principal = self._principal(user, team)
        now = time.time()
        exp = payload.get("exp")
        nbf = payload.get("nbf")
        until = float(exp) + issuer.leeway_seconds if isinstance(exp, int | float) else now
        not_before = float(nbf) - issuer.leeway_seconds if isinstance(nbf, int | float) else 0.0
        if self._cache_size:
            if len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]  # the oldest
            self._cache[digest] = _Verified(principal, until, not_before, issuer.issuer, version)
        return principal

    def _team(self, issuer: JwtIssuer, payload: dict[str, Any]) -> str:
        for value in claim_values(payload, issuer.team_claim):
            team = issuer.teams.get(value)
            if team is not None:
                return team
        raise PermissionDenied(
            f"The token is valid, but its {issuer.team_claim!r} claim maps to no team "
            "of this gateway.",
            code="no_team",
        )

    def _principal(self, user: str, team: str) -> Principal:
        """One object per (user, team), so quota plans are cached across tokens."""
        key = (user, team)
        got = self._principals.get(key)
        if got is None:
            if len(self._principals) >= max(self._cache_size, 1024):
                self._principals.clear()
            got = self._principals[key] = Principal(
                key_id=user_principal_id(user), team=team, key_limits=self._user_limits,
                source="jwt",
            )  # fmt: skip
        return got

    async def claims(self, token: str) -> tuple[JwtIssuer, dict[str, Any], int]:
        """Verify ``token``: (its issuer, its claims, the key set version used)."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _failed("The token is not a well-formed JWT.") from None
        iss = unverified.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise _failed("The token's issuer (iss) is not one this gateway accepts.")
        alg = header.get("alg")
        if alg not in issuer.algorithms:
            raise _failed(f"The token's algorithm is not accepted for issuer {issuer.issuer}.")
        jwks = self._sets[issuer.issuer]
        key = await self._key(jwks, header, alg)
        try:
            payload = jwt.decode(
                token, key, algorithms=[alg], audience=issuer.audience, issuer=issuer.issuer,
                leeway=issuer.leeway_seconds, options={"require": ["exp", "iss", "aud"]},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise _failed("The token has expired (exp).") from None
        except jwt.ImmatureSignatureError:
            raise _failed("The token is not valid yet (nbf).") from None
        except jwt.InvalidAudienceError:
            raise _failed("The token's audience (aud) is not this gateway.") from None
        except jwt.InvalidIssuerError:
            raise _failed("The token's issuer (iss) is not one this gateway accepts.") from None
        except jwt.InvalidIssuedAtError:
            raise _failed("The token's issue time (iat) is not valid.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _failed(f"The token has no {exc.claim!r} claim.") from None
        except jwt.InvalidSignatureError:
            raise _failed("The token's signature does not verify.") from None
        except jwt.PyJWTError:
            raise _failed("The token could not be verified.") from None
        return issuer, payload, jwks.version

    async def _key(self, jwks: Jwks, header: dict[str, Any], alg: str) -> jwt.PyJWK:
        kid = header.get("kid", "")
        if not isinstance(kid, str):
            raise _failed("The token's key id (kid) is not a string.")
        entry = jwks.keys.get(kid)
        if entry is None:
            await self._refresh(jwks)  # a rotation at the IdP, or garbage (rate-limited)
            entry = jwks.keys.get(kid)
        if entry is None:
            if not jwks.loaded:
                raise _failed("The identity provider's signing keys are unavailable; retry.")
            raise _failed("The token's signing key (kid) is unknown to its issuer.")
        if entry.get("alg", alg) != alg:
            raise _failed("The token's algorithm does not match its signing key.")
        cache_key = (jwks.name, jwks.version, kid, alg)
        key = self._jwk_cache.get(cache_key)
        if key is None:
            try:
                key = jwt.PyJWK(entry, algorithm=alg)
            except jwt.PyJWTError:
                raise _failed("The token's algorithm does not match its signing key.") from None
            if len(self._jwk_cache) > 256:
                self._jwk_cache.clear()
            self._jwk_cache[cache_key] = key
        return key
