"""One chat-completions request, end to end: the only module that knows them all.

parse -> authenticate -> resolve model and route -> for each candidate pool:
admit (quota) -> try its members -> relay -> settle. A pool whose budget
cannot cover the request is skipped; a failure before the first byte reaches
the client moves to the next member, then the next pool. Once a stream has
started, an upstream failure ends it with an in-band error event and
``[DONE]``. Whatever happens, the reservation is settled with what was used.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from typing import Any

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from router.auth import Principal
from router.contract import ChatCompletionRequest, ValidationError, error_param
from router.errors import (
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RequestTimeout,
    ServiceUnavailable,
    SpillwayError,
    UpstreamError,
)
from router.metrics import status_class
from router.providers import Adapter, Call, Usage
from router.quota import BudgetShort, Ticket
from router.quota import tokens as tokenest
from router.routing.balance import Member
from router.routing.rules import Decision, Facts
from router.runtime import Runtime, RuntimeHolder
from router.streaming import error_event

log = logging.getLogger("spillway.proxy")

_RID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}  # fmt: skip


class PoolFailed(Exception):
    """Every member of a pool failed before the first byte."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.error = error


class Exchange:
    """The state of one client request, for settlement, metrics and the log."""

    __slots__ = (
        "adapter", "backend", "clamped", "decision", "model", "opened_at", "out", "pool",
        "principal", "prompt_bound", "read_at", "request", "rid", "started", "status",
        "ttft", "usage",
    )  # fmt: skip

    def __init__(self, rid: str, started: float) -> None:
        self.rid = rid
        self.started = started
        self.principal: Principal | None = None
        self.request: ChatCompletionRequest | None = None
        self.decision: Decision | None = None
        self.model = ""
        self.pool = ""
        self.backend = ""
        self.status = 200
        self.ttft: float | None = None
        self.usage: Usage | None = None
        self.adapter: Adapter | None = None
        self.prompt_bound = 0
        self.out = 0
        self.clamped = False
        self.opened_at = 0.0
        self.read_at = 0.0


def request_id(request: web.Request) -> str:
    given = request.headers.get("x-request-id")
    if given and _RID.match(given):
        return given
    return "req_" + os.urandom(12).hex()


async def read_body(request: web.Request, max_bytes: int, timeout: float) -> bytes:
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"Request body is {length} bytes; the limit is {max_bytes}.")
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"Request body is over the limit of {max_bytes} bytes.") from None
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {timeout:g}s.") from None


def parse_request(raw: bytes) -> ChatCompletionRequest:
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        return ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as exc:
        param, message = error_param(exc)
        if message.startswith("Invalid JSON"):
            raise InvalidRequest(
                f"We could not parse the JSON body of your request. ({message})",
                code="invalid_json",
            ) from None
        raise InvalidRequest(f"Invalid request: {message}", param=param) from None


