"""An identity provider's signing keys (JWKS): fetched, cached, refreshed.

A :class:`Jwks` is read at start, then every ``refresh_seconds``, and again when
a token names a ``kid`` it does not hold (a key rotation at the IdP) — at most
once per ``min_refresh_seconds``, one fetch shared by every waiting request, so
a flood of tokens with made-up kids cannot make the gateway hammer the IdP. A
failed fetch keeps the keys already held: the IdP being down stops no token
whose key is cached. Keys are parsed by PyJWT (``PyJWK``); nothing here does
cryptography.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson

from router.config import JwtIssuer

log = logging.getLogger("spillway.identity")

MAX_JWKS_BYTES = 1 << 20


class JwksUnavailable(Exception):
    """The key set could not be read (fetch failed, bad document)."""


def _parse(raw: bytes) -> dict[str, dict[str, Any]]:
    """kid -> JWK (signing keys only); a key without kid is listed under ''."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise JwksUnavailable(f"not JSON: {exc}") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise JwksUnavailable("no 'keys' list")
    out: dict[str, dict[str, Any]] = {}
    for entry in keys:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid", "")
        if not isinstance(kid, str):
            continue
        try:
            jwt.PyJWK(entry)  # a key PyJWT can use (known kty, curve, parameters)
        except jwt.PyJWTError as exc:
            log.warning("JWKS key %r skipped: %s", kid, exc)
            continue
        out[kid] = entry
    return out


class Jwks:
    """The key set of one ``jwks_url`` or ``jwks_file``."""

    def __init__(self, source: JwtIssuer) -> None:
        self.url = source.jwks_url
        self.file = source.jwks_file
        self.name = self.url or str(self.file)
        self.refresh_seconds = source.refresh_seconds
        self.min_refresh_seconds = source.min_refresh_seconds
        self.timeout = source.fetch_timeout_seconds
        self.keys: dict[str, dict[str, Any]] = {}
        self.version = 0  # bumped whenever the set of keys changes
        self.loaded = False
        self.fetches = 0
        self.last_attempt = -1e18  # monotonic
        self.last_success = 0.0  # epoch seconds
        self.last_error = ""
        self._lock = asyncio.Lock()

    def configure(self, source: JwtIssuer) -> None:
        """Intervals from the current config (a reload may change them)."""
        self.refresh_seconds = source.refresh_seconds
        self.min_refresh_seconds = source.min_refresh_seconds
        self.timeout = source.fetch_timeout_seconds

    async def _read(self, session: aiohttp.ClientSession) -> bytes:
        if self.file is not None:
            try:
                return await asyncio.to_thread(Path(self.file).read_bytes)
            except OSError as exc:
                raise JwksUnavailable(f"cannot read {self.file}: {exc.strerror}") from None
        assert self.url is not None
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            async with session.get(self.url, timeout=timeout, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise JwksUnavailable(f"HTTP {resp.status}")
                body = await resp.content.read(MAX_JWKS_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JwksUnavailable(f"{type(exc).__name__}: {exc}") from None
        if len(body) > MAX_JWKS_BYTES:
            raise JwksUnavailable(f"larger than {MAX_JWKS_BYTES} bytes")
        return body

    async def refresh(self, session: aiohttp.ClientSession) -> bool:
        """Read the set now; False (keys kept) when it failed."""
        async with self._lock:
            return await self._refresh(session)

    async def _refresh(self, session: aiohttp.ClientSession) -> bool:
        self.last_attempt = time.monotonic()
        self.fetches += 1
        try:
            keys = _parse(await self._read(session))
        except JwksUnavailable as exc:
            self.last_error = str(exc)
            log.warning(
                "JWKS %s could not be read (%s); %d cached keys stay in use",
                self.name, exc, len(self.keys),
            )  # fmt: skip
            return False
        if keys != self.keys:
            self.keys = keys
            self.version += 1
            log.info("JWKS %s loaded: kids %s", self.name, sorted(keys))
        self.loaded = True
        self.last_error = ""
        self.last_success = time.time()
        return True

    async def refresh_for_unknown(self, session: aiohttp.ClientSession) -> None:
        """Re-read on an unknown kid, unless the last attempt was too recent. Requests
        arriving during a fetch wait for that one fetch."""
        seen = self.last_attempt
        async with self._lock:
            if self.last_attempt != seen:
                return  # another request fetched while this one waited
            if time.monotonic() - self.last_attempt < self.min_refresh_seconds:
                return
            await self._refresh(session)

    def due_in(self, now: float) -> float:
        """Seconds until the next scheduled read (sooner while nothing is loaded)."""
        interval = self.refresh_seconds
        if not self.loaded:
            interval = min(interval, max(self.min_refresh_seconds, 1.0))
        return self.last_attempt + interval - now
