"""OpenTelemetry traces: a server span per request, a client span per upstream attempt.

Imported only when ``tracing.otlp_endpoint`` is set (needs ``spillway[otel]``);
with tracing off the request path holds ``None`` and checks it, nothing more.
Spans follow OpenTelemetry's GenAI semantic conventions (``gen_ai.*``) plus the
gateway's own ``spillway.*`` attributes (team, key id, route, pool, backend,
attempt, quota outcome); ids and names only. Prompts and completions are
recorded (``gen_ai.input.messages``, ``gen_ai.output.messages``) only with
``capture_content``. An incoming ``traceparent`` continues its trace; each
attempt sends its own span's ``traceparent`` upstream. Spans are exported in
batches by the SDK's background thread over OTLP/HTTP (protobuf).
"""

from __future__ import annotations

import contextlib
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from router import __version__
from router.config import TracingSettings
from router.contract import ChatCompletionRequest
from router.errors import QuotaExceeded, RateLimited, SpillwayError

if TYPE_CHECKING:
    from aiohttp import web

    from router.exchange import Exchange
    from router.routing.balance import Member

# gen_ai.provider.name per backend provider (OpenTelemetry's well-known values)
PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "azure": "azure.ai.openai",
                  "simulate": "spillway.simulate"}  # fmt: skip
# the client endpoint -> GenAI semantic conventions' gen_ai.operation.name
OPERATION_NAMES = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}
_PARAMETERS = (
    ("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"), ("seed", "gen_ai.request.seed"),
    ("n", "gen_ai.request.choice.count"),
)  # fmt: skip


def traces_url(endpoint: str) -> str:
    """An OTLP/HTTP base URL gets the traces path; a full URL is kept."""
    if urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


class Tracing:
    """The tracer provider of the process (built at start, flushed at stop)."""

    def __init__(self, settings: TracingSettings) -> None:
        self.capture_content = settings.capture_content
        self.provider = TracerProvider(
            resource=Resource.create(
                {"service.name": settings.service_name, "service.version": __version__}
            ),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        exporter = OTLPSpanExporter(
            endpoint=traces_url(settings.otlp_endpoint), headers=dict(settings.headers)
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(
                exporter, schedule_delay_millis=int(settings.export_interval_seconds * 1000)
            )
        )
        self.tracer = self.provider.get_tracer("spillway", __version__)
        self.propagator = TraceContextTextMapPropagator()

    def start_request(self, request: web.Request) -> Span:
        parent = self.propagator.extract(request.headers)
        return self.tracer.start_span(
            f"{request.method} {request.path}", context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.path,
                        "gen_ai.operation.name": "chat"},
        )  # fmt: skip

    def end_request(
        self, span: Span, x: Exchange, error: BaseException | None, answer: Any
    ) -> None:
        attrs: dict[str, Any] = {
            "http.response.status_code": x.status,
            "spillway.request_id": x.rid,
        }
        if x.client_rid is not None:
            attrs["spillway.client_request_id"] = x.client_rid
        if x.principal is not None:
            attrs["spillway.team"] = x.principal.team
            attrs["spillway.key_id"] = x.principal.key_id
        call = x.call
        req = call.request if call is not None else None
        if call is not None:
            operation = OPERATION_NAMES.get(x.endpoint, x.endpoint)
            attrs["gen_ai.operation.name"] = operation
            attrs["spillway.endpoint"] = x.endpoint
            attrs["gen_ai.request.model"] = call.model
            span.update_name(f"{operation} {call.model}")
            if call.max_output is not None:
                attrs["gen_ai.request.max_tokens"] = call.max_output
            for name, attribute in _PARAMETERS:
                value = getattr(req, name, None)
                if value is not None:
                    attrs[attribute] = value
            stop = getattr(req, "stop", None)
            if stop is not None:
                attrs["gen_ai.request.stop_sequences"] = (
                    [stop] if isinstance(stop, str) else list(stop)
                )
            attrs["spillway.stream"] = call.stream
        if x.decision is not None:
            attrs["spillway.route"] = x.decision.route_name
        if x.pool:
            attrs["spillway.pool"] = x.pool
            attrs["spillway.backend"] = x.backend
            attrs["spillway.quota.outcome"] = "admitted"
        if isinstance(error, RateLimited):
            attrs["spillway.quota.outcome"] = "rate_limited"
        elif isinstance(error, QuotaExceeded):
            attrs["spillway.quota.outcome"] = "budget_exhausted"
        self._usage(attrs, x)
        if self.capture_content and isinstance(req, ChatCompletionRequest):
            self._content(attrs, req, answer)
        span.set_attributes(attrs)
        self._status(span, error, x.status)
        span.end()

    def start_attempt(
        self, parent: Span, member: Member, provider: str, attempt: int,
        headers: MutableMapping[str, str], endpoint: str = "chat",
    ) -> Span:  # fmt: skip
        """The attempt's span; its ``traceparent`` goes into ``headers`` (sent upstream)."""
        operation = OPERATION_NAMES.get(endpoint, endpoint)
        span = self.tracer.start_span(
            f"{operation} {member.model}", context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": PROVIDER_NAMES.get(provider, provider),
                "gen_ai.request.model": member.model, "spillway.pool": member.pool,
                "spillway.backend": member.backend, "spillway.attempt": attempt,
            },
        )  # fmt: skip
        self.propagator.inject(headers, context=trace.set_span_in_context(span))
        return span

    def end_attempt(
        self, span: Span, x: Exchange, member: Member, error: BaseException | None
    ) -> None:
        attrs: dict[str, Any] = {}
        if error is None:
            attrs["spillway.outcome"] = "error" if x.status >= 400 else "ok"
            attrs["gen_ai.response.model"] = member.model  # the model the member served
            self._usage(attrs, x)
        elif isinstance(error, SpillwayError):
            attrs["spillway.outcome"] = "error"
            attrs["error.type"] = type(error).__name__
        else:
            attrs["spillway.outcome"] = "cancelled"
        span.set_attributes(attrs)
        self._status(span, error, x.status if error is None else 0)
        span.end()

    @staticmethod
    def _usage(attrs: dict[str, Any], x: Exchange) -> None:
        usage = x.usage
        if usage is not None and usage.reported:
            attrs["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attrs["gen_ai.usage.output_tokens"] = usage.completion_tokens

    @staticmethod
    def _status(span: Span, error: BaseException | None, status: int) -> None:
        if isinstance(error, SpillwayError):
            span.set_attribute("error.type", error.code or type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, error.message))
        elif error is not None:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        elif status >= 500:
            span.set_status(Status(StatusCode.ERROR))

    @staticmethod
    def _content(attrs: dict[str, Any], req: ChatCompletionRequest, answer: Any) -> None:
        """Prompts and (non-streamed) completions, as JSON text."""
        unreadable = (orjson.JSONDecodeError, KeyError, TypeError, AttributeError)
        prompt = req.model_dump(mode="json", include={"messages"}, exclude_none=True)
        attrs["gen_ai.input.messages"] = orjson.dumps(prompt["messages"]).decode()
        body = getattr(answer, "body", None)
        if isinstance(body, bytes):
            with contextlib.suppress(*unreadable):
                choices = orjson.loads(body)["choices"]
                answers = [c.get("message") for c in choices]
                attrs["gen_ai.output.messages"] = orjson.dumps(answers).decode()

    def shutdown(self) -> None:
        """Export what is queued, then stop (blocking: call it off the event loop)."""
        self.provider.shutdown()