class Proxy:
    def __init__(self, holder: RuntimeHolder) -> None:
        self.holder = holder

    async def chat(self, request: web.Request) -> web.StreamResponse:
        rt = self.holder.current
        loop = asyncio.get_running_loop()
        x = Exchange(request_id(request), loop.time())
        try:
            return await self._chat(rt, request, x)
        except SpillwayError as exc:
            x.status = exc.status
            exc.headers.setdefault("x-request-id", x.rid)
            raise
        except asyncio.CancelledError:
            x.status = 499  # the client went away
            raise
        finally:
            self._finish(rt, x, loop.time())

    async def _chat(self, rt: Runtime, request: web.Request, x: Exchange) -> web.StreamResponse:
        server = rt.cfg.server
        raw = await read_body(request, server.max_body_bytes, server.body_timeout_seconds)
        headers = request.headers
        principal = x.principal = rt.auth.authenticate(
            headers.get("Authorization"), headers.get("api-key")
        )
        req = x.request = parse_request(raw)
        model = rt.rules.resolve(req.model)
        if model is None:
            raise NotFound(
                f"The model `{req.model}` does not exist or you do not have access to it.",
                param="model",
            )
        x.model = model
        if not rt.rules.allowed(principal.team, model):
            raise PermissionDenied(
                f"Team {principal.team!r} may not use model `{req.model}`.", param="model"
            )
        facts = Facts(
            team=principal.team,
            stream=bool(req.stream),
            tools=bool(req.tools),
            headers=headers,
            prompt_tokens=lambda: tokenest.estimate(req),
        )
        decision = x.decision = rt.rules.decide(model, facts)
        if decision is None:
            raise NotFound(
                f"No route of model `{req.model}` matches this request.", param="model",
                code="no_matching_route",
            )  # fmt: skip
        x.prompt_bound = tokenest.bound(raw)
        return await self._route(rt, request, x, raw)

    async def _route(
        self, rt: Runtime, request: web.Request, x: Exchange, raw: bytes
    ) -> web.StreamResponse:
        assert x.principal is not None and x.request is not None and x.decision is not None
        req, principal, pools = x.request, x.principal, x.decision.pools
        last_error: UpstreamError | None = None
        shorts: dict[str, BudgetShort] = {}
        attempt = 0
        for clamp_pass in (False, True):
            for i, pool in enumerate(pools):
                if clamp_pass and pool not in shorts:
                    continue
                cfg = rt.cfg.pools[pool]
                out = req.output_limit() or cfg.max_output_tokens
                try:
                    ticket = await rt.quota.admit(
                        key_id=principal.key_id, team=principal.team, pool=pool,
                        rid=f"{x.rid}:{attempt}", prompt=x.prompt_bound, out=out,
                        n=req.n or 1, clamp=clamp_pass,
                    )  # fmt: skip
                except BudgetShort as short:
                    shorts.setdefault(pool, short)
                    self._fallback(rt, x, pool, pools, i, "budget")
                    continue
                finally:
                    attempt += 1
                try:
                    return await self._serve_pool(rt, request, x, raw, pool, ticket)
                except PoolFailed as failed:
                    last_error = failed.error
                    self._fallback(rt, x, pool, pools, i, "error")
            if not shorts or not rt.quota.clamp:
                break
        if last_error is not None:
            raise last_error
        if shorts:
            raise rt.quota.budget_rejected(principal.team, next(iter(shorts.values())))
        raise ServiceUnavailable("No pool of this route can take the request.")

    def _fallback(
        self, rt: Runtime, x: Exchange, pool: str, pools: tuple[str, ...], i: int, reason: str
    ) -> None:
        if i + 1 < len(pools):
            m = rt.metrics
            m.child(m.fallbacks, x.model, pool, pools[i + 1], reason).inc()

    async def _serve_pool(
        self,
        rt: Runtime,
        request: web.Request,
        x: Exchange,
        raw: bytes,
        pool: str,
        ticket: Ticket,
    ) -> web.StreamResponse:
        assert x.request is not None
        req = x.request
        x.pool = pool
        x.out = ticket.out
        x.clamped = ticket.clamped
        cap: int | None = None
        if ticket.clamped or (ticket.checks and req.output_limit() is None):
            cap = ticket.out  # never let the upstream produce more than was reserved
        fwd = {"X-Request-Id": x.rid}
        for name in _TRACE_HEADERS:
            value = request.headers.get(name)
            if value is not None:
                fwd[name] = value
        refund = True
        last: UpstreamError | None = None
        metrics = rt.metrics
        try:
            for n, member in enumerate(rt.balancers[pool].order()):
                if n:
                    metrics.child(metrics.retries, pool, member.backend).inc()
                call = Call(
                    request=req, raw=raw, client_model=req.model, member_model=member.model,
                    max_tokens=cap, clamped=ticket.clamped,
                    default_max_tokens=rt.cfg.pools[pool].max_output_tokens,
                    request_id=x.rid, forward_headers=fwd,
                )  # fmt: skip
                try:
                    response = await self._attempt(rt, request, x, member, call, ticket)
                except UpstreamError as exc:
                    if exc.retryable:
                        last = exc
                        continue
                    refund = False
                    raise
                refund = False
                return response
            assert last is not None
            raise PoolFailed(last)
        finally:
            self._settle(rt, x, ticket, refund)

    async def _attempt(
        self, rt: Runtime, request: web.Request, x: Exchange, member: Member, call: Call,
        ticket: Ticket,
    ) -> web.StreamResponse:
        backend = rt.backends[member.backend]
        adapter = x.adapter = backend.adapter(call)
        x.backend = member.backend
        state = member.state
        state.inflight += 1
        metrics = rt.metrics
        inflight = metrics.child(metrics.inflight, member.backend)
        inflight.inc()
        loop = asyncio.get_running_loop()
        try:
            x.opened_at = loop.time()
            try:
                opened = await adapter.open()
            except UpstreamError as exc:
                state.record_failure()
                kind = "timeout" if exc.status == 504 else (
                    "connect" if exc.status == 502 else status_class(exc.status))
                metrics.child(metrics.upstream_errors, member.backend, kind).inc()
                x.adapter = None
                raise
            headers = self._headers(rt, x, member, call, ticket)
            if call.stream and opened.is_stream:
                return await self._relay(request, x, adapter, opened, headers, state)
            try:
                body = await opened.read()
            finally:
                opened.close()
            x.read_at = loop.time()
            x.ttft = x.read_at - x.started
            out = adapter.transform_body(body)
            x.usage = adapter.usage
            state.record_success(None)
            headers["Content-Type"] = "application/json"
            return web.Response(body=out, headers=headers)
        finally:
            state.inflight -= 1
            inflight.dec()

    def _headers(
        self, rt: Runtime, x: Exchange, member: Member, call: Call, ticket: Ticket
    ) -> dict[str, str]:
        headers = {"x-request-id": x.rid, "x-spillway-served-model": member.model}
        if ticket.headers:
            headers.update(ticket.headers)
        if ticket.clamped:
            headers["x-spillway-max-tokens-clamped"] = str(ticket.out)
        if rt.route_headers:
            assert x.decision is not None
            headers["x-spillway-route"] = x.decision.route_name
            headers["x-spillway-pool"] = member.pool
            headers["x-spillway-backend"] = member.backend
        return headers

    async def _relay(
        self,
        request: web.Request,
        x: Exchange,
        adapter: Adapter,
        opened: Any,
        headers: dict[str, str],
        state: Any,
    ) -> web.StreamResponse:
        headers.update(SSE_HEADERS)
        resp = web.StreamResponse(headers=headers)
        loop = asyncio.get_running_loop()
        try:
            await resp.prepare(request)
            try:
                async for data in opened.chunks():
                    if x.ttft is None:
                        x.ttft = loop.time() - x.started
                    out = adapter.transform_chunk(data)
                    if out:
                        await resp.write(out)
                tail = adapter.finish_stream()
                if tail:
                    await resp.write(tail)
                x.usage = adapter.usage
                state.record_success(x.ttft)
            except UpstreamError as exc:
                # the stream has started: tell the client in-band, then end cleanly
                x.status = exc.status
                x.usage = adapter.stream_usage_so_far()
                await resp.write(error_event(exc.envelope()))
            await resp.write_eof()
        except (ConnectionResetError, ClientConnectionResetError):
            x.status = 499
            x.usage = adapter.stream_usage_so_far()
        finally:
            opened.close()
        return resp

    def _settle(self, rt: Runtime, x: Exchange, ticket: Ticket, refund: bool) -> None:
        if ticket.settled:
            return
        if refund:
            rt.quota.settle(ticket, 0, 0, refund=True)
            return
        if x.usage is None and x.adapter is not None:
            x.usage = x.adapter.stream_usage_so_far()  # cancelled mid-stream
        prompt, completion = self._billable(x)
        rt.quota.settle(ticket, prompt, completion)

    def _billable(self, x: Exchange) -> tuple[int, int]:
        usage = x.usage
        if usage is None:
            return 0, 0
        prompt = usage.prompt_tokens
        if not usage.reported and not prompt and x.request is not None:
            prompt = tokenest.estimate(x.request)
        return prompt, usage.completion_tokens

    def _finish(self, rt: Runtime, x: Exchange, now: float) -> None:
        m = rt.metrics
        team = x.principal.team if x.principal else ""
        sc = "4xx" if x.status == 499 else status_class(x.status)
        m.child(m.requests, x.model, x.pool, x.backend, team, sc).inc()
        duration = now - x.started
        if x.pool:
            labels = (x.model, x.pool, x.backend)
            m.child(m.duration, *labels).observe(duration)
            prompt, completion = self._billable(x)
            if x.ttft is not None and x.request is not None and x.request.stream:
                m.child(m.ttft, *labels).observe(x.ttft)
                if completion > 1:
                    m.child(m.tpot, *labels).observe((duration - x.ttft) / (completion - 1))
            if prompt or completion:
                m.child(m.prompt_tokens, *labels, team).inc(prompt)
                m.child(m.completion_tokens, *labels, team).inc(completion)
                price = rt.cfg.pools[x.pool].price
                cost = (prompt * price.input_per_mtok + completion * price.output_per_mtok) / 1e6
                if cost:
                    m.child(m.cost, x.model, x.pool, team).inc(cost)
            if x.opened_at:
                overhead = x.opened_at - x.started
                if x.read_at:
                    overhead += now - x.read_at
                m.child(m.overhead, x.model).observe(overhead)
        if rt.access.enabled:
            prompt, completion = self._billable(x)
            rt.access.write({
                "request_id": x.rid, "team": team or None,
                "key_id": x.principal.key_id if x.principal else None,
                "model": x.model or None, "pool": x.pool or None,
                "backend": x.backend or None, "status": x.status,
                "prompt_tokens": prompt, "completion_tokens": completion,
                "latency_ms": round(duration * 1000, 2),
                "ttft_ms": round(x.ttft * 1000, 2) if x.ttft is not None else None,
            })  # fmt: skip
