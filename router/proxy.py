"""One request, end to end, whatever its client API: the only module that knows them all.

The endpoint's codec (:mod:`router.inbound`) parses the body into the gateway's
call shape; then authenticate -> resolve model (of the endpoint's kind) and
route -> the route's pools that can serve the call -> :class:`router.attempts.Walk`
(for each candidate pool: admit (quota) -> try its members -> relay -> settle)
-> metrics and the access log. A pool that is spent, saturated or unhealthy is
skipped; a failure before the first byte reaches the client moves to the next
member, then the next pool. Once a stream has started, an upstream failure ends
it with the codec's in-band error. Whatever happens, the reservation is
settled with what was used, and errors leave in the codec's envelope.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re

from aiohttp import web

from router.attempts import Walk
from router.auth import presented_key
from router.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    SpillwayError,
    internal_error,
)
from router.exchange import Exchange, billable
from router.inbound.base import Codec
from router.inbound.registry import served_paths
from router.metrics import status_class
from router.queued_walk import QueuedWalk
from router.request_body import read_body
from router.routing.rules import Facts
from router.runtime import Runtime, RuntimeHolder

log = logging.getLogger("spillway.proxy")

_RID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIds:
    """``req_<random process prefix><counter>``: unique without a syscall per request.

    The gateway's id is the request's identity (logs, traces, response ids). A
    client's ``x-request-id`` is never one: two requests may carry the same; it is
    only echoed back, logged (``client_request_id``) and forwarded upstream."""

    __slots__ = ("_n", "_prefix")

    def __init__(self) -> None:
        self._prefix = "req_" + os.urandom(8).hex()
        self._n = 0

    def next(self) -> str:
        self._n += 1
        return f"{self._prefix}{self._n:08x}"


def client_request_id(request: web.Request) -> str | None:
    """The client's ``x-request-id`` when it is a plausible id, else None."""
    given = request.headers.get("x-request-id")
    if given and _RID.match(given):
        return given
    return None


