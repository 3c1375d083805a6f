"""Thin aiohttp handlers: read the request, call the right object, answer."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import HttpVersion11, web

from router.auth import Principal, presented_key
from router.errors import InvalidRequest, NotFound, ServiceUnavailable
from router.inbound.responses import ResponsesCodec
from router.inspect import live_explain
from router.keys import GATEWAY
from router.middleware import PRINCIPAL, proxied
from router.runtime import Runtime

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


def endpoint(name: str) -> Handler:
    """The handler of one client API (``router.inbound`` codec ``name``)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        proxy = request.app[GATEWAY].proxy
        return await proxy.handle(request, proxy.codecs[name])

    return proxied(handle)


def deployment(name: str) -> Handler:
    """Azure-style ``/openai/deployments/{deployment}/...``: the deployment is the model;
    ``api-version`` is accepted and not enforced."""

    async def handle(request: web.Request) -> web.StreamResponse:
        proxy = request.app[GATEWAY].proxy
        return await proxy.handle(request, proxy.codecs[name], request.match_info["deployment"])

    return proxied(handle)


async def expect(request: web.Request) -> None:
    """``Expect: 100-continue`` (HTTP/1.1) is answered; any other expectation is
    ignored (RFC 9110 allows it), so the request is answered like any other, never
    with aiohttp's plain 417 (whose text repeats the header's bytes)."""
    if request.version == HttpVersion11:
        value = request.headers.get("Expect", "")
        if value.lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer itself has not started


async def unmatched(request: web.Request) -> web.StreamResponse:
    """A path no route has (404), or a method its routes do not take (405)."""
    own = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not own:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


async def _principal_runtime(request: web.Request) -> tuple[Runtime, Principal]:
    runtime = request.app[GATEWAY].runtime
    h = request.headers
    principal = await runtime.auth.authenticate(h.get("Authorization"), presented_key(h))
    request[PRINCIPAL] = principal  # for the access log
    return runtime, principal


async def list_models(request: web.Request) -> web.Response:
    runtime, principal = await _principal_runtime(request)
    created = int(request.app[GATEWAY].started)
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "spillway"}
        for name in runtime.rules.visible_models(principal.team, principal.models)
    ]
    return _json({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    """GET /v1/models/{id}: a model the caller's team may use (a name, alias or a name
    matching a glob alias), else the 404 envelope."""
    runtime, principal = await _principal_runtime(request)
    name = request.match_info["model"]
    model = runtime.rules.resolve(name)
    if model is None or not runtime.rules.allowed(principal.team, model, principal.models):
        raise NotFound(
            f"The model `{name}` does not exist or you do not have access to it.",
            param="model",
        )
    created = int(request.app[GATEWAY].started)
    return _json({"id": name, "object": "model", "created": created, "owned_by": "spillway"})


def _responses(request: web.Request) -> ResponsesCodec:
    codec = request.app[GATEWAY].proxy.codecs["responses"]
    assert isinstance(codec, ResponsesCodec)
    return codec


async def get_response(request: web.Request) -> web.Response:
    """GET /v1/responses/{id}: a response the caller's team made, kept by the gateway."""
    _, principal = await _principal_runtime(request)
    return _json(await _responses(request).retrieve(request.match_info["id"], principal.team))


async def delete_response(request: web.Request) -> web.Response:
    _, principal = await _principal_runtime(request)
    return _json(await _responses(request).delete(request.match_info["id"], principal.team))


async def quota(request: web.Request) -> web.Response:
    runtime, principal = await _principal_runtime(request)
    reachable = runtime.rules.pools_for(principal.team, principal.models)
    doc = await runtime.quota.status(principal, reachable)
    doc["key_id"], doc["team"] = principal.key_id, principal.team
    return _json(doc)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Whether this replica can serve. Redis unreachable: with ``on_error: allow`` it
    can (quotas decided in-process): ready, and ``degraded`` says why; with ``deny``
    it cannot."""
    if request.app[GATEWAY].draining.is_set():
        raise ServiceUnavailable("Shutting down.", code="draining")
    rt = request.app[GATEWAY].runtime
    degraded: list[str] = []
    if rt.cfg.redis.enabled:
        up = await rt.quota.primary.ping()
        rt.metrics.redis_up.set(1 if up else 0)
        if not up:
            if rt.quota.deny_on_error:
                raise ServiceUnavailable("Redis is unreachable.", code="redis_unreachable")
            degraded.append("redis_unreachable")
    if all(b.status() == "unhealthy" for b in rt.balancers.values()):
        raise ServiceUnavailable("No pool has a healthy member.", code="no_healthy_backend")
    loaded = time.gmtime(request.app[GATEWAY].loaded_at)
    doc: dict[str, object] = {
        "status": "ready", "config_loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", loaded),
    }  # fmt: skip
    if degraded:
        doc["degraded"] = degraded
    doc.update(request.app[GATEWAY].identity.status())  # a key database down stays ready
    return _json(doc)


async def metrics(request: web.Request) -> web.Response:
    rt = request.app[GATEWAY].runtime
    return web.Response(
        body=rt.metrics.exposition(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


def _int_query(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except ValueError:
        raise InvalidRequest(f"`{name}` must be an integer.", param=name) from None
    if n < 0:
        raise InvalidRequest(f"`{name}` must not be negative.", param=name)
    return n


def _bool_query(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


async def explain(request: web.Request) -> web.Response:
    """GET /v1/spillway/explain?model=M[&prompt_tokens=N&max_tokens=N&stream=1&tools=1]:
    the route the caller's request would take, with live state. The request's own
    headers are the ones route rules see. Off (404) when server.route_headers is off."""
    rt = request.app[GATEWAY].runtime
    if not rt.route_headers:
        raise NotFound(f"Unknown path {request.path!r}.", code="unknown_url")
    rt, principal = await _principal_runtime(request)
    model = request.query.get("model")
    if not model:
        raise InvalidRequest("Query parameter `model` is required.", param="model")
    doc = await live_explain(
        rt,
        principal,
        model=model,
        prompt_tokens=_int_query(request, "prompt_tokens"),
        headers=request.headers,
        stream=_bool_query(request, "stream"),
        tools=_bool_query(request, "tools"),
        max_tokens=_int_query(request, "max_tokens"),
    )
    return _json(doc)
