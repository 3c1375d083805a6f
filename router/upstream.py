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
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Protocol

import aiohttp
from multidict import CIMultiDict
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
    """The deadlines of one upstream call: to the response head (``first_byte``),
    then idle between reads of the body while the gateway waits for it, and the
    total. Checked by the :class:`Deadlines` ticker, so a call costs no timer and
    a read costs a clock reading."""

    __slots__ = ("_task", "backend", "content", "fired", "head_due", "idle", "since", "total_due")

    def __init__(self, task: asyncio.Task[object], egress: Egress, now: float) -> None:
        self._task = task
        self.backend = egress.backend
        self.idle = egress.idle
        self.head_due = now + egress.first_byte
        self.total_due = now + egress.total
        self.content: aiohttp.StreamReader | None = None  # set once the head is in
        self.since: float | None = None  # waiting for the body since (None: not waiting)
        self.fired: UpstreamTimeout | None = None

    def check(self, now: float) -> bool:
        """Fire when a deadline has passed; True when it did."""
        content = self.content
        if content is None:
            if now < self.head_due and now < self.total_due:
                return False
            self.fired = UpstreamTimeout(f"Backend {self.backend!r} did not answer in time.")
            self._task.cancel()  # the call is waiting for its head: stop it there
            return True
        if now >= self.total_due:
            message = f"Backend {self.backend!r} did not finish in time (total timeout)."
        elif self.since is not None and now - self.since >= self.idle:
            message = f"Backend {self.backend!r} went idle mid-answer (timeout)."
        else:
            return False
        self.fired = UpstreamTimeout(message)
        content.set_exception(self.fired)  # the pending read raises it
        return True

    def expired(self) -> UpstreamTimeout | None:
        """The timeout that cancelled the call, if it was this watch (undone)."""
        if self.fired is not None and self._task.uncancel() == 0:
            return self.fired
        return None


class Deadlines:
    """Checks the deadlines of every call in flight every ``tick`` seconds: one
    task for the process instead of a timer per call (timeouts fire up to one
    tick late). Owned by :class:`Upstream`, stopped and awaited by its ``close``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.05) -> None:
        self._loop = loop
        self.tick = tick
        self.watches: set[_Watch] = set()
        self.clock = loop.time
        self._task = loop.create_task(self._run(), name="spillway-upstream-deadlines")

    def watch(self, egress: Egress) -> _Watch:
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(task, egress, self._loop.time())
        self.watches.add(watch)
        return watch

    async def _run(self) -> None:
        watches, clock = self.watches, self._loop.time
        while True:
            await asyncio.sleep(self.tick)
            if watches:
                now = clock()
                for watch in [w for w in watches if w.check(now)]:
                    watches.discard(watch)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class HTTPOpened:
    """A 2xx upstream answer, to be read whole or relayed as it arrives."""

    __slots__ = ("_content", "_deadlines", "_resp", "_watch", "is_stream")

    def __init__(self, resp: aiohttp.ClientResponse, watch: _Watch, deadlines: Deadlines) -> None:
        self._resp = resp
        self._content = watch.content = resp.content
        self._watch = watch
        self._deadlines = deadlines
        media = resp.headers.get("Content-Type", "")
        self.is_stream = media.partition(";")[0].strip().lower() == "text/event-stream"

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    async def read(self, limit: int = MAX_ANSWER_BYTES) -> bytes:
        """The whole body (at most ``limit`` bytes, else an :class:`UpstreamError`)."""
        content = self._content
        if content.is_eof():  # the whole body came with the head: no need to wait
            try:
                data = content.read_nowait()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _body_error(self._watch.backend, exc) from None
            if len(data) > limit:
                raise _too_large(self._watch.backend, limit)
            return data
        parts: list[bytes] = []
        size = 0
        async for data in self.chunks():
            size += len(data)
            if size > limit:
                raise _too_large(self._watch.backend, limit)
            parts.append(data)
            if content.at_eof():
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def chunks(self) -> AsyncIterator[bytes]:
        """Body pieces as they arrive (decoded)."""
        return _Body(self._content, self._watch, self._deadlines.clock)

    def close(self) -> None:
        """Give the connection back when the body was read to its end, else drop it."""
        self._deadlines.watches.discard(self._watch)
        if self._content.at_eof():
            self._resp.release()
        else:
            self._resp.close()


class _Body:
    """The body's pieces; the watch knows when the gateway is waiting for one."""

    __slots__ = ("_clock", "_content", "_watch")

    def __init__(
        self, content: aiohttp.StreamReader, watch: _Watch, clock: Callable[[], float]
    ) -> None:
        self._content = content
        self._watch = watch
        self._clock = clock

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        watch = self._watch
        watch.since = self._clock()
        try:
            data = await self._content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _body_error(watch.backend, exc) from None
        watch.since = None
        if not data:
            raise StopAsyncIteration
        return data

    def ended(self) -> bool:
        """The whole body is read: the last piece has been returned."""
        return self._content.at_eof()


