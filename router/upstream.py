"""The only owner of outbound HTTP: one ``aiohttp.ClientSession`` per process.

Every provider call, health probe and ``/metrics`` scrape goes through it, with
keep-alive pools (one per host, TLS context and proxy), response heads bounded
in line size and header count, no redirect followed (a redirect must not carry
credentials anywhere) and no request ever sent twice by the library: aiohttp
re-sends only idempotent methods on a kept-alive connection that dropped, never
a POST, so whether a failed call is tried again is the route's decision alone.

Timeouts per backend (:class:`router.egress.Egress`): connect (TCP, proxy
tunnel and TLS handshake, by aiohttp); then one timer per call (:class:`_Watch`)
for the time to the response head (``first_byte``), the time between reads of
the body while the gateway waits for it (``idle``), and the whole call
(``total``).

Bodies: ``Accept-Encoding: identity`` is asked for; a gzip or deflate answer
sent anyway is decoded by aiohttp; any other content coding is refused (a 502),
so raw compressed bytes never reach a client labelled as JSON. Non-streamed
answers are bounded in size.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Protocol

import aiohttp
from yarl import URL

from router.egress import Egress
from router.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamMisconfigured,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamTLSError,
    status_error,
)

MAX_HEADER_LINE = 8190  # bytes in the status line or one header line
MAX_HEADERS = 128  # header lines in a response head
MAX_ANSWER_BYTES = 64 << 20  # a non-streamed answer (decoded)
MAX_ERROR_BYTES = 64 << 10  # what is read of an error answer
DECODED = frozenset(("", "identity", "gzip", "deflate"))  # what arrives decoded
AUTH_STATUSES = frozenset((401, 402, 403))
CREDENTIAL_HEADERS = frozenset(("authorization", "api-key", "x-api-key"))


class StatusMapper(Protocol):
    """Turns an upstream's error status and body into an :class:`UpstreamStatus`
    (:func:`router.errors.status_error` for OpenAI-compatible servers)."""

    def __call__(
        self, status: int, body: bytes, *, retry_after: float | None = ..., backend: str = ...
    ) -> UpstreamStatus: ...


class _Watch:
    """One timer per upstream call: to the response head, then idle between reads
    of the body, and the total. Re-armed only when it fires early, so a read costs
    a clock reading, not a timer."""

    __slots__ = (
        "_content", "_handle", "_head_due", "_loop", "_task", "_total_due", "backend", "fired",
        "idle", "since",
    )  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop, egress: Egress) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._loop = loop
        self._task = task
        self.backend = egress.backend
        self.idle = egress.idle
        now = loop.time()
        self._head_due = now + egress.first_byte
        self._total_due = now + egress.total
        self._content: aiohttp.StreamReader | None = None
        self.since: float | None = None  # waiting for the body since (None: not waiting)
        self.fired: UpstreamTimeout | None = None
        self._handle: asyncio.TimerHandle | None = loop.call_at(
            min(self._head_due, self._total_due), self._head_timeout
        )

    def _head_timeout(self) -> None:
        self._handle = None
        self.fired = UpstreamTimeout(f"Backend {self.backend!r} did not answer in time.")
        self._task.cancel()

    def expired(self) -> UpstreamTimeout | None:
        """The timeout that cancelled the call, if it was this watch (undone)."""
        if self.fired is not None and self._task.uncancel() == 0:
            return self.fired
        return None

    def head_received(self, content: aiohttp.StreamReader) -> None:
        """From now on, idle and total apply to the reads of ``content``."""
        self._content = content
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(
            min(self._loop.time() + self.idle, self._total_due), self._body_timeout
        )

    def _body_timeout(self) -> None:
        self._handle = None
        now = self._loop.time()
        if now >= self._total_due:
            message = f"Backend {self.backend!r} did not finish in time (total timeout)."
        elif self.since is not None and now - self.since >= self.idle:
            message = f"Backend {self.backend!r} went idle mid-answer (timeout)."
        else:
            start = self.since if self.since is not None else now
            self._handle = self._loop.call_at(
                min(start + self.idle, self._total_due), self._body_timeout
            )
            return
        assert self._content is not None
        self.fired = UpstreamTimeout(message)
        self._content.set_exception(self.fired)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class HTTPOpened:
    """A 2xx upstream answer, to be read whole or relayed as it arrives."""

    __slots__ = ("_content", "_loop", "_resp", "_watch", "is_stream")

    def __init__(
        self, resp: aiohttp.ClientResponse, watch: _Watch, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._resp = resp
        self._content = resp.content
        self._watch = watch
        self._loop = loop
        self.is_stream = resp.content_type == "text/event-stream"
        watch.head_received(resp.content)

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    async def read(self, limit: int = MAX_ANSWER_BYTES) -> bytes:
        """The whole body (at most ``limit`` bytes, else an :class:`UpstreamError`)."""
        parts: list[bytes] = []
        size = 0
        async for data in self.chunks():
            size += len(data)
            if size > limit:
                raise UpstreamError(
                    f"Backend {self._watch.backend!r} answered more than {limit} bytes."
                )
            parts.append(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body pieces as they arrive (decoded)."""
        content, watch, clock = self._content, self._watch, self._loop.time
        try:
            while True:
                watch.since = clock()
                data = await content.readany()
                watch.since = None
                if not data:
                    return
                yield data
        except UpstreamError:
            raise
        except TimeoutError:  # aiohttp's own timers (none are set; kept as a guard)
            raise UpstreamTimeout(f"Backend {watch.backend!r} stopped answering.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"The stream from backend {watch.backend!r} broke: {_reason(exc)}."
            ) from None

    def close(self) -> None:
        """Give the connection back when the body was read to its end, else drop it."""
        self._watch.stop()
        if self._content.at_eof():
            self._resp.release()
        else:
            self._resp.close()


