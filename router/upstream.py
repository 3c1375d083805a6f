"""The only owner of the outbound ``aiohttp.ClientSession``.

One session per process with keep-alive pools. Upstream calls never follow
redirects (a redirect must not carry credentials anywhere), never ask for a
compressed body (usage is read on the bytes) and are bounded by the backend's
timeouts: connect, time to first byte (response headers), idle between reads
and total.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

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

    @classmethod
    def from_config(cls, t: Timeouts) -> Limits:
        return cls(
            aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.idle),
            t.first_byte,
        )


class _Deadline:
    """Cancel the current task after ``seconds`` (a lighter ``asyncio.timeout``).

    The timer can only fire while the task waits, so once the awaited call has
    returned, ``cancel()`` runs before it could.
    """

    __slots__ = ("_fired", "_handle", "_task")

    def __init__(self, seconds: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._fired = False
        self._handle = asyncio.get_running_loop().call_later(seconds, self._fire)

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """True when the deadline caused the cancellation (which is then undone)."""
        if self._fired:
            self._task.uncancel()
            return True
        return False

    def cancel(self) -> None:
        self._handle.cancel()


class HTTPOpened:
    """A 2xx upstream response, to be read whole or relayed as it arrives."""

    __slots__ = ("_resp",)

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    @property
    def is_stream(self) -> bool:
        return self._resp.content_type == "text/event-stream"

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except TimeoutError:
            raise UpstreamTimeout("The upstream stopped sending its answer (timeout).") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"The upstream connection failed: {type(exc).__name__}.") from None

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            while True:
                data = await content.readany()
                if not data:
                    return
                yield data
        except TimeoutError:
            raise UpstreamTimeout("The upstream went idle mid-stream (timeout).") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"The upstream stream broke: {type(exc).__name__}.") from None

    def close(self) -> None:
        # close(), not release(): an unfinished body must not go back to the pool
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()


class Upstream:
    """Sends requests to backends. Create inside the running event loop."""

    def __init__(self, *, limit_per_host: int = 0) -> None:
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
        await self.session.close()

    async def post(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        limits: Limits,
        *,
        backend: str,
        params: Mapping[str, str] | None = None,
        on_error: StatusMapper = status_error,
    ) -> HTTPOpened:
        """POST and wait for a 2xx status line; raise an UpstreamError otherwise
        (``on_error`` reads the error body of a 4xx/5xx answer)."""
        deadline = _Deadline(limits.first_byte)
        try:
            resp = await self.session.post(
                url,
                data=body,
                headers=headers,
                params=params,
                allow_redirects=False,
                timeout=limits.client_timeout,
            )
        except asyncio.CancelledError:
            if deadline.expired():
                raise UpstreamTimeout(f"Backend {backend!r} did not answer in time.") from None
            raise
        except TimeoutError:
            raise UpstreamTimeout(f"Backend {backend!r} did not answer in time.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"Backend {backend!r} is unreachable ({type(exc).__name__})."
            ) from None
        finally:
            deadline.cancel()
        if resp.status < 300:
            return HTTPOpened(resp)
        try:
            text = await resp.read()
        except (aiohttp.ClientError, TimeoutError):
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
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
