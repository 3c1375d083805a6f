"""OpenTelemetry traces received by an OTLP/HTTP receiver that decodes the protobuf
(``opentelemetry-proto``): the span tree, the GenAI attributes, no content by
default, the client's ``traceparent`` continued and a child's sent upstream."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support.fakes import Behaviour, FakeOpenAI, FakeServer
from tests.support.gateway import Running, start_gateway
from tests.support.net import eventually
from tests.support.raw_client import raw_request

KEY = "sk-test-tracing-0001"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class OtlpReceiver(FakeServer):
    """``POST /v1/traces``: ExportTraceServiceRequest in protobuf, spans kept."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.content_types: set[str] = set()
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        super().__init__(app)

    async def _export(self, request: web.Request) -> web.Response:
        self.content_types.add(request.content_type)
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")  # fmt: skip


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind)


def attrs(span: Span) -> dict[str, Any]:
    return {a.key: value(a.value) for a in span.attributes}


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    server = await OtlpReceiver().start()
    yield server
    await server.stop()


async def gateway(upstream: FakeOpenAI, receiver: OtlpReceiver, **tracing: Any) -> Running:
    return await start_gateway({
        "backends": {"a": {"provider": "openai", "url": upstream.url},
                     "b": {"provider": "openai", "url": upstream.url}},
        "pools": {"gpu": {"members": [{"backend": "a", "model": "llama-a"},
                                      {"backend": "b", "model": "llama-b"}],
                          "strategy": "round_robin"}},
        "models": {"chat": {"routes": [{"name": "default", "pools": ["gpu"]}]}},
        "teams": {"t": {}},
        "keys": [{"id": "ci", "team": "t", "key": KEY}],
        "routing": {"retries": {"backoff_base_seconds": 0}},
        "tracing": {"otlp_endpoint": receiver.base, "export_interval_seconds": 0.05, **tracing},
    })  # fmt: skip


async def spans_of(receiver: OtlpReceiver, n: int) -> list[Span]:
    async def arrived() -> bool:
        return len(receiver.spans) >= n

    await eventually(arrived, within=10.0)
    return list(receiver.spans)


async def test_span_tree_attributes_and_propagation(
    upstream: FakeOpenAI, receiver: OtlpReceiver
) -> None:
    upstream.behaviour = Behaviour(status=503, fail_times=1)  # the first attempt fails
    gw = await gateway(upstream, receiver)
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            await c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "a secret prompt"}],
                max_tokens=7, temperature=0.5,
                extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
            )  # fmt: skip
        spans = await spans_of(receiver, 3)
    finally:
        await gw.stop()
    assert receiver.content_types == {"application/x-protobuf"}
    server = next(s for s in spans if s.kind == Span.SPAN_KIND_SERVER)
    clients = sorted((s for s in spans if s.kind == Span.SPAN_KIND_CLIENT),
                     key=lambda s: attrs(s)["spillway.attempt"])  # fmt: skip
    assert len(spans) == 3 and len(clients) == 2
    # the client's trace continues; the attempts are children of the request's span
    assert server.trace_id.hex() == CLIENT_TRACE and server.parent_span_id.hex() == CLIENT_SPAN
    for client in clients:
        assert client.trace_id == server.trace_id and client.parent_span_id == server.span_id
    a = attrs(server)
    assert server.name == "chat chat"
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "chat"
    assert a["gen_ai.request.max_tokens"] == 7 and a["gen_ai.request.temperature"] == 0.5
    assert a["spillway.team"] == "t" and a["spillway.key_id"] == "ci"
    assert a["spillway.route"] == "default" and a["spillway.quota.outcome"] == "admitted"
    assert a["http.response.status_code"] == 200
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    first, second = (attrs(c) for c in clients)
    assert [first["spillway.attempt"], second["spillway.attempt"]] == [1, 2]
    assert first["spillway.outcome"] == "error" and clients[0].status.code == 2  # ERROR
    assert second["spillway.outcome"] == "ok"
    assert first["spillway.backend"] != second["spillway.backend"]
    assert second["gen_ai.provider.name"] == "openai" and second["spillway.pool"] == "gpu"
    assert second["gen_ai.response.model"] == second["gen_ai.request.model"]
    assert second["gen_ai.usage.output_tokens"] == a["gen_ai.usage.output_tokens"]
    # no content by default
    everything = str([attrs(s) for s in spans])
    assert "a secret prompt" not in everything and "gen_ai.input.messages" not in everything
    # each attempt sent its own span upstream as the parent
    sent = [seen.headers["traceparent"] for seen in upstream.seen]
    assert [t.split("-")[1] for t in sent] == [CLIENT_TRACE, CLIENT_TRACE]
    assert [t.split("-")[2] for t in sent] == [c.span_id.hex() for c in clients]


