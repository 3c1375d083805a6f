"""``spillway simulate`` in a child process: a model server with vLLM's gauges."""

from __future__ import annotations

import math
import subprocess
import sys

from tests.support.metrics import scrape, value
from tests.support.net import free_port, wait_http


class SimulateProcess:
    """``python -m router simulate`` on a free port, with the given flags."""

    def __init__(self, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "simulate", "--port", str(self.port), *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            wait_http(self.url + "/health", timeout=30)
        except TimeoutError:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def counter(self, name: str) -> float:
        """A ``vllm:`` counter or gauge from its /metrics (0 when absent)."""
        got = value(scrape(self.url), name)
        return 0.0 if math.isnan(got) else got

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
