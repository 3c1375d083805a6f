"""router.logs: the per-request line written straight to a file descriptor."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest

from router.config import LoggingSettings
from router.logs import AccessLog, JSONFormatter

FIELDS = {"request_id": "req_1", "team": "t", "key_id": "k", "status": 200, "ttft_ms": None}


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_json_line_in_one_write() -> None:
    r, w = os.pipe()
    try:
        log = AccessLog(LoggingSettings(), fd=w)
        assert log.enabled
        log.write(FIELDS)
        log.write({**FIELDS, "request_id": "req_2"})
        os.close(w)
        lines = read_all(r).decode().splitlines()
    finally:
        os.close(r)
    docs = [json.loads(line) for line in lines]
    assert [d["request_id"] for d in docs] == ["req_1", "req_2"]
    for d in docs:
        assert d["level"] == "info" and d["logger"] == "spillway.access" and d["msg"] == "request"
        assert d["ttft_ms"] is None and d["status"] == 200
        assert len(d["ts"]) == 24 and d["ts"].endswith("Z")


def test_same_shape_as_other_json_records() -> None:
    record = logging.LogRecord("spillway.access", logging.INFO, __file__, 1, "request", None, None)
    record.fields = FIELDS
    via_logging = json.loads(JSONFormatter().format(record))
    r, w = os.pipe()
    try:
        AccessLog(LoggingSettings(), fd=w).write(FIELDS)
        os.close(w)
        direct = json.loads(read_all(r))
    finally:
        os.close(r)
    assert set(direct) == set(via_logging)
    assert {k: v for k, v in direct.items() if k != "ts"} == {
        k: v for k, v in via_logging.items() if k != "ts"
    }


@pytest.mark.parametrize(
    ("settings", "enabled"),
    [
        (LoggingSettings(level="DEBUG"), True),
        (LoggingSettings(level="WARNING"), False),
        (LoggingSettings(requests=False), False),
        (LoggingSettings(format="text"), True),
    ],
)
def test_enabled_by_level_and_switch(settings: LoggingSettings, enabled: bool) -> None:
    assert AccessLog(settings).enabled is enabled


def test_text_format_goes_through_logging(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="spillway.access"):
        AccessLog(LoggingSettings(format="text")).write(FIELDS)
    (record,) = caplog.records
    assert record.name == "spillway.access" and record.fields == FIELDS  # type: ignore[attr-defined]


def test_a_broken_stderr_does_not_fail_the_request() -> None:
    r, w = os.pipe()
    os.close(r)  # nobody reads: the write fails with EPIPE
    try:
        AccessLog(LoggingSettings(), fd=w).write(FIELDS)
    finally:
        os.close(w)


async def test_lines_of_one_loop_iteration_go_out_together() -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        log = AccessLog(LoggingSettings(), fd=w)
        for i in range(40):  # ~90 bytes each: more than one pipe-atomic write
            log.write({**FIELDS, "request_id": f"req_{i}"})
        with pytest.raises(BlockingIOError):
            os.read(r, 65536)  # nothing written yet
        await asyncio.sleep(0)
        lines = read_all_nonblocking(r).decode().splitlines()
    finally:
        os.close(r)
        os.close(w)
    assert [json.loads(line)["request_id"] for line in lines] == [f"req_{i}" for i in range(40)]


def read_all_nonblocking(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)
