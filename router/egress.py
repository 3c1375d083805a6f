"""How one backend is reached: its TLS context, its egress proxy, its timeouts.

Built once per backend when a config is loaded (at start and on every reload),
never per request:

* TLS (``backends.X.tls``): the system's CAs by default; ``ca_file`` trusts a
  private CA instead; ``cert_file``/``key_file`` present a client certificate
  (mTLS); ``verify: false`` turns verification off, with a warning.
* Proxy: ``backends.X.proxy`` when set, else ``HTTPS_PROXY``/``HTTP_PROXY`` (by
  the backend URL's scheme) unless ``NO_PROXY`` names the backend's host. The
  environment is read here, when the config is loaded, not per request.
  Credentials in a proxy URL are sent as ``Proxy-Authorization`` and never
  appear in a log line or an error message (:func:`safe_url`).
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from router.config import Backend, ConfigError, TLSSettings

log = logging.getLogger("spillway.upstream")


@dataclass(frozen=True, slots=True)
class Egress:
    """Everything but the URL and headers that one backend's calls need."""

    backend: str
    first_byte: float  # seconds to the response head
    idle: float  # seconds between reads of the body
    total: float  # seconds for the whole call
    connect: aiohttp.ClientTimeout  # aiohttp's part: connecting (TCP, proxy, TLS)
    ssl: ssl.SSLContext | bool  # True: aiohttp's default, verified with the system CAs
    proxy: URL | None
    proxy_headers: Mapping[str, str] | None

    @classmethod
    def for_backend(
        cls, name: str, cfg: Backend, url: str | None, environ: Mapping[str, str] | None = None
    ) -> Egress:
        """``url``: where the backend's calls go (the proxy is chosen by its scheme
        and host); the environment is read now."""
        t = cfg.timeouts
        proxy, proxy_headers = resolve_proxy(
            url, cfg.proxy, os.environ if environ is None else environ
        )
        if proxy is not None:
            log.info("backend %s goes through proxy %s", name, safe_url(proxy))
        return cls(
            backend=name,
            first_byte=t.first_byte,
            idle=t.idle,
            total=t.total,
            connect=aiohttp.ClientTimeout(total=None, connect=t.connect, sock_connect=t.connect),
            ssl=tls_context(name, cfg.tls),
            proxy=proxy,
            proxy_headers=proxy_headers,
        )


def tls_context(name: str, tls: TLSSettings | None) -> ssl.SSLContext | bool:
    """The SSL context of a backend (True: aiohttp's default verified context)."""
    if tls is None:
        return True
    try:
        ctx = tls.context()
    except (OSError, ssl.SSLError) as exc:  # files changed since the config was checked
        raise ConfigError([f"backends.{name}.tls: {exc}"]) from None
    if not tls.verify:
        log.warning(
            "backend %s: TLS certificate verification is OFF (tls.verify: false); "
            "anyone on the path can read and change its traffic",
            name,
        )
    return ctx


def resolve_proxy(
    url: str | None, configured: str | None, environ: Mapping[str, str]
) -> tuple[URL | None, dict[str, str] | None]:
    """(proxy URL without credentials, headers carrying them) for a backend URL."""
    if configured:
        proxy = URL(configured)
    else:
        if not url:
            return None, None
        target = URL(url)
        proxies = {k.lower(): v for k, v in _proxy_env(environ).items()}
        chosen = proxies.get(target.scheme)
        if not chosen or (target.host and _bypassed(target.host, proxies)):
            return None, None
        proxy = URL(chosen if "://" in chosen else "http://" + chosen)
    headers = None
    if proxy.user is not None:
        auth = aiohttp.encode_basic_auth(proxy.user or "", proxy.password or "")
        headers = {"Proxy-Authorization": auth}
        proxy = proxy.with_user(None)
    return proxy, headers


def _proxy_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``*_proxy`` variables (either case; lower case wins, as with curl)."""
    found: dict[str, str] = {}
    for key, value in environ.items():
        if value and key.lower().endswith("_proxy") and key.isupper():
            found[key.lower()[: -len("_proxy")]] = value
    for key, value in environ.items():
        if value and key.endswith("_proxy") and key.islower():
            found[key[: -len("_proxy")]] = value
    return found


def _bypassed(host: str, proxies: Mapping[str, str]) -> bool:
    """Whether ``NO_PROXY`` names ``host``: ``*``, the host itself, or a domain it is
    in (``example.com`` and ``.example.com`` both cover ``api.example.com``); a
    ``:port`` on an entry and brackets around an IPv6 address are ignored."""
    host = host.strip("[]").lower().rstrip(".")
    for raw in proxies.get("no", "").split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if entry.startswith("["):
            entry = entry[1 : entry.find("]")] if "]" in entry else entry[1:]
        elif entry.count(":") == 1:
            entry = entry.split(":", 1)[0]
        entry = entry.lstrip(".").rstrip(".")
        if host == entry or host.endswith("." + entry):
            return True
    return False


def safe_url(url: URL | str) -> str:
    """``url`` without user or password, for logs and messages."""
    parsed = url if isinstance(url, URL) else URL(url)
    return str(parsed.with_user(None)) if parsed.user is not None else str(parsed)
