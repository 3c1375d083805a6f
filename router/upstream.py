"""The only owner of outbound connections.

Chat calls go through :mod:`router.http1` (keep-alive pools per host, one
packed request head per backend); health probes and ``/metrics`` scrapes use
one ``aiohttp.ClientSession``. Upstream calls never follow
redirects (a redirect must not carry credentials anywhere), never ask for a
compressed body (usage is read on the bytes) and are bounded by the backend's
timeouts: connect, time to first byte (response headers), idle between reads
and total.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from router import http1
from router.config import Timeouts
from router.errors import UpstreamError, UpstreamStatus, UpstreamTimeout, status_error


class StatusMapper(Protocol):
    """Turns an upstream's error status and body into an :class:`UpstreamStatus`
    (:func:`router.errors.status_error` for OpenAI-compatible servers)."""

    def __call__(
        self, status: int, body: bytes, *, retry_after: float | None = ..., backend: str = ...
    ) -> UpstreamStatus: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """Timeouts of one backend, pre-built once."""

    client_timeout: aiohttp.ClientTimeout
    first_byte: float
    lean: http1.Timeouts

    @classmethod
    def from_config(cls, t: Timeouts) -> Limits:
        return cls(
            aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.idle),
            t.first_byte,
            http1.Timeouts(t.connect, t.first_byte, t.idle, t.total),
        )


class Upstream:
    """Sends requests to backends. Create inside the running event loop."""

    def __init__(self, *, limit_per_host: int = 0) -> None:
        self._pools: dict[tuple[str, str, int], http1.Pool] = {}
        self._targets: dict[tuple[str, int], tuple[Mapping[str, str], Limits, http1.Target]] = {}
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0,
                limit_per_host=limit_per_host,
                keepalive_timeout=30,
                enable_cleanup_closed=True,
            ),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            trust_env=False,
        )

    async def close(self) -> None:
        http1.close_pools(self._pools)
        await self.session.close()

    async def post(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        limits: Limits,
        *,
        backend: str,
        extra: Mapping[str, str] | None = None,
        on_error: StatusMapper = status_error,
    ) -> http1.Response:
        """POST and wait for a 2xx status line; raise an UpstreamError otherwise
        (``on_error`` reads the error body of a 4xx/5xx answer). ``headers`` are the
        backend's constant ones (packed once); ``extra`` are this request's own."""
        target = self._target(url, headers, limits)
        try:
            resp = await target.post(body, extra or {})
        except http1.ConnectFailed as exc:
            raise UpstreamError(f"Backend {backend!r} is unreachable: {exc.message}") from None
        except UpstreamTimeout:
            raise UpstreamTimeout(f"Backend {backend!r} did not answer in time.") from None
        except UpstreamError as exc:
            raise UpstreamError(f"Backend {backend!r}: {exc.message}") from None
        if resp.status < 300:
            return resp
        try:
            text = await resp.read()
        except UpstreamError:
            text = b""
        finally:
            resp.close()
        text = redact(text, headers)
        if 300 <= resp.status < 400:
            raise UpstreamError(
                f"Backend {backend!r} answered a redirect (HTTP {resp.status}); "
                "redirects are not followed."
            )
        retry_after = _retry_after(resp.headers)
        raise on_error(resp.status, text, retry_after=retry_after, backend=f"backend {backend!r}")

    def _target(self, url: str, headers: Mapping[str, str], limits: Limits) -> http1.Target:
        key = (url, id(headers))
        hit = self._targets.get(key)
        if hit is not None and hit[0] is headers and hit[1] is limits:
            return hit[2]
        if len(self._targets) > 4096:  # configs come and go with reloads
            self._targets.clear()
        target = http1.Target(url, headers, limits.lean, self._pools)
        self._targets[key] = (headers, limits, target)
        return target

    async def get(
        self, url: str, headers: Mapping[str, str], seconds: float, *, max_bytes: int = 4 << 20
    ) -> tuple[int, bytes]:
        """A small GET (health probes, ``/metrics`` scrapes): (status, body).

        Raises :class:`UpstreamError` when nothing usable came back in time."""
        try:
            async with (
                asyncio.timeout(seconds),
                self.session.get(url, headers=headers, allow_redirects=False) as resp,
            ):
                parts: list[bytes] = []
                size = 0
                while size < max_bytes:
                    data = await resp.content.read(65536)
                    if not data:
                        break
                    parts.append(data)
                    size += len(data)
                return resp.status, b"".join(parts)
        except TimeoutError:
            raise UpstreamTimeout(f"{url} did not answer in time.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{url} is unreachable ({type(exc).__name__}).") from None


CREDENTIAL_HEADERS = frozenset(("authorization", "api-key", "x-api-key"))


def redact(body: bytes, headers: Mapping[str, str]) -> bytes:
    """``body`` with the credentials sent in ``headers`` masked: some servers quote
    the key they refused, and their error message is passed on to the client."""
    for name, value in headers.items():
        if name.lower() in CREDENTIAL_HEADERS:
            secret = value.rsplit(" ", 1)[-1].encode()
            if len(secret) >= 8 and secret in body:
                body = body.replace(secret, b"***")
    return body


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
