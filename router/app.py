"""``create_app(config)``: routes, the error middleware, cleanup_ctx. No logic."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from router import handlers
from router.config import Config
from router.errors import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    SpillwayError,
)
from router.gateway import Gateway
from router.keys import GATEWAY
from router.metrics import Metrics

log = logging.getLogger("spillway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# each client API's paths (the bare and poolside's /openai/v1 forms too), by codec
ENDPOINT_PATHS = {
    "chat": ("/v1/chat/completions", "/chat/completions", "/openai/v1/chat/completions"),
    "completions": ("/v1/completions", "/completions", "/openai/v1/completions"),
    "embeddings": ("/v1/embeddings", "/embeddings", "/openai/v1/embeddings"),
    "messages": ("/v1/messages", "/messages"),
    "count_tokens": ("/v1/messages/count_tokens", "/messages/count_tokens"),
    "responses": ("/v1/responses", "/responses", "/openai/v1/responses"),
}
# Azure OpenAI's data-plane paths, as the AzureOpenAI client builds them
DEPLOYMENT_PATHS = {
    "chat": "/openai/deployments/{deployment}/chat/completions",
    "completions": "/openai/deployments/{deployment}/completions",
    "embeddings": "/openai/deployments/{deployment}/embeddings",
}
MODEL_PATHS = ("/v1/models", "/models", "/openai/v1/models")


def error_response(exc: SpillwayError) -> web.Response:
    return web.Response(
        body=exc.body(), status=exc.status, headers=exc.headers, content_type="application/json"
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as OpenAI's envelope; a bug leaves as a plain 500."""
    try:
        return await handler(request)
    except SpillwayError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status == 404:
            err: SpillwayError = NotFound(
                f"Unknown path {request.path!r}.", code="unknown_url", type="invalid_request_error"
            )
        elif exc.status == 405:
            err = MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}.")
            if exc.headers.get("Allow"):
                err.headers["Allow"] = exc.headers["Allow"]
        elif exc.status == 413:
            err = PayloadTooLarge("The request body is over the size limit.")
        elif exc.status < 400:
            raise
        else:
            err = SpillwayError(exc.reason, code=None, type="invalid_request_error")
            err.status = exc.status
        return error_response(err)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(SpillwayError("The gateway failed to handle the request."))


def make_runner(app: web.Application, cfg: Config) -> web.AppRunner:
    """An AppRunner with the server limits of ``cfg`` (header sizes, keep-alive)."""
    s = cfg.server
    return web.AppRunner(
        app,
        access_log=None,
        auto_decompress=False,  # request bodies are decoded, within limits, by the proxy
        handler_cancellation=True,  # a client that disconnects cancels its upstream call
        keepalive_timeout=s.keepalive_timeout_seconds,  # also cuts off trickled headers
        max_line_size=s.max_header_bytes,
        max_field_size=s.max_header_bytes,
        max_headers=s.max_headers,
        shutdown_timeout=s.shutdown_grace_seconds,
    )


def create_app(
    cfg: Config, *, metrics: Metrics | None = None, config_path: str | None = None
) -> web.Application:
    """``config_path``: the file ``cfg`` came from, reloaded on SIGHUP and when it changes."""
    app = web.Application(
        middlewares=[errors_middleware], client_max_size=cfg.server.max_body_bytes
    )
    gateway = Gateway(cfg, metrics, config_path)
    app[GATEWAY] = gateway

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await gateway.start()
        yield
        await gateway.stop()

    app.cleanup_ctx.append(lifecycle)
    for name, paths in ENDPOINT_PATHS.items():
        handler = handlers.endpoint(name)
        for path in paths:
            app.router.add_post(path, handler)
    for name, path in DEPLOYMENT_PATHS.items():
        app.router.add_post(path, handlers.deployment(name))
    for path in ENDPOINT_PATHS["responses"]:
        app.router.add_get(path + "/{id}", handlers.get_response)
        app.router.add_delete(path + "/{id}", handlers.delete_response)
    for path in MODEL_PATHS:
        app.router.add_get(path, handlers.list_models)
        app.router.add_get(path + "/{model:.+}", handlers.get_model)
    app.router.add_get("/v1/quota", handlers.quota)
    app.router.add_get("/v1/spillway/explain", handlers.explain)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    return app
