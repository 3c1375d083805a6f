"""Logging: JSON lines (default) or text; secrets never reach a record.

Config ``logging: {level, format, requests}``. Ordinary records go through the
``logging`` module. The per-request line (``spillway.access``) is on the hot
path, so :class:`AccessLog` writes it in JSON straight to stderr: one
``orjson.dumps`` and one ``write`` call, no LogRecord. A line is shorter than
``PIPE_BUF``, so lines of several workers sharing stderr never interleave.
It carries ids, names and numbers only: the key id, never the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

from router.config import LoggingSettings

ACCESS_LOGGER = "spillway.access"
STDERR = 2
PIPE_BUF = 4096  # writes up to this size are atomic on a pipe
_HEAD = b'","level":"info","logger":"' + ACCESS_LOGGER.encode() + b'","msg":"request"'


def _timestamp(created: float, msecs: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(msecs):03d}Z"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return line


class ProtocolErrors(logging.Filter):
    """aiohttp's server logs every request it cannot parse (a bad request line,
    header or chunk) at ERROR with a traceback of about 2 KB, so one client could
    fill the logs. On the ``aiohttp.server`` logger this turns such a record into
    one line, at WARNING at most, with the peer and the reason; at most ``burst``
    lines, then ``per_minute`` a minute (a token bucket). The next line that is
    written says how many were suppressed. Other records pass unchanged."""

    def __init__(
        self, per_minute: float = 10.0, burst: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        super().__init__()
        self.rate = per_minute / 60.0
        self.burst = burst
        self.tokens = burst
        self.suppressed = 0
        self._clock = clock
        self._at = clock()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
        self._at = now
        if self.tokens < 1.0:
            self.suppressed += 1
            return False
        self.tokens -= 1.0
        args = record.args if isinstance(record.args, tuple) else ()
        peer = str(args[0]) if args else "unknown"
        lines = (exc.message or type(exc).__name__).splitlines()
        reason = " ".join(t for t in (ln.strip() for ln in lines) if t.strip("^"))[:200]
        suppressed, self.suppressed = self.suppressed, 0
        record.msg = "malformed HTTP request from %s: %s (HTTP %s)%s"
        record.args = (peer, reason, exc.code,
                       f"; {suppressed} more suppressed" if suppressed else "")  # fmt: skip
        record.levelno = min(record.levelno, logging.WARNING)
        record.levelname = logging.getLevelName(record.levelno)
        record.exc_info = None
        record.exc_text = None
        record.fields = {"peer": peer, "reason": reason, "suppressed": suppressed}
        return True


PROTOCOL_ERRORS = ProtocolErrors()


def quiet_protocol_errors() -> None:
    """Install :class:`ProtocolErrors` on aiohttp's server logger (once)."""
    server = logging.getLogger("aiohttp.server")
    if PROTOCOL_ERRORS not in server.filters:
        server.addFilter(PROTOCOL_ERRORS)


def setup(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class AccessLog:
    """The one line per request, as configured by ``logging``.

    Inside a running event loop, JSON lines are gathered and written once per
    loop iteration, in writes of whole lines no larger than ``PIPE_BUF`` (so
    lines from several worker processes never interleave on a pipe).
    """

    __slots__ = ("_fd", "_json", "_lines", "_logger", "_second", "_stamp", "enabled")

    def __init__(self, settings: LoggingSettings, fd: int = STDERR) -> None:
        level = logging.getLevelName(settings.level)
        self.enabled = settings.requests and isinstance(level, int) and level <= logging.INFO
        self._json = settings.format == "json"
        self._fd = fd
        self._logger = logging.getLogger(ACCESS_LOGGER)
        self._second = -1
        self._stamp = b""
        self._lines: list[bytes] = []

    def write(self, fields: dict[str, Any]) -> None:
        if not self._json:
            self._logger.info("request", extra={"fields": fields})
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = (
                b'{"ts":"' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
            )
        # the head's fields, then the request's: spliced, not merged into one dict
        body = orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)[1:] if fields else b"}\n"
        ms = int((now - second) * 1000)
        line = b"%b.%03dZ%b%b%b" % (self._stamp, ms, _HEAD, b"," if fields else b"", body)
        if not self._lines:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: write now
                self._write(line)
                return
        self._lines.append(line)

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > PIPE_BUF:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        # A closed or full stderr must not fail the request that was answered.
        with contextlib.suppress(OSError):
            os.write(self._fd, data)
