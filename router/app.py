"""``create_app(config)``: routes, the middleware, cleanup_ctx. No logic."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from router import handlers, logs
from router.config import Config
from router.gateway import Gateway
from router.keys import GATEWAY
from router.metrics import Metrics
from router.middleware import UNMATCHED, answers

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


def make_runner(app: web.Application, cfg: Config) -> web.AppRunner:
    """An AppRunner with the server limits of ``cfg`` (header sizes, keep-alive)."""
    s = cfg.server
    logs.quiet_protocol_errors()  # a malformed request is a rate-limited line, no traceback
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
    app = web.Application(middlewares=[answers], client_max_size=cfg.server.max_body_bytes)
    gateway = Gateway(cfg, metrics, config_path)
    app[GATEWAY] = gateway

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await gateway.start()
        yield
        await gateway.stop()

    app.cleanup_ctx.append(lifecycle)
    add = app.router
    x = handlers.expect  # Expect: 100-continue, and no plain 417
    for name, paths in ENDPOINT_PATHS.items():
        handler = handlers.endpoint(name)
        for path in paths:
            add.add_post(path, handler, expect_handler=x)
    for name, path in DEPLOYMENT_PATHS.items():
        add.add_post(path, handlers.deployment(name), expect_handler=x)
    for path in ENDPOINT_PATHS["responses"]:
        add.add_get(path + "/{id}", handlers.get_response, expect_handler=x)
        add.add_delete(path + "/{id}", handlers.delete_response, expect_handler=x)
    for path in MODEL_PATHS:
        add.add_get(path, handlers.list_models, expect_handler=x)
        add.add_get(path + "/{model:.+}", handlers.get_model, expect_handler=x)
    add.add_get("/v1/quota", handlers.quota, expect_handler=x)
    add.add_get("/v1/spillway/explain", handlers.explain, expect_handler=x)
    add.add_get("/healthz", handlers.healthz, expect_handler=x)
    add.add_get("/readyz", handlers.readyz, expect_handler=x)
    if cfg.server.metrics_port is None:  # else on a port of its own: create_metrics_app
        add.add_get("/metrics", handlers.metrics, expect_handler=x)
    # last: any other path (404) or method (405), answered and recorded like the rest
    add.add_route("*", "/{path:.*}", handlers.unmatched, name=UNMATCHED, expect_handler=x)
    return app


def create_metrics_app(app: web.Application) -> web.Application:
    """``/metrics`` of ``app``'s gateway, for ``server.metrics_port``."""
    metrics_app = web.Application()
    metrics_app[GATEWAY] = app[GATEWAY]
    metrics_app.router.add_get("/metrics", handlers.metrics)
    return metrics_app
