"""``spillway simulate``: the simulated model as a standalone OpenAI-compatible server.

Speaks the same wire format as vLLM: ``POST /v1/chat/completions`` (JSON or
SSE with ``data: [DONE]``; usage chunk only when asked), ``GET /v1/models``,
``GET /health`` and on ``GET /metrics`` vLLM's load gauges (running and
waiting requests, KV-cache usage: here the prefix cache's fill) and prefix
cache counters (``vllm:prefix_cache_queries_total`` / ``_hits_total``, in
tokens) from the server's :class:`~router.providers.simengine.SimEngine`.
"""

from __future__ import annotations

import random
import time

import orjson
from aiohttp import web

from router.config import SimulateSettings
from router.contract import ChatCompletionRequest, ValidationError, error_param
from router.providers.simengine import SimEngine, prompt_tokens
from router.providers.simulate import (
    completion_body,
    engine_read,
    engine_stream,
    generate,
    stream_events,
)

SETTINGS = web.AppKey("sim_settings", SimulateSettings)
STATE = web.AppKey("sim_state", dict)
ENGINE = web.AppKey("sim_engine", SimEngine)


def _error(status: int, message: str, etype: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": etype, "param": param, "code": None}}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def _chat(request: web.Request) -> web.StreamResponse:
    knobs = request.app[SETTINGS]
    state = request.app[STATE]
    raw = await request.read()
    try:
        req = ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as exc:
        param, message = error_param(exc)
        return _error(400, message, "invalid_request_error", param)
    rng: random.Random = state["rng"]
    if knobs.failure_rate and rng.random() < knobs.failure_rate:
        return _error(knobs.failure_status, "Simulated failure.", "api_error")
    gen = generate(req)
    engine = request.app[ENGINE]

    def prompts() -> list[list[str]]:
        return [prompt_tokens(req)]

    if not req.stream:
        await engine_read(engine, prompts, gen)
        return web.Response(body=completion_body(gen, req.model), content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    usage = req.wants_usage()
    events = engine_stream(
        engine, prompts, lambda ttft: stream_events(gen, req.model, usage, knobs, ttft)
    )
    async for ev in events:
        await resp.write(ev)
    await resp.write_eof()
    return resp


async def _models(request: web.Request) -> web.Response:
    doc = {"object": "list", "data": [
        {"id": m, "object": "model", "created": int(time.time()), "owned_by": "spillway-sim"}
        for m in request.app[STATE]["models"]
    ]}  # fmt: skip
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    engine = request.app[ENGINE]
    cache = engine.cache
    lines = []
    for name, kind, value in (
        ("num_requests_running", "gauge", engine.running),
        ("num_requests_waiting", "gauge", engine.waiting),
        ("kv_cache_usage_perc", "gauge", engine.usage()),
        ("prefix_cache_queries", "counter", cache.queries if cache else 0),
        ("prefix_cache_hits", "counter", cache.hits if cache else 0),
    ):
        lines.append(f"# TYPE vllm:{name} {kind}")
        sample = f"vllm:{name}_total" if kind == "counter" else f"vllm:{name}"
        for i, model in enumerate(state["models"]):
            # the server's totals once (the gateway adds series up); the usage on each
            share = value if i == 0 or name == "kv_cache_usage_perc" else 0
            lines.append(f'{sample}{{engine="0",model_name="{model}"}} {float(share)}')
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="")


def create_sim_app(knobs: SimulateSettings, models: list[str] | None = None) -> web.Application:
    app = web.Application()
    app[SETTINGS] = knobs
    app[STATE] = {"rng": random.Random(knobs.seed), "models": models or ["spillway-sim-1"]}
    app[ENGINE] = SimEngine(knobs)
    for path in ("/v1/chat/completions", "/chat/completions", "/openai/v1/chat/completions"):
        app.router.add_post(path, _chat)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    return app
