"""Walking one request's route: pools in order, members in balancer order, retries.

For each candidate pool: skip it when it is unhealthy (no healthy member) or
saturated (every healthy member at its limit), like a pool whose budget is
spent; otherwise admit (quota), then try its members. A failure before the
first byte reaches the client (connect error, timeout, 429, 5xx) moves to the
next member, then to the next pool, within ``routing.retries``: at most
``max_attempts`` attempts, each retry paid from the process's retry budget,
after a jittered backoff (or the upstream's ``Retry-After`` when going back to
the same backend). Each pool's reservation is settled exactly once: refunded
when every attempt on the pool failed, charged with the usage otherwise.

When every pool was skipped as unhealthy, the ejected members are tried anyway
(an ejection may be stale; failing outright would be worse).

:class:`router.queued_walk.QueuedWalk` walks routes through pools with a queue.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable
from typing import Literal

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from router.errors import (
    InvalidRequest,
    ServiceUnavailable,
    SpillwayError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)
from router.exchange import Exchange, billable
from router.headers import forwarded, passed_on
from router.metrics import status_class
from router.providers import Adapter, Call, Usage
from router.providers.base import Opened
from router.providers.bridged import Bridged
from router.quota import BudgetShort, Ticket
from router.relay import (
    SSE_HEADERS,
    OpenResult,
    aclose,
    open_answer,
    relay,
    settle_when_read,
)
from router.routing.balance import Member
from router.routing.retry import backoff
from router.runtime import Runtime

log = logging.getLogger("spillway.routing")

Outcome = Literal["refund", "used", "cancelled"]


class PoolFailed(Exception):
    """No attempt on a pool produced an answer (``error`` is None: none was made)."""

    def __init__(self, error: UpstreamError | None) -> None:
        super().__init__(error.message if error else "no member available")
        self.error = error


class Walk:
    """One request's way through its candidate pools."""

    __slots__ = (
        "admissions", "attempts", "detached", "last", "last_backend", "loop", "request", "rt",
        "stopped", "untranslatable", "x",
    )  # fmt: skip

    def __init__(self, rt: Runtime, request: web.Request, x: Exchange) -> None:
        self.rt = rt
        self.request = request
        self.x = x
        self.loop = asyncio.get_running_loop()
        self.admissions = 0
        self.attempts = 0
        self.last: UpstreamError | None = None
        self.last_backend = ""
        self.stopped = False  # out of attempts or retry budget
        self.detached: Ticket | None = None  # settled in the background (see _detach)
        self.untranslatable: InvalidRequest | None = None  # why a bridge could not carry it

    async def run(self) -> web.StreamResponse:
        rt, x = self.rt, self.x
        assert x.call is not None
        pools = x.pools
        generates = bool(x.call.outputs and x.call.max_output != 0)  # something to clamp
        rt.retry_budget.record_request(self.loop.time())
        shorts: dict[str, BudgetShort] = {}
        unhealthy: list[int] = []
        saturated = False
        for clamp_pass in (False, True):
            for i, pool in enumerate(pools):
                if clamp_pass and pool not in shorts:
                    continue
                if not clamp_pass:
                    status = self._status(pool, i + 1 == len(pools))
                    if status != "ok":
                        if status == "unhealthy":
                            unhealthy.append(i)
                        else:
                            saturated = True
                        self._fallback(pool, i, status)
                        continue
                response = await self._pool(i, clamp_pass, shorts, panic=False)
                if response is not None:
                    return response
                if self.stopped:
                    break
            if self.stopped or not shorts or not rt.quota.clamp or not generates:
                break
        if unhealthy and not self.attempts and not self.stopped:
            for i in unhealthy:  # every healthy pool is spent or full: try the ejected ones
                response = await self._pool(i, False, shorts, panic=True)
                if response is not None:
                    return response
                if self.stopped:
                    break
        raise self._failure(shorts, saturated)

    def _status(self, pool: str, last_pool: bool) -> str:
        """``ok`` (admit and serve), else why the pool is skipped."""
        return self.rt.balancers[pool].status()

    def _failure(self, shorts: dict[str, BudgetShort], saturated: bool) -> SpillwayError:
        """The answer when no pool served the request."""
        last = self.last
        if last is not None:
            retry_after = getattr(last, "retry_after", None)
            if retry_after is not None:
                last.headers.setdefault("Retry-After", str(max(1, math.ceil(retry_after))))
            return last
        if self.untranslatable is not None:
            return self.untranslatable
        if saturated:
            return ServiceUnavailable(
                "Every pool this request may use is at capacity; retry shortly.",
                code="capacity_exceeded", headers={"Retry-After": "1"},
            )  # fmt: skip
        if shorts:
            assert self.x.principal is not None
            return self.rt.quota.budget_rejected(self.x.principal.team, next(iter(shorts.values())))
        return ServiceUnavailable("No pool of this route can take the request.")

    def _fallback(self, pool: str, i: int, reason: str) -> None:
        x = self.x
        pools = x.pools
        if i + 1 < len(pools):
            m = self.rt.metrics
            m.child(m.fallbacks, x.model, pool, pools[i + 1], reason).inc()

    async def _pool(
        self, i: int, clamp: bool, shorts: dict[str, BudgetShort], *, panic: bool
    ) -> web.StreamResponse | None:
        rt, x = self.rt, self.x
        assert x.principal is not None and x.call is not None
        pool = x.pools[i]
        call = x.call
        out = call.max_output
        if out is None:
            out = rt.cfg.pools[pool].max_output_tokens
        try:
            ticket = await rt.quota.admit(
                key=x.principal, pool=pool, prompt=call.prompt_bound, out=out,
                n=call.outputs, clamp=clamp,
            )  # fmt: skip
        except BudgetShort as short:
            shorts.setdefault(pool, short)
            self._fallback(pool, i, "budget")
            return None
        finally:
            self.admissions += 1
        try:
            return await self._admitted(i, ticket, panic, i + 1 == len(x.pools))
        except PoolFailed as failed:
            reason = "error" if failed.error is not None or self.stopped else "saturated"
            self._fallback(pool, i, reason)
            return None

    def _admitted(
        self, i: int, ticket: Ticket, panic: bool, last_pool: bool
    ) -> Awaitable[web.StreamResponse | None]:
        """Serve the request admitted on the route's ``i``-th pool; None: move on. (The
        pool's own coroutine, not one wrapping it: one frame less on every resumption.)"""
        return self._serve_pool(self.x.pools[i], ticket, panic, last_pool)

    async def _serve_pool(
        self, pool: str, ticket: Ticket, panic: bool, last_pool: bool
    ) -> web.StreamResponse:
        rt, x, call = self.rt, self.x, self.x.call
        assert call is not None
        x.pool, x.out, x.clamped = pool, ticket.out, ticket.clamped
        cap: int | None = None
        if ticket.clamped or (ticket.checks and call.max_output is None):
            cap = ticket.out  # never let the upstream produce more than was reserved
        fwd = forwarded(self.request.headers, x.echo_id)
        bal = rt.balancers[pool]
        session = None
        if bal.affinity != "none":
            session = bal.session_key(call.user, self.request.headers)
        members = bal.order(self.loop.time(), session, call)
        outcome: Outcome = "refund"
        failed_here: UpstreamError | None = None
        try:
            i = 0
            again = False  # one retry of the same member after a short Retry-After
            while i < len(members):
                member = members[i]
                if not member.serves(call.apis, call.fim) or (
                    not again and not panic and not bal.available(member)
                ):
                    i += 1
                    continue
                api = call.target(member.apis) or call.api
                try:
                    request, raw = call.translated_to(api)
                except InvalidRequest as exc:  # the member's API cannot carry the call
                    self.untranslatable = exc
                    i += 1
                    continue
                if self.attempts:
                    verdict = await self._may_retry(pool, member)
                    if verdict == "stop":
                        break
                    if verdict == "skip":
                        i += 1
                        again = False
                        continue
                headers = fwd
                if api == call.api and call.codec.forward:  # the client API's own headers
                    headers = fwd | passed_on(self.request.headers, call.codec.forward)
                attempt = Call(
                    request=request, raw=raw, client_model=call.model,
                    member_model=member.model, max_tokens=cap, clamped=ticket.clamped,
                    default_max_tokens=rt.cfg.pools[pool].max_output_tokens,
                    request_id=x.rid, forward_headers=headers, api=api, stream=call.stream,
                    # a bridge reads the usage chunk to render it in the client's API
                    wants_usage=call.wants_usage or api != call.api, fim=member.fim,
                    body=call.doc if api == call.api else None,
                )  # fmt: skip
                try:
                    response = await self._attempt(member, attempt, ticket)
                except UpstreamError as exc:
                    if not exc.retryable or x.committed:
                        outcome = "used"
                        raise
                    failed_here = self.last = exc
                    self.last_backend = member.backend
                    if not again and getattr(exc, "credential_renewed", False):
                        again = True  # its credential was just renewed: try it once more
                        continue
                    rest = members[i + 1 :]
                    if (
                        not again and last_pool and getattr(exc, "retry_after", None) is not None
                        and not any(bal.available(m) for m in rest)
                    ):  # fmt: skip
                        again = True  # nowhere else to go: wait as asked, try it once more
                        continue
                    again = False
                    i += 1
                    continue
                outcome = "used"
                return response
            raise PoolFailed(failed_here)
        except asyncio.CancelledError:
            outcome = "cancelled"  # the client went away: settle what was used so far
            raise
        finally:
            self._settle(ticket, outcome)

    async def _may_retry(self, pool: str, member: Member) -> Literal["go", "skip", "stop"]:
        rt = self.rt
        settings = rt.cfg.routing.retries
        m = rt.metrics
        if self.attempts >= settings.max_attempts:
            self.stopped = True
            m.child(m.retries_denied, pool, "max_attempts").inc()
            return "stop"
        retry_after = getattr(self.last, "retry_after", None)
        delay = backoff(settings, self.attempts, retry_after, member.backend == self.last_backend)
        if delay is None:
            return "skip"
        if not rt.retry_budget.try_retry(self.loop.time()):
            self.stopped = True
            m.child(m.retries_denied, pool, "budget").inc()
            return "stop"
        m.child(m.retries, pool, member.backend).inc()
        if delay > 0:
            await asyncio.sleep(delay)
        return "go"

    def _failed(self, member: Member, exc: UpstreamError) -> None:
        """Account a failed attempt: scrub it, metrics, throttling, passive health."""
        rt = self.rt
        backend = rt.backends[member.backend]
        exc.scrub(backend.secrets)  # whatever the upstream said is passed on
        m = rt.metrics
        status = exc.status
        if isinstance(exc, UpstreamTimeout):
            kind = "timeout"
        elif isinstance(exc, UpstreamAuthError):
            kind = "auth"
        elif isinstance(exc, UpstreamStatus):
            kind = status_class(status)
        else:
            kind = "connect"  # unreachable, reset, or an unusable answer
        m.child(m.upstream_errors, member.backend, kind).inc()
        now = self.loop.time()
        state = member.state
        if isinstance(exc, UpstreamAuthError):
            self._refused(member, exc, now)
            return
        if status == 429:
            retry_after = getattr(exc, "retry_after", None)
            state.throttle(now + (retry_after if retry_after is not None else 1.0))
            return
        if status < 500:
            return  # the request's fault, not the member's
        if state.record_failure(now, rt.cfg.routing.health):
            m.child(m.ejections, member.backend).inc()
            m.child(m.backend_up, member.backend).set(0)
            log.warning(
                "backend %s ejected after %d consecutive failures (last: %s)",
                member.backend, state.consecutive_failures, exc.message,
            )  # fmt: skip

    def _refused(self, member: Member, exc: UpstreamAuthError, now: float) -> None:
        """The provider refused the gateway's credential or configuration: read a
        renewable credential again; when it did not change, eject for long."""
        rt = self.rt
        name = member.backend
        if rt.backends[name].refresh_credentials(now, force=True):
            exc.credential_renewed = True
            log.error(
                "backend %s refused the gateway's credential (HTTP %d: %s); it was renewed "
                "and is used from now on", name, exc.upstream_status, exc.detail,
            )  # fmt: skip
            return
        seconds = rt.cfg.routing.health.auth_ejection_seconds
        member.state.eject_for(now, seconds)
        m = rt.metrics
        m.child(m.ejections, name).inc()
        m.child(m.backend_up, name).set(0)
        log.error(
            "backend %s ejected for %gs: %s (HTTP %d: %s)",
            name, seconds, exc.code, exc.upstream_status, exc.detail,
        )  # fmt: skip

    async def _attempt(self, member: Member, call: Call, ticket: Ticket) -> web.StreamResponse:
        rt, x = self.rt, self.x
        adapter = rt.backends[member.backend].adapter(call)
        assert x.call is not None
        codec = x.call.codec
        if call.api != x.call.api:  # through the codec's bridge to the backend's API
            adapter = Bridged(adapter, codec.bridges[call.api].answers(x.call))
        else:
            own = codec.own_answers(x.call)
            if own is not None:  # the codec watches its own API's answers
                adapter = Bridged(adapter, own)
        x.adapter = adapter
        x.backend = member.backend
        state = member.state
        state.inflight += 1
        m = rt.metrics
        inflight = m.adder(m.inflight, member.backend)
        inflight(1)
        self.attempts += 1
        limit = rt.cfg.routing.retries.attempt_timeout_seconds
        loop = self.loop
        start = x.opened_at = loop.time()
        chunks: AsyncIterator[bytes] | None = None
        tracing, span, failure = rt.tracing, None, None
        if tracing is not None:  # tracing hook: the attempt's span, its traceparent upstream
            provider = rt.cfg.backends[member.backend].provider
            span = tracing.start_attempt(
                x.span, member, provider, self.attempts, call.forward_headers, x.endpoint
            )
        reading: asyncio.Task[OpenResult] | None = None
        opening: Awaitable[OpenResult]
        if not call.stream and rt.cfg.backends[member.backend].bills_generation:
            # the upstream bills what it generates: should the client leave, the answer
            # is still read to its end and its usage charged (see _detach)
            reading = loop.create_task(open_answer(member, adapter, call))
            opening = asyncio.shield(reading)
        else:
            opening = open_answer(member, adapter, call)
        try:
            try:
                if limit is None:
                    opened, chunks, first, out = await opening
                else:
                    async with asyncio.timeout(limit):  # to the first byte of the answer
                        opened, chunks, first, out = await opening
            except TimeoutError:
                if reading is not None:
                    reading.cancel()
                exc: UpstreamError = UpstreamTimeout(
                    f"Backend {member.backend!r} did not answer within the attempt timeout "
                    f"({limit:g}s)."
                )
                self._failed(member, exc)
                x.adapter = None
                raise exc from None
            except UpstreamError as exc:
                self._failed(member, exc)
                x.adapter = None
                raise
            except asyncio.CancelledError:
                if reading is not None and not reading.done():
                    self._detach(reading, ticket, adapter, member)
                raise
            now = loop.time()
            if chunks is not None:
                x.ttft = now - x.started
                return await self._stream(
                    member,
                    ticket,
                    adapter=adapter,
                    opened=opened,
                    chunks=chunks,
                    first=first,
                    ttfb=now - start,
                )
            x.read_at = now
            x.ttft = now - x.started
            x.usage = adapter.usage
            state.record_success(now - start)
            await codec.answered(x.call)
            headers = self._headers(member, ticket)
            headers["Content-Type"] = "application/json"
            return web.Response(body=out, headers=headers)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            state.inflight -= 1
            inflight(-1)
            if span is not None:
                assert tracing is not None
                tracing.end_attempt(span, x, member, failure)

    def _detach(
        self, reading: asyncio.Task[OpenResult], ticket: Ticket, adapter: Adapter, member: Member
    ) -> None:
        """The client left a non-streamed request to a backend that bills generation
        (see :func:`router.relay.settle_when_read`)."""
        self.detached = ticket
        limit = self.rt.cfg.backends[member.backend].timeouts.total
        self.rt.quota.detached.start(
            settle_when_read(self.rt.quota, reading, ticket, adapter, member.backend, limit)
        )

    async def _stream(
        self,
        member: Member,
        ticket: Ticket,
        *,
        adapter: Adapter,
        opened: Opened,
        chunks: AsyncIterator[bytes],
        first: bytes,
        ttfb: float,
    ) -> web.StreamResponse:
        """Commit (send the status line) and relay the stream."""
        x = self.x
        try:
            headers = self._headers(member, ticket)
            headers.update(SSE_HEADERS)
            resp = web.StreamResponse(headers=headers)
            try:
                await resp.prepare(self.request)
                x.committed, x.response = True, resp
                await relay(
                    x, resp, member, adapter, chunks=chunks, first=first, ttfb=ttfb,
                    failed=self._failed,
                )  # fmt: skip
            except (ConnectionResetError, ClientConnectionResetError):
                x.status = 499  # the client went away as its answer started
                x.usage = adapter.stream_usage_so_far()
            return resp
        finally:
            await aclose(chunks)
            opened.close()

    def _headers(self, member: Member, ticket: Ticket) -> dict[str, str]:
        x = self.x
        headers = {"x-request-id": x.echo_id, "x-spillway-served-model": member.model}
        if ticket.headers:
            headers.update(ticket.headers)
        if ticket.clamped:
            headers["x-spillway-max-tokens-clamped"] = str(ticket.out)
        if self.rt.route_headers:
            assert x.decision is not None
            headers["x-spillway-route"] = x.decision.route_name
            headers["x-spillway-pool"] = member.pool
            headers["x-spillway-backend"] = member.backend
        return headers

    def _settle(self, ticket: Ticket, outcome: Outcome) -> None:
        if ticket.settled or ticket is self.detached:
            return
        x = self.x
        if outcome == "refund" and not x.committed:
            self.rt.quota.settle(ticket, 0, 0, refund=True)
            return
        if x.usage is None and x.adapter is not None:
            x.usage = x.adapter.stream_usage_so_far()  # ended early
            if x.usage is None and outcome == "cancelled":
                x.usage = Usage(0, 0, reported=False)  # the upstream had it: charge the prompt
        prompt, completion = billable(x)
        self.rt.quota.settle(ticket, prompt, completion)