async def test_streams_and_content_when_asked(upstream: FakeOpenAI, receiver: OtlpReceiver) -> None:
    gw = await gateway(upstream, receiver, capture_content=True)
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            stream = await c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "count please"}],
                max_tokens=5, stream=True,
            )  # fmt: skip
            async for _ in stream:
                pass
            await c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "say it"}], max_tokens=5
            )
        spans = await spans_of(receiver, 4)
    finally:
        await gw.stop()
    servers = [attrs(s) for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    streamed = next(s for s in servers if s["spillway.stream"])
    plain = next(s for s in servers if not s["spillway.stream"])
    assert "count please" in streamed["gen_ai.input.messages"]
    assert streamed["gen_ai.usage.output_tokens"] > 0  # the span ended after the stream
    assert "say it" in plain["gen_ai.input.messages"]
    assert "assistant" in plain["gen_ai.output.messages"]
    # a new trace when the client sent none
    assert len({s.trace_id for s in spans}) == 2


async def test_refused_requests_are_traced_with_their_outcome(
    upstream: FakeOpenAI, receiver: OtlpReceiver
) -> None:
    gw = await gateway(upstream, receiver, sample_ratio=1.0)
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-wrong-key",
                                      max_retries=0) as c:  # fmt: skip
            with pytest.raises(openai.AuthenticationError):
                await c.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "x"}]
                )
        spans = await spans_of(receiver, 1)
    finally:
        await gw.stop()
    a = attrs(spans[0])
    assert a["http.response.status_code"] == 401 and a["error.type"] == "invalid_api_key"
    assert spans[0].status.code == 2 and "spillway.quota.outcome" not in a


async def test_sampled_out_traces_are_not_exported_but_still_propagated(
    upstream: FakeOpenAI, receiver: OtlpReceiver
) -> None:
    gw = await gateway(upstream, receiver, sample_ratio=0.0)
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            for _ in range(3):
                await c.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "x"}], max_tokens=2
                )
    finally:
        await gw.stop()  # flushes whatever was queued
    assert receiver.spans == []
    flags = [int(seen.headers["traceparent"].split("-")[3], 16) for seen in upstream.seen]
    assert len(flags) == 3 and all(f & 1 == 0 for f in flags)  # propagated, not sampled


def test_tracing_off_imports_no_opentelemetry() -> None:
    code = (
        "import sys, asyncio\n"
        "from tests.support.gateway import start_gateway\n"
        "async def main():\n"
        "    gw = await start_gateway({'backends': {'s': {'provider': 'simulate'}},\n"
        "        'pools': {'p': {'members': [{'backend': 's', 'model': 'm'}]}},\n"
        "        'models': {'chat': {'routes': [{'pools': ['p']}]}}})\n"
        "    assert gw.gateway.runtime.tracing is None\n"
        "    await gw.stop()\n"
        "asyncio.run(main())\n"
        # (redis-py imports parts of opentelemetry itself when it is installed)
        "assert not [m for m in sys.modules if m.startswith('opentelemetry.exporter')]\n"
        "assert 'router.tracing' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False, cwd=Path(__file__).parents[2])  # fmt: skip
    assert out.returncode == 0, out.stderr


async def test_completions_and_embeddings_attempts_send_their_span_upstream(
    upstream: FakeOpenAI, receiver: OtlpReceiver
) -> None:
    gw = await start_gateway({
        "backends": {"a": {"provider": "openai", "url": upstream.url}},
        "pools": {"gpu": {"members": [{"backend": "a", "model": "llama-a"}]},
                  "vectors": {"members": [{"backend": "a", "model": "bge"}]}},
        "models": {"chat": {"routes": [{"pools": ["gpu"]}]},
                   "embed": {"kind": "embeddings", "routes": [{"pools": ["vectors"]}]}},
        "teams": {"t": {}},
        "keys": [{"id": "ci", "team": "t", "key": KEY}],
        "tracing": {"otlp_endpoint": receiver.base, "export_interval_seconds": 0.05},
    })  # fmt: skip
    parent = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            await c.completions.create(model="chat", prompt="x", max_tokens=2,
                                       extra_headers=parent)  # fmt: skip
            await c.embeddings.create(model="embed", input="x", extra_headers=parent)
        spans = await spans_of(receiver, 4)
    finally:
        await gw.stop()
    clients = {s.span_id.hex(): s for s in spans if s.kind == Span.SPAN_KIND_CLIENT}
    assert [seen.path for seen in upstream.seen] == ["/v1/completions", "/v1/embeddings"]
    for seen in upstream.seen:
        _, trace, span, _ = seen.headers["traceparent"].split("-")
        assert trace == CLIENT_TRACE and span in clients


async def test_a_malformed_trace_context_starts_a_new_trace(
    upstream: FakeOpenAI, receiver: OtlpReceiver
) -> None:
    """A ``traceparent`` that is not Latin-1 (or not W3C's shape) and a ``tracestate``
    or ``baggage`` with such bytes are not continued nor forwarded: the request is
    served, its span starts a trace of its own, and the backend gets the gateway's
    well-formed ``traceparent`` only."""
    gw = await gateway(upstream, receiver)
    port = int(gw.url.rsplit(":", 1)[1])
    body = b'{"model":"chat","messages":[{"role":"user","content":"hi"}],"max_tokens":3}'
    try:
        for garbage in ([(b"traceparent", b"00-\xe2\x82\xac-\xff-01")],
                        [(b"traceparent", b"00-" + CLIENT_TRACE.encode() + b"-zz-01"),
                         (b"tracestate", b"a=\xff\xfe"), (b"baggage", b"k=\x80")]):  # fmt: skip
            reply = await raw_request(port, b"POST", b"/v1/chat/completions",
                                      [(b"Authorization", b"Bearer " + KEY.encode()),
                                       *garbage], body)  # fmt: skip
            assert reply.status == 200, reply.body
        spans = await spans_of(receiver, 4)
    finally:
        await gw.stop()
    servers = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    assert len(servers) == 2
    assert all(s.trace_id.hex() != CLIENT_TRACE and not s.parent_span_id for s in servers)
    for seen in upstream.seen:
        sent = seen.headers["traceparent"]
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", sent)
        assert "baggage" not in seen.headers
        assert "\xff" not in seen.headers.get("tracestate", "")
