"""A client request's body: read within the size and time limits, then decoded.

The server does not decompress request bodies itself (``auto_decompress`` off):
a ``Content-Encoding`` is decoded here, so that what the client sent is bounded
and every failure is the client API's error envelope:

- ``gzip`` (``x-gzip``) and ``deflate`` (zlib, or raw deflate as some clients
  send it) are decoded; ``identity`` is nothing to do. Several codings are
  undone in reverse order, at most :data:`MAX_CODINGS` of them.
- The decoded size counts against ``server.max_body_bytes`` like a plain body:
  a body that inflates beyond it (a zip bomb) is a 413, found without ever
  holding more than the limit.
- A body that cannot be decoded (corrupt, truncated, trailing garbage) is a 400
  ``invalid_body_encoding``; any other coding (``br``, ``zstd``, unknown ones)
  is a 415 ``unsupported_content_encoding``.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web

from router.errors import InvalidRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType

MAX_CODINGS = 2  # e.g. "deflate, gzip"; more is no client's doing
SUPPORTED = "gzip, deflate, identity"
_GZIP = 16 + zlib.MAX_WBITS
_GZIP_MAGIC = b"\x1f\x8b"


async def read_body(request: web.Request, max_bytes: int, seconds: float) -> bytes:
    """The request's body, decoded; at most ``max_bytes`` before and after decoding."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"Request body is {length} bytes; the limit is {max_bytes}.")
    try:
        if request.content.is_eof():  # the whole body came with the headers
            raw = await request.read()
        else:
            async with asyncio.timeout(seconds):
                raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"Request body is over the limit of {max_bytes} bytes.") from None
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {seconds:g}s.") from None
    encoding = request.headers.get("Content-Encoding")
    if encoding is None:
        return raw
    return decode(raw, encoding, max_bytes)


def decode(raw: bytes, encoding: str, max_bytes: int) -> bytes:
    """``raw`` with the ``Content-Encoding`` ``encoding`` undone."""
    codings = [c.strip().lower() for c in encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if len(codings) > MAX_CODINGS:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} applies {len(codings)} codings; at most "
            f"{MAX_CODINGS} are accepted.",
            code="unsupported_content_encoding",
        )
    for coding in codings:
        if coding not in ("gzip", "x-gzip", "deflate"):
            raise UnsupportedMediaType(
                f"Content-Encoding {coding!r} is not supported; send the body as is or "
                f"with one of: {SUPPORTED}.",
                code="unsupported_content_encoding",
            )
    for coding in reversed(codings):
        raw = _inflate(raw, coding, max_bytes)
    return raw


def _inflate(data: bytes, coding: str, max_bytes: int) -> bytes:
    if coding == "deflate":
        # RFC 9110's deflate is the zlib format; some clients send raw deflate
        wbits = zlib.MAX_WBITS if data[:1] and data[0] & 0x0F == 8 else -zlib.MAX_WBITS
    else:
        wbits = _GZIP
    out: list[bytes] = []
    size = 0
    try:
        while True:  # gzip allows several members, one after another
            d = zlib.decompressobj(wbits)
            chunk = d.decompress(data, max_bytes - size + 1)
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(
                    f"Request body is over the limit of {max_bytes} bytes once decoded ({coding})."
                )
            out.append(chunk)
            if not d.eof:
                raise _corrupt(coding, "it ends before the compressed stream does")
            data = d.unused_data
            if not data:
                break
            if wbits != _GZIP or not data.startswith(_GZIP_MAGIC):
                raise _corrupt(coding, "there are bytes after the compressed stream")
    except zlib.error as exc:
        raise _corrupt(coding, str(exc)) from None
    return out[0] if len(out) == 1 else b"".join(out)


def _corrupt(coding: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"The request body could not be decoded as Content-Encoding {coding!r}: {why}.",
        code="invalid_body_encoding",
    )