class Upstream:
    """Sends requests to backends. Create inside the running event loop."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=True,
            skip_auto_headers=("User-Agent", "Accept"),
            trust_env=False,  # proxies are resolved per backend, once (router.egress)
            max_line_size=MAX_HEADER_LINE,
            max_field_size=MAX_HEADER_LINE,
            max_headers=MAX_HEADERS,
            raise_for_status=False,
        )
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        await self.session.close()

    async def post(
        self,
        url: URL,
        headers: Mapping[str, str],
        body: bytes,
        egress: Egress,
        *,
        on_error: StatusMapper = status_error,
    ) -> HTTPOpened:
        """POST and wait for a 2xx response head; raise an :class:`UpstreamError`
        otherwise (``on_error`` reads the error body of a 4xx/5xx answer)."""
        loop = self._loop
        watch = _Watch(loop, egress)
        backend = egress.backend
        try:
            resp = await self.session.post(
                url, data=body, headers=headers, allow_redirects=False,
                timeout=egress.connect, ssl=egress.ssl, proxy=egress.proxy,
                proxy_headers=egress.proxy_headers,
            )  # fmt: skip
        except asyncio.CancelledError:
            watch.stop()
            expired = watch.expired()
            if expired is not None:
                raise expired from None
            raise
        except BaseException as exc:
            watch.stop()
            if isinstance(exc, Exception):
                raise call_error(backend, exc) from None
            raise
        status = resp.status
        if status < 300:
            opened = HTTPOpened(resp, watch, loop)
            encoding = resp.headers.get("Content-Encoding")
            if encoding is not None and encoding.strip().lower() not in DECODED:
                opened.close()
                raise UpstreamError(
                    f"Backend {backend!r} answered with Content-Encoding {encoding[:40]!r}, "
                    "which the gateway does not decode."
                )
            return opened
        opened = HTTPOpened(resp, watch, loop)
        try:
            text = await opened.read(MAX_ERROR_BYTES)
        except UpstreamError:
            text = b""
        finally:
            opened.close()
        raise status_failure(
            backend, status, text, resp.headers, on_error, secrets_of(headers)
        ) from None

    async def get(
        self,
        url: str,
        headers: Mapping[str, str],
        seconds: float,
        *,
        egress: Egress | None = None,
        max_bytes: int = 4 << 20,
    ) -> tuple[int, bytes]:
        """A small GET (health probes, ``/metrics`` scrapes): (status, body).

        Raises :class:`UpstreamError` when nothing usable came back in time."""
        ssl_setting: ssl.SSLContext | bool = True
        proxy = proxy_headers = None
        if egress is not None:
            ssl_setting, proxy, proxy_headers = egress.ssl, egress.proxy, egress.proxy_headers
        try:
            async with (
                asyncio.timeout(seconds),
                self.session.get(
                    url, headers=headers, allow_redirects=False, ssl=ssl_setting, proxy=proxy,
                    proxy_headers=proxy_headers,
                ) as resp,
            ):  # fmt: skip
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
            raise UpstreamError(f"{url} is unreachable ({_reason(exc)}).") from None


def call_error(backend: str, exc: Exception) -> UpstreamError:
    """An exception of a call that got no response head -> the gateway's error."""
    if isinstance(exc, UpstreamError):
        return exc
    name = f"Backend {backend!r}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert = exc.certificate_error
        reason = getattr(cert, "verify_message", None) or getattr(cert, "reason", None) or cert
        return UpstreamTLSError(f"{name}: TLS certificate refused ({reason}).")
    if isinstance(exc, aiohttp.ClientSSLError) or _is_tls(exc):
        return UpstreamTLSError(f"{name}: TLS handshake failed ({_reason(exc)}).")
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return UpstreamError(f"{name}: its egress proxy is unreachable ({_reason(exc)}).")
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return UpstreamError(f"{name}: its egress proxy refused the tunnel (HTTP {exc.status}).")
    if isinstance(exc, TimeoutError):  # aiohttp's connect timeouts
        return UpstreamTimeout(f"Connecting to backend {backend!r} timed out.")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(f"{name} is unreachable ({_reason(exc)}).")
    if isinstance(exc, aiohttp.ClientResponseError):  # the response head did not parse
        return UpstreamError(f"{name} sent an unusable response head ({exc.message}).")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return UpstreamError(f"{name}: the connection failed before an answer ({_reason(exc)}).")
    return UpstreamError(f"{name}: the call failed ({type(exc).__name__}).")


def status_failure(
    backend: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    on_error: StatusMapper,
    secrets: Iterable[str],
) -> UpstreamError:
    """A non-2xx answer -> the gateway's error, scrubbed of ``secrets``."""
    if 300 <= status < 400:
        return UpstreamError(
            f"Backend {backend!r} answered a redirect (HTTP {status}); redirects are not followed."
        )
    error: UpstreamError = on_error(
        status, body, retry_after=_retry_after(headers), backend=f"backend {backend!r}"
    )
    if status in AUTH_STATUSES:
        error = UpstreamAuthError(backend, status, error.message)
    elif status == 404:
        error = UpstreamMisconfigured(backend, status, error.message)
    error.scrub(secrets)
    return error


def secrets_of(headers: Mapping[str, str]) -> list[str]:
    """The credentials among ``headers`` (the token of ``Authorization: Bearer``)."""
    found = []
    for name, value in headers.items():
        if name.lower() in CREDENTIAL_HEADERS:
            found.append(value.rsplit(" ", 1)[-1])
    return found


def _is_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error
        return str(getattr(err, "reason", None) or err.strerror or type(err).__name__)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
