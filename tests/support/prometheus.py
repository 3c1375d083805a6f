"""A real Prometheus server for the suite (Debian package ``prometheus``).

The binary comes from PATH, else from the Debian package fetched and unpacked
into a cache by the suite itself; ``.ci/run`` installs the package when missing.
The server scrapes the given targets every second, optionally evaluates rule
files, and is queried over its HTTP API.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.support.debian import unpack
from tests.support.net import free_port


def prometheus_binary() -> str:
    return _tool("prometheus")


def promtool_binary() -> str:
    return _tool("promtool")


CACHE = Path.home() / ".cache" / "spillway-tests" / "prometheus"


def _tool(name: str) -> str:
    """``name`` from PATH, else from Debian's ``prometheus`` package unpacked in a cache
    (``apt-get download`` + ``dpkg-deb -x``: no root, nothing installed system-wide)."""
    found = shutil.which(name)
    if found is not None:
        return found
    unpacked = CACHE / "usr" / "bin" / name
    if not unpacked.exists():
        _unpack_debian_package()
    if not unpacked.exists():
        raise RuntimeError(
            f"{name} is not on PATH and Debian's prometheus package could not be fetched: "
            "install it (apt-get install -y prometheus); .ci/run does it when missing"
        )
    return str(unpacked)


def _unpack_debian_package() -> None:
    unpack(["prometheus"], CACHE)


class Prometheus:
    """``prometheus`` on a free loopback port; use as a context manager."""

    def __init__(self, targets: Sequence[str], rule_files: Sequence[Path] = ()) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="spillway-prometheus-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms",
                       "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": "spillway", "metrics_path": "/metrics",
                                "static_configs": [{"targets": list(targets)}]}],
        }  # fmt: skip
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        end = time.monotonic() + 30
        while True:
            # not listening yet, or 503 while starting
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r,
            ):
                if r.status == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > end:
                raise TimeoutError("prometheus did not become ready:\n" + self.log())
            time.sleep(0.1)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>; the JSON reply, errors included (never raises on 4xx)."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                doc: dict[str, Any] = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            doc = json.loads(exc.read())
        return doc

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def wait_scraping(self, timeout: float = 30.0) -> None:
        """Wait for the first scrape (target discovery takes up to five seconds)."""
        end = time.monotonic() + timeout
        while self.scraped() < 1:
            if time.monotonic() > end:
                raise TimeoutError("prometheus never scraped its target:\n" + self.log())
            time.sleep(0.2)

    def scraped(self) -> int:
        """Healthy scrapes of the spillway job so far (samples of ``up``)."""
        doc = self.query('count_over_time(up{job="spillway"}[10m])')
        return int(sum(float(r["value"][1]) for r in doc["data"]["result"]))
