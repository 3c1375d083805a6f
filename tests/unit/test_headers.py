"""Client headers passed on upstream only when well-formed (router.headers)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from router.headers import forwarded, passed_on, well_formed

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("name", "value", "ok"),
    [
        ("traceparent", PARENT, True),
        ("traceparent", "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", True),
        ("traceparent", "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", False),
        ("traceparent", "00-" + "0" * 32 + "-b7ad6b7169203331-01", False),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01", False),
        ("traceparent", "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", False),
        ("traceparent", "00-abc-def-01", False),
        ("traceparent", "00-\u20ac", False),  # not Latin-1
        ("traceparent", "00-\udcff\udcfe", False),  # bytes that were not UTF-8
        ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", True),
        ("tracestate", "a=" + "b" * 600, False),
        ("tracestate", "a=\x01", False),
        ("baggage", "userId=alice,serverNode=DF%2028", True),
        ("baggage", "k=\udc80", False),
    ],
)
def test_trace_headers(name: str, value: str, ok: bool) -> None:
    assert well_formed(name, value) is ok


def test_forwarded_keeps_the_well_formed_and_the_request_id() -> None:
    headers = CIMultiDict({"traceparent": PARENT, "tracestate": "a=\udcff", "baggage": "k=v",
                           "Authorization": "Bearer sk-client"})  # fmt: skip
    assert forwarded(headers, "req_1") == {"X-Request-Id": "req_1", "traceparent": PARENT,
                                           "baggage": "k=v"}  # fmt: skip


def test_a_client_apis_own_headers_pass_as_printable_ascii() -> None:
    names = ("anthropic-version", "anthropic-beta")
    ok = CIMultiDict({"anthropic-version": "2023-06-01",
                      "anthropic-beta": "prompt-caching-2024-07-31,tools-2024-04-04"})  # fmt: skip
    assert passed_on(ok, names) == dict(ok)
    bad = CIMultiDict({"anthropic-version": "2023-\udcff", "anthropic-beta": "x" * 2000})
    assert passed_on(bad, names) == {}
