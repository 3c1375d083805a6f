"""Run Spillway for a test: in-process on a free port, or as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from router.app import create_app, make_runner
from router.config import Config
from router.config_load import parse_config
from router.gateway import Gateway
from router.keys import GATEWAY
from tests.support.net import free_port, wait_http


def make_config(doc: dict[str, Any] | str) -> Config:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
    return parse_config(text, "test config", env={})


@dataclass
class Running:
    url: str  # http://127.0.0.1:PORT
    app: web.Application
    runner: web.AppRunner

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def gateway(self) -> Gateway:
        return self.app[GATEWAY]

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_gateway(
    doc: dict[str, Any] | str | Config, *, config_path: str | None = None
) -> Running:
    """``config_path``: the file to reload from (SIGHUP, file watch, ``reload_file``)."""
    cfg = doc if isinstance(doc, Config) else make_config(doc)
    app = create_app(cfg, config_path=config_path)
    runner = make_runner(app, cfg)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return Running(f"http://127.0.0.1:{port}", app, runner)


class GatewayProcess:
    """``python -m router serve`` in a child process."""

    def __init__(self, doc: dict[str, Any] | str, *, workers: int = 1,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.workers = workers
        text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
        fd, self.config_path = tempfile.mkstemp(suffix=".yaml", prefix="spillway-test-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.config_path + ".log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--config", self.config_path,
             "--port", str(self.port), "--workers", str(workers)],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            start_new_session=True,
        )  # fmt: skip
        try:
            wait_http(self.url + "/healthz", timeout=30)
        except TimeoutError:
            self.stop()
            raise

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def kill(self) -> None:
        """SIGKILL: the process dies without settling anything."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()
