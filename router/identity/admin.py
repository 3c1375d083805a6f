"""The key admin API, on its own listener (``admin: {listen, tokens, jwt}``).

    POST   /admin/v1/keys               create (the secret is in this answer only)
    GET    /admin/v1/keys               list (?team=T, ?include_revoked=true); no secrets
    GET    /admin/v1/keys/{id}          one key
    PATCH  /admin/v1/keys/{id}          change team, models, limits, budgets, expiry, text
    DELETE /admin/v1/keys/{id}          revoke (the row stays, for the record)
    POST   /admin/v1/keys/{id}/rotate   a new secret; the old one works ``grace_seconds``

Callers present an admin token (its sha256 is in ``admin.tokens``) or an SSO
token whose ``admin.jwt.claim`` holds one of ``admin.jwt.values``. Secrets are
stored as sha256 only. Every call, refused ones included, leaves one JSON
audit line on the ``spillway.audit`` logger: who, what, which key id, the
status; never a secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.auth import looks_like_jwt
from router.config import AdminSettings, Budget, Config, Limits
from router.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    SpillwayError,
)
from router.identity.keystore import COLUMNS, DB_ERRORS, KeyCache, StoredKey, parse_rows
from router.identity.sso import JwtVerifier, claim, claim_values, user_principal_id

audit_log = logging.getLogger("spillway.audit")
log = logging.getLogger("spillway.identity")

KEY_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SECRET_PREFIX = "sk-sw-"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AUDIT = web.RequestKey("audit", dict[str, Any])  # the call's audit line, filled as it goes


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyCreate(_Body):
    id: Annotated[str, Field(pattern=KEY_ID)] | None = None
    team: str
    models: list[str] | None = None
    limits: Limits | None = None
    budgets: list[Budget] = Field(default_factory=list)
    expires_at: datetime | None = None
    description: Annotated[str, Field(max_length=500)] | None = None


class KeyUpdate(_Body):
    team: str | None = None
    models: list[str] | None = None
    limits: Limits | None = None
    budgets: list[Budget] | None = None
    expires_at: datetime | None = None
    description: Annotated[str, Field(max_length=500)] | None = None


class Rotate(_Body):
    grace_seconds: Annotated[int, Field(ge=0)] = 0


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)  # a time without zone is read as UTC


def _unreachable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The key database is unreachable; nothing was changed.", code="database_unreachable"
    )


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


def _check_references(cfg: Config, team: str | None, models: list[str] | None,
                      budgets: list[Budget] | None) -> None:  # fmt: skip
    """The team, models and pools a key names exist in the config."""
    if team is not None and team not in cfg.teams:
        raise InvalidRequest(f"Unknown team {team!r}.", param="team", code="unknown_team")
    known = set(cfg.models) | {a for m in cfg.models.values() for a in m.aliases}
    for model in models or []:
        if not any(c in model for c in "*?[") and model not in known:
            raise InvalidRequest(f"Unknown model {model!r}.", param="models")
    for budget in budgets or []:
        for pool in budget.pools or []:
            if pool not in cfg.pools:
                raise InvalidRequest(f"Unknown pool {pool!r}.", param="budgets")


class AdminApi:
    """The handlers; ``config`` and ``verifier`` give the current runtime's view."""

    def __init__(
        self,
        settings: AdminSettings,
        pool: Callable[[], Awaitable[asyncpg.Pool]],
        cache: KeyCache,
        reachable: Callable[[], bool],
        config: Callable[[], Config],
        verifier: Callable[[], JwtVerifier | None],
        timeout: float = 5.0,
    ) -> None:
        self.settings = settings
        self._tokens = {t.lower() for t in settings.tokens}
        self._pool = pool
        self._cache = cache
        self._reachable = reachable
        self._timeout = timeout
        self._config = config
        self._verifier = verifier

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._audited], client_max_size=64 * 1024)
        app.router.add_post("/admin/v1/keys", self.create)
        app.router.add_get("/admin/v1/keys", self.list)
        app.router.add_get("/admin/v1/keys/{id}", self.get)
        app.router.add_patch("/admin/v1/keys/{id}", self.update)
        app.router.add_delete("/admin/v1/keys/{id}", self.revoke)
        app.router.add_post("/admin/v1/keys/{id}/rotate", self.rotate)
        return app

    # ------------------------------------------------------------------ plumbing

    @web.middleware
    async def _audited(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate the caller; one audit line per call; errors as the envelope."""
        entry: dict[str, Any] = {
            "actor": None, "action": _action(request), "key_id": request.match_info.get("id"),
            "remote": request.remote,
        }  # fmt: skip
        request[AUDIT] = entry
        try:
            entry["actor"] = await self._actor(request)
            response = await handler(request)
            entry["status"] = response.status
            return response
        except SpillwayError as exc:
            entry["status"] = exc.status
            entry["error"] = exc.code
            return web.Response(body=exc.body(), status=exc.status, headers=exc.headers,
                                content_type="application/json")  # fmt: skip
        except web.HTTPException as exc:
            entry["status"] = exc.status
            if exc.status < 400:
                raise
            err = SpillwayError(exc.reason, type="invalid_request_error", code="not_found"
                                if exc.status == 404 else None)  # fmt: skip
            return web.Response(body=err.body(), status=exc.status,
                                content_type="application/json")  # fmt: skip
        except DB_ERRORS as exc:
            entry["status"] = 503
            entry["error"] = "database_unreachable"
            log.warning("admin API: key database unreachable (%r)", exc)
            err = _unreachable()
            return web.Response(body=err.body(), status=503, content_type="application/json")
        finally:
            entry.setdefault("status", 500)
            audit_log.info("admin", extra={"fields": {k: v for k, v in entry.items()
                                                      if v is not None}})  # fmt: skip

    async def _actor(self, request: web.Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed(
                "The admin API needs 'Authorization: Bearer <admin token>'.", code="missing_token"
            )
        try:
            digest = hashlib.sha256(token.encode()).hexdigest()
        except UnicodeEncodeError:  # bytes that are not UTF-8: no token is
            raise AuthenticationFailed("Incorrect admin token.", code="invalid_token") from None
        if digest in self._tokens:
            return "admin-token:" + digest[:12]
        rule = self.settings.jwt
        verifier = self._verifier()
        if rule is not None and verifier is not None and looks_like_jwt(token):
            issuer, payload, _ = await verifier.claims(token)
            user = claim(payload, issuer.user_claim)
            actor = user_principal_id(user) if isinstance(user, str) and user else "user:?"
            if not set(claim_values(payload, rule.claim)) & set(rule.values):
                raise PermissionDenied(
                    f"The token's {rule.claim!r} claim does not grant the admin role.",
                    code="not_admin",
                )
            return actor
        raise AuthenticationFailed("Incorrect admin token.", code="invalid_token")

    async def _body(self, request: web.Request, model: type[_Body]) -> Any:
        raw = await request.read()
        try:
            return model.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or None
            message = first["msg"]
            if first["type"] == "extra_forbidden":
                message = "unknown field"
            raise InvalidRequest(f"Invalid request: {where}: {message}", param=where) from None

    def _stored(self, key: StoredKey) -> StoredKey:
        """Make the change visible on this replica at once (others learn it by NOTIFY)."""
        self._cache.put(key)
        return key

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A pooled connection, while this replica's follower finds the database
        reachable (else 503 at once, rather than each call waiting out a timeout on a
        database known to be down). Getting it, each query on it and giving it back are
        each bounded by ``database.connect_timeout_seconds``."""
        if not self._reachable():
            raise _unreachable()
        pool = await self._pool()
        async with pool.acquire(timeout=self._timeout) as conn:
            yield conn

    async def _one(self, sql: str, *args: Any) -> StoredKey | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(sql, *args)
        if row is None:
            return None
        keys = parse_rows([row])
        return keys[0] if keys else None

    async def _existing(self, key_id: str) -> StoredKey:
        key = await self._one(f"SELECT {COLUMNS} FROM keys WHERE id = $1", key_id)
        if key is None:
            raise NotFound(f"No key {key_id!r}.", code="key_not_found")
        return key

    # ------------------------------------------------------------------ handlers

    async def create(self, request: web.Request) -> web.Response:
        body: KeyCreate = await self._body(request, KeyCreate)
        cfg = self._config()
        _check_references(cfg, body.team, body.models, body.budgets)
        key_id = body.id or f"key-{secrets.token_hex(6)}"
        if any(k.id == key_id for k in cfg.keys):
            raise Conflict(f"Key id {key_id!r} is a key of the config file.", param="id")
        audit = request[AUDIT]
        audit.update(key_id=key_id, team=body.team)
        secret = new_secret()
        try:
            key = await self._one(
                f"INSERT INTO keys (id, team, sha256, models, limits, budgets, description, "
                f"expires_at, created_by) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6::jsonb, "
                f"$7, $8, $9) RETURNING {COLUMNS}",
                key_id, body.team, hashlib.sha256(secret.encode()).digest(), _dumps(body.models),
                _dumps(body.limits.model_dump(exclude_none=True) if body.limits else None),
                _dumps([b.model_dump(exclude_none=True) for b in body.budgets]),
                body.description, _utc(body.expires_at), audit["actor"],
            )  # fmt: skip
        except asyncpg.UniqueViolationError:
            raise Conflict(
                f"A key with id {key_id!r} exists (ids of revoked keys are not reused).",
                param="id",
            ) from None
        assert key is not None
        return _json({**self._stored(key).public(), "secret": secret}, status=201)

    async def list(self, request: web.Request) -> web.Response:
        team = request.query.get("team")
        revoked = request.query.get("include_revoked", "").lower() in ("1", "true", "yes")
        where = ["($1::text IS NULL OR team = $1)"]
        if not revoked:
            where.append("revoked_at IS NULL")
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {COLUMNS} FROM keys WHERE {' AND '.join(where)} ORDER BY id", team
            )
        return _json({"object": "list", "data": [k.public() for k in parse_rows(rows)]})

    async def get(self, request: web.Request) -> web.Response:
        key = await self._existing(request.match_info["id"])
        request[AUDIT]["team"] = key.team
        return _json(key.public())

    async def update(self, request: web.Request) -> web.Response:
        key_id = request.match_info["id"]
        body: KeyUpdate = await self._body(request, KeyUpdate)
        given = body.model_fields_set
        if not given:
            raise InvalidRequest("Nothing to change: send the fields to set.")
        if "team" in given and body.team is None:
            raise InvalidRequest("A key needs a team.", param="team")
        _check_references(self._config(), body.team, body.models, body.budgets)
        sets: list[str] = []
        args: list[Any] = [key_id]
        values: dict[str, Any] = {
            "team": body.team, "models": _dumps(body.models),
            "limits": _dumps(body.limits.model_dump(exclude_none=True) if body.limits else None),
            "budgets": _dumps([b.model_dump(exclude_none=True) for b in body.budgets or []]),
            "expires_at": _utc(body.expires_at), "description": body.description,
        }  # fmt: skip
        casts = {"models": "::jsonb", "limits": "::jsonb", "budgets": "::jsonb"}
        for name in sorted(given):
            args.append(values[name])
            sets.append(f"{name} = ${len(args)}{casts.get(name, '')}")
        request[AUDIT]["fields"] = sorted(given)
        key = await self._one(
            f"UPDATE keys SET {', '.join(sets)}, updated_at = now() "
            f"WHERE id = $1 AND revoked_at IS NULL RETURNING {COLUMNS}",
            *args,
        )
        if key is None:
            existing = await self._existing(key_id)
            raise Conflict(f"Key {existing.id!r} is revoked.", code="key_revoked")
        request[AUDIT]["team"] = key.team
        return _json(self._stored(key).public())

    async def revoke(self, request: web.Request) -> web.Response:
        key_id = request.match_info["id"]
        key = await self._one(
            f"UPDATE keys SET revoked_at = now(), updated_at = now(), previous_sha256 = NULL, "
            f"previous_valid_until = NULL WHERE id = $1 AND revoked_at IS NULL "
            f"RETURNING {COLUMNS}",
            key_id,
        )
        if key is None:
            key = await self._existing(key_id)  # 404, or revoked before: the same answer
        request[AUDIT]["team"] = key.team
        return _json(self._stored(key).public())

    async def rotate(self, request: web.Request) -> web.Response:
        key_id = request.match_info["id"]
        body: Rotate = await self._body(request, Rotate)
        if body.grace_seconds > self.settings.max_grace_seconds:
            raise InvalidRequest(
                f"grace_seconds is at most {self.settings.max_grace_seconds}.",
                param="grace_seconds",
            )
        secret = new_secret()
        request[AUDIT]["grace_seconds"] = body.grace_seconds
        key = await self._one(
            f"UPDATE keys SET "
            f"previous_sha256 = CASE WHEN $3::float8 > 0 THEN sha256 END, "
            f"previous_valid_until = CASE WHEN $3::float8 > 0 "
            f"THEN now() + make_interval(secs => $3::float8) END, "
            f"sha256 = $2, updated_at = now() "
            f"WHERE id = $1 AND revoked_at IS NULL RETURNING {COLUMNS}",
            key_id, hashlib.sha256(secret.encode()).digest(), float(body.grace_seconds),
        )  # fmt: skip
        if key is None:
            existing = await self._existing(key_id)
            raise Conflict(f"Key {existing.id!r} is revoked.", code="key_revoked")
        request[AUDIT]["team"] = key.team
        return _json({**self._stored(key).public(), "secret": secret})


_ACTIONS = {"POST": "create", "GET": "list", "PATCH": "update", "DELETE": "revoke"}


def _action(request: web.Request) -> str:
    if request.path.endswith("/rotate"):
        return "key.rotate"
    if request.method == "GET" and "id" in request.match_info:
        return "key.get"
    return "key." + _ACTIONS.get(request.method, request.method.lower())