class Proxy:
    def __init__(self, holder: RuntimeHolder, codecs: dict[str, Codec]) -> None:
        self.holder = holder
        self.codecs = codecs
        self.ids = RequestIds()

    async def handle(
        self, request: web.Request, codec: Codec, model: str | None = None
    ) -> web.StreamResponse:
        """Serve ``request`` with ``codec``; ``model``: the model named by the path
        (Azure's deployment), which replaces the body's."""
        rt = self.holder.current
        loop = asyncio.get_running_loop()
        x = Exchange(self.ids.next(), loop.time(), codec.endpoint, client_request_id(request))
        tracing = rt.tracing
        if tracing is not None:  # tracing hook: the request's span
            x.span = tracing.start_request(request)
        failure: BaseException | None = None
        answer: web.StreamResponse | None = None
        try:
            answer = await self._serve(rt, request, codec, x, model)
            return answer
        except SpillwayError as exc:
            failure = exc
            x.status = exc.status
            exc.headers.setdefault("x-request-id", x.echo_id)
            return codec.error_response(exc)
        except asyncio.CancelledError as exc:
            failure = exc
            x.status = 499  # the client went away
            raise
        except Exception as exc:  # a bug: a 500 with the request id, logged here once
            failure = exc
            x.status = 500
            log.exception("unhandled error on %s %s (request %s)", request.method,
                          codec.path, x.rid)  # fmt: skip
            if x.response is not None:  # the answer has started: end it as it is
                return x.response
            err = internal_error(x.rid)
            err.headers["x-request-id"] = x.echo_id
            return codec.error_response(err)
        finally:
            self._finish(rt, x, loop.time())
            if tracing is not None:
                tracing.end_request(x.span, x, failure, answer)

    async def _serve(
        self, rt: Runtime, request: web.Request, codec: Codec, x: Exchange, name: str | None
    ) -> web.StreamResponse:
        server = rt.cfg.server
        raw = await read_body(request, server.max_body_bytes, server.body_timeout_seconds)
        headers = request.headers
        principal = x.principal = await rt.auth.authenticate(
            headers.get("Authorization"), presented_key(headers)
        )
        call = x.call = codec.parse(raw, name)
        await codec.prepare(call, principal.team)
        model = rt.rules.resolve(call.model)
        if model is None:
            raise NotFound(
                f"The model `{call.model}` does not exist or you do not have access to it.",
                param="model",
            )
        x.model = model
        if not rt.rules.allowed(principal.team, model, principal.models):
            raise PermissionDenied(
                f"Team {principal.team!r} may not use model `{call.model}`.", param="model"
            )
        kind = rt.rules.kinds[model]
        if kind != codec.kind:
            raise InvalidRequest(
                f"Model `{call.model}` is {'an' if kind == 'embeddings' else 'a'} {kind} "
                f"model: it serves {served_paths(self.codecs, kind)}, not {codec.path}.",
                param="model", code="wrong_endpoint",
            )  # fmt: skip
        decision = rt.rules.unconditional(model)
        if decision is None:
            facts = Facts(
                team=principal.team, stream=call.stream, tools=call.tools, headers=headers,
                prompt_tokens=call.estimate,
            )  # fmt: skip
            decision = rt.rules.decide(model, facts)
        x.decision = decision
        if decision is None:
            raise NotFound(
                f"No route of model `{call.model}` matches this request.", param="model",
                code="no_matching_route",
            )  # fmt: skip
        balancers, apis, fim = rt.balancers, call.apis, call.fim
        pools = decision.pools
        for pool in pools:
            if not balancers[pool].serves(apis, fim):  # keep the pools that can serve it
                pools = tuple(p for p in pools if balancers[p].serves(apis, fim))
                if not pools:
                    local = codec.answer_locally(call)
                    if local is None:
                        raise codec.unserved(call.model, call)
                    return web.Response(body=local, content_type="application/json")
                break
        x.pools = pools
        walk = QueuedWalk if rt.scheduler.gates else Walk
        return await walk(rt, request, x).run()

    def _finish(self, rt: Runtime, x: Exchange, now: float) -> None:
        team = x.principal.team if x.principal else ""
        sc = "4xx" if x.status == 499 else status_class(x.status)
        duration = now - x.started
        if not x.pool:  # refused before routing: no pool or backend series to touch
            m = rt.metrics
            m.child(m.requests, x.endpoint, x.model, "", x.backend, team, sc).inc()
        else:
            series = rt.metrics.series(x.endpoint, x.model, x.pool, x.backend, team)
            series.requests(sc).inc(1)
            series.duration.observe(duration)
            prompt, completion = billable(x)
            if x.ttft is not None and x.call is not None and x.call.stream:
                series.ttft.observe(x.ttft)
                if completion > 1:
                    series.tpot.observe((duration - x.ttft) / (completion - 1))
            if prompt or completion:
                series.prompt.inc(prompt)
                series.completion.inc(completion)
                price = rt.cfg.pools[x.pool].price
                cost = (prompt * price.input_per_mtok + completion * price.output_per_mtok) / 1e6
                if cost:
                    series.cost.inc(cost)
            if x.opened_at:
                overhead = x.opened_at - x.started - x.queued
                if x.read_at:
                    overhead += now - x.read_at
                series.overhead.observe(overhead)
        if rt.access.enabled:
            prompt, completion = billable(x)
            fields = {
                "request_id": x.rid, "endpoint": x.endpoint, "team": team or None,
                "key_id": x.principal.key_id if x.principal else None,
                "model": x.model or None, "pool": x.pool or None,
                "backend": x.backend or None, "status": x.status,
                "prompt_tokens": prompt, "completion_tokens": completion,
                "latency_ms": round(duration * 1000, 2),
                "ttft_ms": round(x.ttft * 1000, 2) if x.ttft is not None else None,
            }  # fmt: skip
            if x.client_rid is not None:
                fields["client_request_id"] = x.client_rid
            rt.access.write(fields)
