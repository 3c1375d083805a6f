"""One attempt's answer, from the upstream to the client: reading it to its first byte
(or whole), relaying a started stream, and settling an answer the client left (part
of :mod:`router.attempts`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from router.errors import UpstreamError, internal_error
from router.exchange import Exchange
from router.providers import Adapter, Call
from router.providers.base import Opened
from router.quota import Quota, Ticket
from router.routing.balance import Member

log = logging.getLogger("spillway.routing")

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}  # fmt: skip
OpenResult = tuple[Opened, AsyncIterator[bytes] | None, bytes, bytes]


async def first_chunk(opened: Opened, backend: str) -> tuple[AsyncIterator[bytes], bytes]:
    """The stream's first bytes: until they arrive the attempt can still be retried."""
    chunks = opened.chunks()
    try:
        first = await anext(chunks, b"")
        if not first:
            raise UpstreamError(f"Backend {backend!r} ended the stream before any data.")
    except BaseException:
        await aclose(chunks)
        opened.close()
        raise
    return chunks, first


async def aclose(chunks: AsyncIterator[bytes]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


def _unknown() -> bool:
    return False


async def open_answer(member: Member, adapter: Adapter, call: Call) -> OpenResult:
    """Send, and read to the first byte (a stream) or the whole answer."""
    opened = await adapter.open()
    if call.stream and opened.is_stream:
        chunks, first = await first_chunk(opened, member.backend)
        return opened, chunks, first, b""
    try:
        body = await opened.read()
    finally:
        opened.close()
    return opened, None, b"", adapter.transform_body(body)


async def relay(
    x: Exchange,
    resp: web.StreamResponse,
    member: Member,
    adapter: Adapter,
    *,
    chunks: AsyncIterator[bytes],
    first: bytes,
    ttfb: float,
    failed: Callable[[Member, UpstreamError], None],
) -> None:
    """Relay a started stream to the client; an upstream failure or a bug ends it
    in-band in the client API's form (``failed`` records an upstream failure)."""
    last = b""  # relayed, not yet written: it goes out before a failure's event
    try:
        transform, write = adapter.transform_chunk, resp.write  # per chunk
        ended = getattr(chunks, "ended", _unknown)  # the upstream's body is all in
        last = transform(first)
        if not ended():
            if last:
                await write(last)
            last = b""
            async for data in chunks:
                out = transform(data)
                if ended():  # held back: it goes out with the end, in one write
                    last = out
                    break
                if out:
                    await write(out)
        tail = adapter.finish_stream()
        assert x.call is not None
        await x.call.codec.answered(x.call)  # before the last event goes out
        await resp.write_eof(last + tail if tail else last)
        x.usage = adapter.usage
        member.state.record_success(ttfb)
    except UpstreamError as exc:
        # the stream has started: tell the client in-band, then end cleanly
        x.status = exc.status
        x.usage = adapter.stream_usage_so_far()
        failed(member, exc)
        assert x.call is not None
        await resp.write(last + x.call.codec.stream_failure(exc, x.call))
    except (ConnectionResetError, ClientConnectionResetError):
        raise  # the client went away (see _stream)
    except Exception:  # a bug mid-stream: logged once, ended in-band as a 500
        x.status = 500
        x.usage = adapter.stream_usage_so_far()
        log.exception("unhandled error relaying the stream of request %s", x.rid)
        assert x.call is not None
        await resp.write(last + x.call.codec.stream_failure(internal_error(x.rid), x.call))
    await resp.write_eof()


async def settle_when_read(
    quota: Quota,
    reading: asyncio.Task[OpenResult],
    ticket: Ticket,
    adapter: Adapter,
    backend: str,
    limit: float,
) -> None:
    """The client left a non-streamed request to a backend that bills generation: read
    the answer in the background, up to the backend's total timeout (``limit``), and
    settle with the usage it reports, else with the reserved bound."""
    prompt, completion, refund = ticket.prompt, ticket.out, False  # the bound
    try:
        async with asyncio.timeout(limit):
            await reading
        usage = adapter.usage
        if usage is not None and usage.reported:
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
    except UpstreamError:
        refund = True  # refused: nothing was generated
    except TimeoutError:
        log.warning("cancelled request to %s: no answer within %gs; charged the "
                    "reserved bound", backend, limit)  # fmt: skip
    finally:
        if not reading.done():
            reading.cancel()
        quota.settle(ticket, prompt, completion, refund=refund)
