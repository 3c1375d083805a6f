"""Thin aiohttp handlers: read the request, call the right object, answer."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from router.errors import ServiceUnavailable
from router.keys import GATEWAY
from router.runtime import Runtime


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].proxy.chat(request)


def _principal_runtime(request: web.Request) -> tuple[Runtime, str, str]:
    rt = request.app[GATEWAY].runtime
    h = request.headers
    p = rt.auth.authenticate(h.get("Authorization"), h.get("api-key"))
    return rt, p.key_id, p.team


async def list_models(request: web.Request) -> web.Response:
    rt, _, team = _principal_runtime(request)
    created = int(request.app[GATEWAY].started)
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "spillway"}
        for name in rt.rules.visible_models(team)
    ]
    return _json({"object": "list", "data": data})


async def quota(request: web.Request) -> web.Response:
    rt, key_id, team = _principal_runtime(request)
    doc = await rt.quota.status(key_id)
    doc["key_id"], doc["team"] = key_id, team
    return _json(doc)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[GATEWAY].draining.is_set():
        raise ServiceUnavailable("Shutting down.", code="draining")
    rt = request.app[GATEWAY].runtime
    store = rt.quota.primary
    if rt.cfg.redis.url and not await store.ping():
        raise ServiceUnavailable("Redis is unreachable.", code="redis_unreachable")
    if all(b.status() == "unhealthy" for b in rt.balancers.values()):
        raise ServiceUnavailable("No pool has a healthy member.", code="no_healthy_backend")
    loaded = time.gmtime(request.app[GATEWAY].loaded_at)
    return _json(
        {"status": "ready", "config_loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", loaded)}
    )


async def metrics(request: web.Request) -> web.Response:
    rt = request.app[GATEWAY].runtime
    return web.Response(
        body=rt.metrics.exposition(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )
