"""The app's one middleware: every answer has a request id, an access-log line and
a count, and a failure leaves as an error envelope, never a traceback.

The model endpoints (:class:`router.proxy.Proxy`) do all of this themselves, with
the fields only they know (team, model, pool, tokens): their handlers are marked
:data:`PROXIED` and pass straight through, so the hot path pays for one
attribute lookup. Every other answer (model list, quota, explain, health,
metrics, an unknown path's 404, a wrong method's 405) is given its id here,
written to the access log and counted in ``spillway_http_requests_total`` under
its route's template, or ``unmatched`` when no route has the path: a label is
never the raw path. An unexpected exception is logged once with its traceback
and answered 500 with the request id in the message and ``x-request-id``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from router.auth import Principal
from router.errors import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    SpillwayError,
    internal_error,
)
from router.keys import GATEWAY
from router.metrics import status_class
from router.proxy import client_request_id

log = logging.getLogger("spillway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROXIED = "spillway_proxied"  # a handler attribute: the proxy records its own answers
PRINCIPAL = web.RequestKey("principal", Principal)  # who called, once authenticated
UNMATCHED = "unmatched"  # the route of any other path and method (its name)
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
MAX_LOGGED_PATH = 256


def proxied(handler: Handler) -> Handler:
    """Mark a handler whose answers the proxy ids, logs and counts itself."""
    setattr(handler, PROXIED, True)
    return handler


def error_response(exc: SpillwayError) -> web.Response:
    return web.Response(
        body=exc.body(), status=exc.status, headers=exc.headers, content_type="application/json"
    )


def http_error(request: web.Request, exc: web.HTTPException) -> SpillwayError:
    """aiohttp's own refusals (no route, wrong method, body too large) as envelopes."""
    if exc.status == 404:
        return NotFound(
            f"Unknown path {printable(request.path)!r}.", code="unknown_url",
            type="invalid_request_error",
        )  # fmt: skip
    if exc.status == 405:
        err: SpillwayError = MethodNotAllowed(
            f"Method {request.method} is not allowed on {printable(request.path)}."
        )
        if exc.headers.get("Allow"):
            err.headers["Allow"] = exc.headers["Allow"]
        return err
    if exc.status == 413:
        return PayloadTooLarge("The request body is over the size limit.")
    err = SpillwayError(exc.reason, code=None, type="invalid_request_error")
    err.status = exc.status
    return err


def printable(text: str) -> str:
    """``text`` (a path) shortened, with bytes that were not UTF-8 replaced."""
    return text[:MAX_LOGGED_PATH].encode("utf-8", "replace").decode()


def route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None or resource.name == UNMATCHED:
        return UNMATCHED
    return resource.canonical


@web.middleware
async def answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    if getattr(handler, PROXIED, False):
        return await handler(request)
    return await _answer(request, handler)


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    loop = asyncio.get_running_loop()
    started = loop.time()
    rid = gateway.proxy.ids.next()
    client_rid = client_request_id(request)
    status = 499  # until answered: the client went away
    try:
        try:
            resp = await handler(request)
        except SpillwayError as exc:
            resp = error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            resp = error_response(http_error(request, exc))
        except Exception:
            log.exception(
                "unhandled error on %s %s (request %s)",
                request.method, printable(request.path), rid,
            )  # fmt: skip
            resp = error_response(internal_error(rid))
        status = resp.status
        if not resp.prepared:  # the client's own id echoed, like the proxy's answers
            resp.headers["x-request-id"] = client_rid or rid
        return resp
    finally:
        _record(request, rid, client_rid, status, loop.time() - started)


def _record(
    request: web.Request, rid: str, client_rid: str | None, status: int, seconds: float
) -> None:
    rt = request.app[GATEWAY].runtime
    route = route_label(request)
    method = request.method if request.method in METHODS else "other"
    m = rt.metrics
    m.child(m.http_requests, route, method, status_class(status)).inc()
    if rt.access.enabled:
        principal = request.get(PRINCIPAL)
        fields = {
            "request_id": rid, "route": route, "method": method,
            "path": printable(request.path), "status": status,
            "team": principal.team if principal else None,
            "key_id": principal.key_id if principal else None,
            "latency_ms": round(seconds * 1000, 2),
        }  # fmt: skip
        if client_rid is not None:
            fields["client_request_id"] = client_rid
        rt.access.write(fields)
