"""A real PostgreSQL for the suite: $DATABASE_URL, else a server of our own.

The binaries (``initdb``, ``postgres``) come from PATH, else from
``/usr/lib/postgresql/*/bin``, else from Debian's server package fetched and
unpacked into a cache by the suite itself (as :mod:`tests.support.prometheus`
does); ``.ci/run`` installs the package when missing. PostgreSQL refuses to run
as root, so under root the server runs as an unprivileged user. Each test gets
a schema of its own, so tests never see each other's keys.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.debian import unpack
from tests.support.net import free_port

CACHE = Path.home() / ".cache" / "spillway-tests" / "postgresql"


def _bin_dir() -> Path:
    found = shutil.which("initdb")
    if found is not None and shutil.which("postgres") is not None:
        return Path(found).resolve().parent
    for path in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(path, "initdb").exists():
            return Path(path)
    cached = sorted(glob.glob(str(CACHE / "usr/lib/postgresql/*/bin")), reverse=True)
    if not cached:
        _unpack_debian_package()
        cached = sorted(glob.glob(str(CACHE / "usr/lib/postgresql/*/bin")), reverse=True)
    if not cached:
        raise RuntimeError(
            "PostgreSQL (initdb, postgres) is not installed and Debian's package could not be "
            "fetched: apt-get install -y postgresql (.ci/run does it when missing)"
        )
    return Path(cached[0])


def _unpack_debian_package() -> None:
    """``apt-get download`` the versioned server package and its client libraries;
    ``dpkg-deb -x`` them into the cache (no root, nothing installed system-wide)."""
    if shutil.which("apt-cache") is None:
        return
    depends = subprocess.run(["apt-cache", "depends", "postgresql"], capture_output=True,
                             text=True, timeout=60, check=False).stdout  # fmt: skip
    names = [w for w in depends.split() if w.startswith("postgresql-") and w[11:].isdigit()]
    if not names:
        return
    unpack([names[0], "libpq5"], CACHE)


def _demote() -> tuple[int, int] | None:
    """(uid, gid) to run the server as when we are root."""
    if os.getuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and no unprivileged user to run PostgreSQL as")


class PostgresServer:
    """``postgres`` on a free loopback port, trust auth; ``kill()`` and ``start()``,
    ``freeze()`` and ``thaw()``."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.workdir = Path(tempfile.mkdtemp(prefix="spillway-postgres-"))
        self.data = self.workdir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.user = _demote()
        self.workdir.chmod(0o755)
        if self.user is not None:
            os.chown(self.workdir, *self.user)
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                   "--auth=trust", "-E", "UTF8", "--no-sync", "--no-locale"])  # fmt: skip
        self.start()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = glob.glob(str(CACHE / "usr/lib/*/"))  # an unpacked package's libpq
        if libs:
            env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")])
        return env

    def _as_user(self) -> dict[str, Any]:
        """subprocess arguments that run the child as the unprivileged user."""
        if self.user is None:
            return {}
        return {"user": self.user[0], "group": self.user[1], "extra_groups": []}

    def _run(self, argv: list[str]) -> None:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                             env=self._env(), cwd=self.workdir, **self._as_user())  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed:\n{out.stdout}\n{out.stderr}")

    def start(self) -> None:
        log = open(self.workdir / "postgres.log", "ab")  # noqa: SIM115 - the child holds it
        try:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-k", str(self.workdir), "-c", "listen_addresses=127.0.0.1",
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT,
                env=self._env(), cwd=self.workdir, start_new_session=True, **self._as_user(),
            )  # fmt: skip
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        end = time.monotonic() + 60
        while True:
            started = self.log().rsplit("starting PostgreSQL", 1)[-1]
            if "ready to accept connections" in started:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    pass
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > end:
                raise TimeoutError("postgres did not start:\n" + self.log())
            time.sleep(0.05)

    def _children(self) -> list[int]:
        """The server's live child processes. PostgreSQL's children each start a session
        of their own (setsid), so a signal to the postmaster's group reaches only it."""
        assert self.proc is not None
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
        return found

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash does. Its backends are not killed: each
        notices the postmaster gone, sends its client a FATAL error and exits; this
        waits until they have (a new server cannot start beside them)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.thaw()
        children = self._children()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        end = time.monotonic() + 30
        while any(_alive(pid) for pid in children):
            if time.monotonic() > end:
                raise TimeoutError(f"postgres backends {children} outlived the postmaster")
            time.sleep(0.02)
        (self.data / "postmaster.pid").unlink(missing_ok=True)

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: a hung server. Connections stay open
        and new ones are accepted by the kernel, but nothing is ever answered."""
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, signal.SIGSTOP)  # first, so it starts no new child
        for pid in self._children():
            os.kill(pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if not self.frozen or self.proc is None:
            return
        for pid in self._children():
            os.kill(pid, signal.SIGCONT)
        os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        self.thaw()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        return (self.workdir / "postgres.log").read_text(errors="replace")


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie nobody reaped has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def database_url() -> Iterator[str]:
    env = os.environ.get("DATABASE_URL")
    if env:
        yield env
        return
    with postgres_server() as server:
        yield server.url


def new_schema() -> str:
    return "t_" + uuid.uuid4().hex[:16]
