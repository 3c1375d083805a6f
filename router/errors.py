"""One exception tree; each error knows its HTTP status and OpenAI envelope.

    SpillwayError                     500 api_error (never raised bare)
    ├── InvalidRequest                400 invalid_request_error
    │   ├── BackendRejectedParam      400 (a parameter a backend does not take)
    │   └── PayloadTooLarge           413
    ├── AuthenticationFailed          401 invalid_api_key
    ├── PermissionDenied              403 model_not_allowed
    ├── NotFound                      404 model_not_found / not_found
    ├── MethodNotAllowed              405
    ├── RequestTimeout                408 (client too slow sending its request)
    ├── UnsupportedMediaType          415 (a Content-Encoding the gateway does not decode)
    ├── Conflict                      409 (admin API: the key id is taken)
    ├── RateLimited                   429 rate_limit_exceeded (+ Retry-After)
    ├── QuotaExceeded                 429 insufficient_quota (a budget is spent)
    ├── ServiceUnavailable            503 (e.g. Redis down with on_error: deny)
    └── UpstreamError                 502 bad gateway (unreachable, bad answer)
        ├── UpstreamTimeout           504
        ├── UpstreamTLSError          502 upstream_tls_error (handshake, certificate)
        ├── UpstreamAuthError         502 upstream_auth_error (the provider refused the
        │   │                             gateway's credential: 401/402/403)
        │   └── UpstreamMisconfigured 502 upstream_misconfigured (404: unknown model,
        │                                 deployment or path at the provider)
        └── UpstreamStatus            the upstream's own 4xx/5xx, message passed on

A provider's auth or config error is the gateway's problem, never shown to the
client as its own: its message names the backend only (the provider's words go
to the log). Anything an upstream said that is passed on is first scrubbed of
the backend's credentials (:meth:`UpstreamError.scrub`), on the decoded text.

The middleware in ``app.py`` renders any of these as
``{"error": {"message", "type", "param", "code"}}``; anything else becomes a
500 with a generic message (the traceback goes to the log, never the client).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

import orjson


class SpillwayError(Exception):
    status: int = 500
    type: str = "api_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if type is not None:
            self.type = type
        self.headers: dict[str, str] = dict(headers or {})

    def envelope(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())


def internal_error(rid: str) -> SpillwayError:
    """The answer to a failure the gateway did not expect (its traceback is logged)."""
    return SpillwayError(
        f"The gateway failed to handle the request (request id {rid}).",
        headers={"x-request-id": rid},
    )


class InvalidRequest(SpillwayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class BackendRejectedParam(InvalidRequest):
    code = "unsupported_parameter"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class AuthenticationFailed(SpillwayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(SpillwayError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class NotFound(SpillwayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class MethodNotAllowed(SpillwayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(SpillwayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class RequestTimeout(SpillwayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class UnsupportedMediaType(SpillwayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RateLimited(SpillwayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class QuotaExceeded(SpillwayError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class ServiceUnavailable(SpillwayError):
    status = 503
    type = "api_error"
    code = "service_unavailable"


class UpstreamError(SpillwayError):
    """The upstream could not be reached or answered something unusable."""

    status = 502
    type = "api_error"
    code: str | None = "upstream_error"
    retryable = True

    def scrub(self, secrets: Iterable[str]) -> None:
        """Mask ``secrets`` in every text of the envelope (decoded text: an upstream
        that JSON-escaped a key, ``\\/`` or ``\\uXXXX``, is caught too)."""
        for secret in secrets:
            self.message = mask(self.message, secret)
            if self.param:
                self.param = mask(self.param, secret)
            if self.code:
                self.code = mask(self.code, secret)
            self.type = mask(self.type, secret)


MIN_SECRET = 8  # shorter values are not masked (they would match ordinary words)


def mask(text: str, secret: str) -> str:
    """``text`` with ``secret`` masked, also where it is JSON-escaped (``\\/``,
    ``\\uXXXX``): text that did not decode as JSON may still quote it escaped."""
    if len(secret) < MIN_SECRET:
        return text
    if secret in text:
        text = text.replace(secret, "***")
    if "\\" in text:
        text = _escaped(secret).sub("***", text)
    return text


@functools.lru_cache(maxsize=64)
def _escaped(secret: str) -> re.Pattern[str]:
    """``secret`` with each character as itself or any JSON escape of it."""
    parts = []
    for c in secret:
        forms = [re.escape(c), "\\\\u" + "".join(f"[{h.lower()}{h.upper()}]" if h.isalpha()
                                                 else h for h in f"{ord(c):04x}")]  # fmt: skip
        if c in '/\\"':
            forms.append(re.escape("\\" + c))
        parts.append("(?:" + "|".join(forms) + ")")
    return re.compile("".join(parts))


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamTLSError(UpstreamError):
    code = "upstream_tls_error"


class UpstreamAuthError(UpstreamError):
    """The provider refused the gateway's own credential (or its account is unpaid).

    ``upstream_status`` is what the provider answered; ``detail`` its own words
    (scrubbed) for the log, never for the client."""

    code = "upstream_auth_error"

    def __init__(self, backend: str, upstream_status: int, detail: str) -> None:
        super().__init__(
            f"Backend {backend!r} refused the gateway's credentials (HTTP {upstream_status}); "
            "the gateway's operator has to fix its configuration."
        )
        self.upstream_status = upstream_status
        self.detail = detail
        self.credential_renewed = False  # read again and changed: worth one more try

    def scrub(self, secrets: Iterable[str]) -> None:
        super().scrub(secrets)
        for secret in secrets:
            self.detail = mask(self.detail, secret)


class UpstreamMisconfigured(UpstreamAuthError):
    code = "upstream_misconfigured"

    def __init__(self, backend: str, upstream_status: int, detail: str) -> None:
        super().__init__(backend, upstream_status, detail)
        self.message = (
            f"Backend {backend!r} does not know the model, deployment or path the gateway "
            f"is configured to use (HTTP {upstream_status}); the gateway's operator has to "
            "fix its configuration."
        )
        self.args = (self.message,)


class UpstreamStatus(UpstreamError):
    """The upstream answered an error status; its message is passed on."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, type=type)
        self.status = status
        self.retry_after = retry_after
        self.retryable = status == 429 or status >= 500
        if type is None:
            self.type = "invalid_request_error" if 400 <= status < 500 else "api_error"
        if code is None:
            self.code = None


