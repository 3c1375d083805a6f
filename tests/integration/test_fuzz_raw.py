"""Raw request mutations against a real ``spillway serve``: never a 5xx, never a traceback.

Hypothesis builds requests byte by byte and sends them over raw sockets: any
method token, paths with escapes and bytes that are not UTF-8, headers of any
name with values of any bytes (credentials, trace context, request ids,
affinity and priority headers), bodies that are JSON or not, and mutations of a
valid request's bytes (cut, spliced, duplicated lines, bare LFs). Whatever the
gateway answers must be below 500, and its log must hold no traceback and no
error line. Bounded: a fixed number of examples, derandomized, with no deadline.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.gateway import GatewayProcess

KEY = "sk-fuzz-000000000001"
CONFIG: dict[str, Any] = {
    "listen": {"host": "127.0.0.1", "port": 0},
    "backends": {"sim": {"provider": "simulate"}},
    "pools": {
        "sim-pool": {
            "members": [{"backend": "sim", "model": "sim-1"}],
            "max_output_tokens": 16,
            "affinity": "header",
        },
        "sim-embed": {"members": [{"backend": "sim", "model": "sim-embed"}]},
    },
    "models": {
        "demo": {"routes": [{"pools": ["sim-pool"]}]},
        "demo-embed": {"kind": "embeddings", "routes": [{"pools": ["sim-embed"]}]},
    },
    "teams": {"demo": {"limits": {"requests_per_minute": 100000}}},
    "keys": [{"id": "fuzz", "team": "demo", "key": KEY}],
    "logging": {"requests": True, "level": "INFO"},
    "server": {"keepalive_timeout_seconds": 5, "body_timeout_seconds": 2},
}
PATHS = [
    b"/v1/chat/completions", b"/chat/completions", b"/openai/v1/chat/completions",
    b"/v1/completions", b"/v1/embeddings", b"/v1/models", b"/v1/models/demo", b"/v1/quota",
    b"/v1/spillway/explain?model=demo", b"/healthz", b"/readyz", b"/metrics",
    b"/openai/deployments/demo/chat/completions?api-version=2024-10-21",
    b"/v1/messages", b"/v1/messages/count_tokens", b"/v1/responses", b"/v1/responses/resp_1",
]  # fmt: skip
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"PROPFIND"]
HEADER_NAMES = [
    b"Authorization", b"api-key", b"traceparent", b"tracestate", b"baggage", b"x-request-id",
    b"x-session-id", b"x-spillway-priority", b"Content-Type", b"Accept", b"User-Agent",
    b"Expect", b"Connection", b"Host", b"Cookie", b"Origin", b"X-Forwarded-For", b"x-api-key",
    b"anthropic-version", b"anthropic-beta",
]  # fmt: skip
TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY = orjson.dumps({"model": "demo", "max_tokens": 4,
                     "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip

# header value bytes: visible ASCII, spaces and bytes that are not ASCII (so not UTF-8
# either, mostly); control bytes, which the HTTP parser refuses, are the mutations' job
value_bytes = st.lists(st.one_of(st.integers(0x20, 0x7E), st.integers(0x80, 0xFF)),
                       max_size=80).map(bytes)  # fmt: skip
trace_like = st.builds(
    lambda v, t, p, f: b"-".join((v, t, p, f)),
    st.sampled_from([b"00", b"ff", b"01", b"zz", b"\xff\xfe"]),
    st.one_of(st.just(b"0af7651916cd43dd8448eb211c80319c"), value_bytes),
    st.one_of(st.just(b"b7ad6b7169203331"), value_bytes),
    st.sampled_from([b"01", b"00", b"\x80"]),
)
header = st.tuples(
    st.one_of(st.sampled_from(HEADER_NAMES), st.binary(min_size=1, max_size=12).map(
        lambda b: bytes(TCHAR[c % len(TCHAR)] for c in b))),
    st.one_of(value_bytes, trace_like,
              st.just(b"Bearer " + KEY.encode()), value_bytes.map(lambda v: b"Bearer " + v)),
)  # fmt: skip
VISIBLE = bytes(range(0x21, 0x7F)).replace(b"#", b"")
visible = st.binary(max_size=40).map(lambda b: bytes(VISIBLE[c % len(VISIBLE)] for c in b))
escapes = st.lists(st.integers(0, 255), max_size=6).map(
    lambda cs: b"".join(b"%%%02X" % c for c in cs)
)
path = st.one_of(
    st.sampled_from(PATHS),
    st.sampled_from(PATHS),
    st.builds(lambda a, b: b"/" + a + b, visible, escapes),
    st.builds(lambda p, q: p + (b"&" if b"?" in p else b"?") + q, st.sampled_from(PATHS),
              st.one_of(visible, escapes)),
    st.binary(max_size=20).map(lambda b: b"/" + b.translate(None, b" \r\n\x00")),
)  # fmt: skip
method = st.one_of(
    st.sampled_from(METHODS),
    st.sampled_from(METHODS),
    st.sampled_from(METHODS),
    st.binary(min_size=1, max_size=8).map(lambda b: bytes(TCHAR[c % len(TCHAR)] for c in b)),
)
body = st.one_of(st.just(BODY), st.just(b""), st.binary(max_size=200))


def build(m: bytes, p: bytes, headers: list[tuple[bytes, bytes]], b: bytes, auth: bool) -> bytes:
    lines = [m + b" " + p + b" HTTP/1.1", b"Host: gateway"]
    if auth:
        lines.append(b"Authorization: Bearer " + KEY.encode())
    lines += [n + b": " + v for n, v in headers]
    lines += [b"Content-Length: %d" % len(b), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + b


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    data = build(draw(method), draw(path), draw(st.lists(header, max_size=6)), draw(body),
                 draw(st.booleans()))  # fmt: skip
    mutation = draw(st.sampled_from(["none"] * 5 + ["cut", "splice", "dup", "lf", "flip"]))
    if mutation == "none":
        return data
    at = draw(st.integers(0, len(data)))
    if mutation == "cut":
        return data[:at]
    if mutation == "splice":
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    if mutation == "dup":
        lines = data.split(b"\r\n")
        i = draw(st.integers(0, len(lines) - 1))
        return b"\r\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])
    if mutation == "lf":
        return data.replace(b"\r\n", b"\n")
    i = min(at, len(data) - 1)
    return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :]


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayProcess]:
    gw = GatewayProcess(CONFIG)
    yield gw
    gw.stop()


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and read the answer until the server closes. The sending side is
    closed once the answer began, or after a moment without one (a request left
    incomplete): the server then sees the end of the connection instead of waiting
    for more (a half-close is a client gone)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        out = b""
        try:
            sock.sendall(data)
            sock.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                out = sock.recv(65536)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            while chunk := sock.recv(65536):
                out += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server refused and closed
        return out


STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3}) ", re.M)


@settings(
    max_examples=150, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
@given(data=requests())
def test_no_raw_request_is_a_5xx_or_a_traceback(gateway: GatewayProcess, data: bytes) -> None:
    answer = exchange(gateway.port, data)
    statuses = [int(s) for s in STATUS.findall(answer[:4096])]
    assert all(s < 500 for s in statuses), (data, answer[:600])
    log = gateway.log()
    assert "Traceback" not in log, (data, log[-3000:])
    assert '"level":"error"' not in log, (data, log[-3000:])


def test_the_fuzzed_gateway_still_serves(gateway: GatewayProcess) -> None:
    answer = exchange(gateway.port, build(b"POST", b"/v1/chat/completions", [], BODY, True))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    statuses = [orjson.loads(line)["status"] for line in gateway.log().splitlines()
                if '"logger":"spillway.access"' in line]  # fmt: skip
    assert statuses and all(s < 500 for s in statuses)
