"""One way to reach Redis, whatever its shape: standalone, Sentinel or Cluster.

``redis.url`` is read once, here, with redis-py's own URL parser, and the same
options are passed to every client kind, so a ``rediss://`` URL means the same
TLS settings on a Cluster as on one server:

* ``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS) and
  ``unix://[user:password@]/path/to/socket[?db=N]``;
* TLS options as query parameters: ``ssl_ca_certs`` (a private CA),
  ``ssl_cert_reqs`` (``required`` | ``optional`` | ``none``), ``ssl_certfile`` and
  ``ssl_keyfile`` (a client certificate), ``ssl_check_hostname``.

With ``redis.sentinel`` the URL's host is not used: the sentinels name the
primary of ``service``, and the URL gives its credentials, database and TLS.
After a failover the client asks the sentinels again; a primary that became a
replica is dropped.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from router.config import TLS_OPTIONS, RedisSettings, redis_url_options


def _common(settings: RedisSettings) -> dict[str, Any]:
    """Options every client kind takes: timeouts, health check of idle connections, and
    no retries inside the client (the store decides what may be sent again)."""
    return {
        "socket_timeout": settings.socket_timeout_seconds,
        "socket_connect_timeout": settings.connect_timeout_seconds,
        "health_check_interval": settings.health_check_seconds,
    }


def _tls(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k == "ssl" or k in TLS_OPTIONS}


class Connected:
    """The client to use, and what else to close with it (Sentinel's own clients).

    ``batches`` (not on a Cluster) is a second client, with its own connections, for
    the store's batched script calls: the store keeps those connections (no pool
    checkout per batch) without taking any from the client that serves the rest, and
    they have no timeout per read (a timer per reply); the store gives each batch one
    deadline of ``socket_timeout_seconds``."""

    def __init__(
        self, client: Redis | RedisCluster, sentinels: list[Redis] | None = None,
        batches: Redis | None = None,
    ) -> None:  # fmt: skip
        self.client = client
        self.batches = batches
        self._sentinels = sentinels or []

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.batches is not None:
            await self.batches.aclose()
        for sentinel in self._sentinels:
            await sentinel.aclose()


def make_client(settings: RedisSettings) -> Connected:
    """A redis-py client for ``settings``: a Redis (standalone or the primary named by
    Sentinel) or a RedisCluster."""
    options = redis_url_options(settings.url) if settings.url else {}
    common = _common(settings)
    no_retry = Retry(NoBackoff(), 0)
    auth = {k: options[k] for k in ("username", "password") if k in options}
    if settings.sentinel is not None:
        s = settings.sentinel
        sentinel_options: dict[str, Any] = {**common, "retry": no_retry}
        if s.username:
            sentinel_options["username"] = s.username
        if s.password is not None:
            sentinel_options["password"] = s.password.get_secret_value()
        if s.tls:
            sentinel_options.update(_tls(options) or {"ssl": True})
        hosts = [(host, int(port)) for host, port in (h.rsplit(":", 1) for h in s.hosts)]
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts, sentinel_kwargs=sentinel_options, min_other_sentinels=0
        )
        primary, batches = (
            sentinel.master_for(
                s.service, redis_class=Redis, db=options.get("db", 0), retry=no_retry,
                max_connections=settings.max_connections, **auth, **_tls(options), **kind,
            )
            for kind in (common, {**common, "socket_timeout": None})
        )  # fmt: skip
        return Connected(primary, list(sentinel.sentinels), batches)
    if settings.cluster:
        return Connected(RedisCluster(
            host=options.get("host", "localhost"), port=int(options.get("port", 6379)),
            max_connections=settings.max_connections, **auth, **_tls(options), **common,
        ))  # fmt: skip
    place: dict[str, Any] = (
        {"unix_socket_path": options["path"]}
        if options.get("unix")
        else {"host": options.get("host", "localhost"), "port": int(options.get("port", 6379))}
    )
    primary, batches = (
        Redis(
            **place, db=options.get("db", 0), retry=no_retry,
            max_connections=settings.max_connections, **auth, **_tls(options), **kind,
        )
        for kind in (common, {**common, "socket_timeout": None})
    )  # fmt: skip
    return Connected(primary, batches=batches)
