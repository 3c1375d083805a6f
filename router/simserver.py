"""``spillway simulate``: the simulated model as a standalone OpenAI-compatible server.

Speaks the same wire format as vLLM: ``POST /v1/chat/completions`` (JSON or
SSE with ``data: [DONE]``; usage chunk only when asked), ``GET /v1/models``,
``GET /health`` and vLLM-style load gauges on ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import random
import time

import orjson
from aiohttp import web

from router.config import SimulateSettings
from router.contract import ChatCompletionRequest, ValidationError, error_param
from router.providers.simulate import completion_body, generate, stream_events

SETTINGS = web.AppKey("sim_settings", SimulateSettings)
STATE = web.AppKey("sim_state", dict)


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
    state["running"] += 1
    try:
        if not req.stream:
            body = completion_body(gen, req.model)
            delay = knobs.ttft_ms / 1000
            if knobs.tokens_per_second:
                delay += gen.completion_tokens / knobs.tokens_per_second
            if delay:
                await asyncio.sleep(delay)
            return web.Response(body=body, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        async for ev in stream_events(gen, req.model, req.wants_usage(), knobs):
            await resp.write(ev)
        await resp.write_eof()
        return resp
    finally:
        state["running"] -= 1


async def _models(request: web.Request) -> web.Response:
    doc = {"object": "list", "data": [
        {"id": m, "object": "model", "created": int(time.time()), "owned_by": "spillway-sim"}
        for m in request.app[STATE]["models"]
    ]}  # fmt: skip
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    lines = []
    for name, value in (("num_requests_running", state["running"]),
                        ("num_requests_waiting", 0), ("kv_cache_usage_perc", 0.0)):  # fmt: skip
        lines.append(f"# TYPE vllm:{name} gauge")
        for model in state["models"]:
            lines.append(f'vllm:{name}{{engine="0",model_name="{model}"}} {float(value)}')
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="")


def create_sim_app(knobs: SimulateSettings, models: list[str] | None = None) -> web.Application:
    app = web.Application()
    app[SETTINGS] = knobs
    app[STATE] = {"rng": random.Random(knobs.seed), "running": 0,
                  "models": models or ["spillway-sim-1"]}  # fmt: skip
    for path in ("/v1/chat/completions", "/chat/completions", "/openai/v1/chat/completions"):
        app.router.add_post(path, _chat)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    return app
