"""A client sending malformed HTTP cannot flood the logs.

aiohttp logs every request it cannot parse at ERROR with a traceback of about
2 KB. The gateway turns each into one WARNING line with the peer and the
reason, rate-limited, and says how many it suppressed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from router import logs
from tests.support.fakes import FakeOpenAI
from tests.support.fleet import fleet_config, members
from tests.support.gateway import Running, start_gateway
from tests.support.raw_client import parse_reply, port_of, send_raw

BURST = 10  # lines before the rate limit (router.logs.ProtocolErrors)
MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"BREW /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/\xc3\x28 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Content-Length: 7\r\n\r\nhello",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
]


@pytest.fixture
async def gw(upstream: FakeOpenAI) -> AsyncIterator[Running]:
    bucket = getattr(logs, "PROTOCOL_ERRORS", None)
    if bucket is not None:  # a full bucket, whatever earlier tests sent
        bucket.tokens, bucket.suppressed = bucket.burst, 0
    running = await start_gateway(fleet_config(
        {"up": {"provider": "openai", "url": upstream.url}}, {"p": {"members": members("up")}}
    ))  # fmt: skip
    yield running
    await running.stop()


async def test_200_malformed_requests_make_a_few_warning_lines(
    gw: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    port = port_of(gw.url)
    statuses = []
    for i in range(200):
        data = await send_raw(port, MALFORMED[i % len(MALFORMED)])
        statuses.append(parse_reply(data).status if data.startswith(b"HTTP/") else 0)
    assert set(statuses) <= {400, 0}, set(statuses)
    assert 400 in statuses
    records = [r for r in caplog.records if r.name.startswith("aiohttp")]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert 1 <= len(records) <= BURST + 1
    for record in records:
        assert record.levelno <= logging.WARNING
        message = record.getMessage()
        assert "\n" not in message and len(message) < 400
        assert "127.0.0.1" in message
    data = await send_raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert parse_reply(data).status == 200  # still answering


def test_the_bucket_refills_and_counts_what_it_suppressed() -> None:
    from router.logs import ProtocolErrors

    now = [0.0]
    bucket = ProtocolErrors(per_minute=6, burst=2, clock=lambda: now[0])
    logger = logging.getLogger("test.protocol-errors")
    logger.propagate = False
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger.addHandler(Keep())
    logger.addFilter(bucket)
    from aiohttp.http_exceptions import BadHttpMessage

    def bad() -> None:
        try:
            raise BadHttpMessage("Invalid header token:\n\n  b'Bad Header'\n   ^")
        except BadHttpMessage as exc:
            logger.error("Error handling request from %s", "10.0.0.7", exc_info=exc)

    for _ in range(5):
        bad()
    assert len(seen) == 2 and bucket.suppressed == 3
    now[0] = 10.0  # one token back (6 a minute)
    bad()
    assert len(seen) == 3
    last = seen[-1]
    assert last.levelname == "WARNING" and last.exc_info is None
    assert last.getMessage() == (
        "malformed HTTP request from 10.0.0.7: Invalid header token: b'Bad Header' "
        "(HTTP 400); 3 more suppressed"
    )
    logger.error("something else", exc_info=ValueError("kept"))  # other records pass
    assert seen[-1].levelname == "ERROR" and seen[-1].exc_info is not None
