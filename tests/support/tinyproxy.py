"""A real egress proxy for the suite: Debian's ``tinyproxy`` (package
``tinyproxy-bin``), from PATH or fetched by :mod:`tests.support.debian`.

It listens on a free loopback port, optionally demands Basic credentials, and
logs each request line, so a test can count the CONNECT tunnels it carried.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.debian import debian_tool
from tests.support.net import free_port
from tests.support.process import stop_process


class Tinyproxy:
    def __init__(self, *, user: str | None = None, password: str | None = None) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="spillway-tinyproxy-"))
        self.port = free_port()
        self.log_path = self.workdir / "tinyproxy.log"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 30",
                 f'LogFile "{self.log_path}"', "LogLevel Info", "MaxClients 64",
                 "Allow 127.0.0.1", "DisableViaHeader Yes"]  # fmt: skip
        if user is not None:
            lines.append(f"BasicAuth {user} {password}")
        conf = self.workdir / "tinyproxy.conf"
        conf.write_text("\n".join(lines) + "\n")
        self._out = open(self.workdir / "stdout", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [debian_tool("tinyproxy", "tinyproxy-bin"), "-d", "-c", str(conf)],
            stdout=self._out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_listening(self) -> None:
        end = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise TimeoutError("tinyproxy did not start:\n" + self.log()) from None
                time.sleep(0.05)

    def log(self) -> str:
        parts = [p.read_text(errors="replace") for p in
                 (self.workdir / "stdout", self.log_path) if p.exists()]  # fmt: skip
        return "\n".join(parts)

    def tunnels(self) -> list[str]:
        """The CONNECT request lines it received (``host:port``)."""
        out = []
        for line in self.log().splitlines():
            _, found, rest = line.partition("): CONNECT ")
            if found:
                out.append(rest.split(" ", 1)[0])
        return out

    def __enter__(self) -> Tinyproxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        stop_process(self.proc)
        self._out.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