def status_error(
    status: int, body: bytes, *, retry_after: float | None = None, backend: str = "upstream"
) -> UpstreamStatus:
    """Turn an upstream's error response into :class:`UpstreamStatus`.

    Understands OpenAI's envelope, vLLM's variants (``code`` as an int,
    ``{"error": "Unauthorized"}``), RFC 9457 problem documents and plain text.
    """
    message: str | None = None
    etype: str | None = None
    param: str | None = None
    code: str | None = None
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error", doc)
        if isinstance(err, dict):
            raw_msg = err.get("message") or err.get("detail") or err.get("title")
            message = str(raw_msg) if raw_msg is not None else None
            etype = err.get("type") if isinstance(err.get("type"), str) else None
            param = err.get("param") if isinstance(err.get("param"), str) else None
            raw_code = err.get("code")
            code = str(raw_code) if isinstance(raw_code, str) else None
        elif isinstance(err, str):
            message = err
    elif body:
        message = body[:500].decode("utf-8", "replace").strip()
    if etype and (etype[:1].isupper() or " " in etype):
        etype = None  # vLLM puts class names and reason phrases here
    if not message:
        message = f"{backend} answered HTTP {status}"
    return UpstreamStatus(
        status, message, type=etype, param=param, code=code, retry_after=retry_after
    )