def _too_large(backend: str, limit: int) -> UpstreamError:
    return UpstreamError(f"Backend {backend!r} answered more than {limit} bytes.")


def _body_error(backend: str, exc: BaseException) -> UpstreamError:
    if isinstance(exc, TimeoutError):  # aiohttp's own timers (none are set): a guard
        return UpstreamTimeout(f"Backend {backend!r} stopped answering.")
    return UpstreamError(f"The stream from backend {backend!r} broke: {_reason(exc)}.")


class Upstream:
    """Sends requests to backends. Create inside the running event loop."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=True,
            skip_auto_headers=("User-Agent", "Accept"),
            trust_env=False,  # proxies are resolved per backend, once (router.egress)
            cookie_jar=aiohttp.DummyCookieJar(),  # never replay one answer's cookies
            timeout=aiohttp.ClientTimeout(total=None),  # the deadlines are ours
            max_line_size=MAX_HEADER_LINE,
            max_field_size=MAX_HEADER_LINE,
            max_headers=MAX_HEADERS,
            raise_for_status=False,
        )
        self.deadlines = Deadlines(asyncio.get_running_loop())

    async def close(self) -> None:
        await self.deadlines.close()
        await self.session.close()

    async def post(
        self,
        url: URL,
        headers: CIMultiDict[str],
        body: bytes,
        egress: Egress,
        *,
        extra: Mapping[str, str] | None = None,
        on_error: StatusMapper = status_error,
    ) -> HTTPOpened:
        """POST and wait for a 2xx response head; raise an :class:`UpstreamError`
        otherwise (``on_error`` reads the error body of a 4xx/5xx answer).
        ``headers`` are the backend's own (built once), ``extra`` this call's."""
        if extra:
            headers = headers.copy()
            headers.update(extra)
        deadlines = self.deadlines
        watch = deadlines.watch(egress)
        backend = egress.backend
        try:
            resp = await self.session.post(
                url, data=body, headers=headers, allow_redirects=False,
                timeout=egress.connect, ssl=egress.ssl, proxy=egress.proxy,
                proxy_headers=egress.proxy_headers,
            )  # fmt: skip
        except BaseException as exc:
            deadlines.watches.discard(watch)
            if watch.fired is not None:  # our deadline cancelled the call (however it ended)
                expired = watch.expired()
                if expired is not None:
                    raise expired from None
            if isinstance(exc, Exception):
                raise call_error(backend, exc) from None
            raise  # cancelled: the client went away
        status = resp.status
        if status < 300:
            opened = HTTPOpened(resp, watch, deadlines)
            encoding = resp.headers.get("Content-Encoding")
            if encoding is not None and encoding.strip().lower() not in DECODED:
                opened.close()
                raise UpstreamError(
                    f"Backend {backend!r} answered with Content-Encoding {encoding[:40]!r}, "
                    "which the gateway does not decode."
                )
            return opened
        opened = HTTPOpened(resp, watch, deadlines)
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
