"""An identity provider for tests: a real HTTP server serving a JWKS of keys made in
the test (RSA and EC, by ``cryptography``), and tokens minted by PyJWT."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.fakes import FakeServer

ISSUER = "https://idp.example.test/realms/org"
AUDIENCE = "spillway"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        doc: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**doc, "kid": self.kid, "alg": self.alg, "use": "sig"}


def rsa_key(kid: str | None = None, alg: str = "RS256") -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(kid or f"rsa-{uuid.uuid4().hex[:8]}", alg, private)


def ec_key(kid: str | None = None) -> SigningKey:
    return SigningKey(
        kid or f"ec-{uuid.uuid4().hex[:8]}", "ES256", ec.generate_private_key(ec.SECP256R1())
    )


def mint(key: SigningKey, *, kid: str | None = None, **claims: Any) -> str:
    """A signed token; ``claims`` override the defaults (None removes a claim)."""
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "nbf": now - 1,
        "exp": now + 300, "groups": ["engineering"],
    }  # fmt: skip
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key.private, algorithm=key.alg, headers={"kid": kid or key.kid})


class FakeIdP(FakeServer):
    """``GET /jwks.json`` answers the current keys; ``down`` answers 503; counts fetches."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.down = False
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        super().__init__(app)

    @property
    def jwks_url(self) -> str:
        return self.base + "/jwks.json"

    def document(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys]}

    async def _jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.down:
            return web.Response(status=503, text="maintenance")
        return web.json_response(self.document())
