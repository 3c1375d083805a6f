"""``spillway serve --workers 2``: one consistent /metrics across the workers.

A real process tree (parent + 2 forked workers sharing the port with
SO_REUSEPORT), driven over fresh connections so both workers answer; every
scrape, whichever worker takes it, reports the totals of both.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.multiprocess import MultiProcessCollector

from tests.support.gateway import GatewayProcess
from tests.support.metrics import scrape, value

KEY = "sk-test-workers-0001"


def config(redis: str, prefix: str) -> dict[str, Any]:
    return {
        "redis": {"url": redis, "key_prefix": prefix},
        "metrics": {"refresh_seconds": 0.2},
        "backends": {"sim": {"provider": "simulate"}},
        "pools": {"sim-pool": {"members": [{"backend": "sim", "model": "sim-1"}]}},
        "models": {"demo": {"routes": [{"pools": ["sim-pool"]}]}},
        "teams": {"demo": {"budgets": [{"tokens_per_day": 10_000_000}]}},
        "keys": [{"id": "demo", "team": "demo", "key": KEY}],
    }


def chat(url: str) -> int:
    """One request on a new connection; returns its total tokens."""
    body = json.dumps(
        {"model": "demo", "messages": [{"role": "user", "content": "count to ten"}],
         "max_tokens": 5}
    ).encode()  # fmt: skip
    req = urllib.request.Request(
        url + "/v1/chat/completions", data=body,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        usage = json.loads(resp.read())["usage"]
    return int(usage["total_tokens"])


def requests_by_worker(path: Path) -> dict[int, float]:
    """spillway_requests_total as each worker's own file has it."""
    out: dict[int, float] = {}
    for f in path.glob("counter_*.db"):
        pid = int(f.stem.split("_")[-1])
        total = 0.0
        for metric in MultiProcessCollector.merge([str(f)]):
            total += sum(s.value for s in metric.samples if s.name == "spillway_requests_total")
        out[pid] = total
    return out


def workers_of(parent: int) -> list[int]:
    text = Path(f"/proc/{parent}/task/{parent}/children").read_text()
    return [int(p) for p in text.split()]


def wait_for(check: Any, what: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_workers_expose_one_consistent_metrics_view(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    shared = tmp_path / "prom"
    gw = GatewayProcess(config(redis_url, key_prefix), workers=2,
                        env={"PROMETHEUS_MULTIPROC_DIR": str(shared)})  # fmt: skip
    try:
        n = 40
        tokens = sum(chat(gw.url) for _ in range(n))
        by_worker = requests_by_worker(shared)
        assert sorted(by_worker) == sorted(workers_of(gw.proc.pid))
        assert all(v > 0 for v in by_worker.values()), by_worker  # both workers answered
        assert sum(by_worker.values()) == n
        for _ in range(8):  # fresh connections: scrapes land on both workers
            text = scrape(gw.url)
            assert value(text, "spillway_requests_total", status_class="2xx") == n
            assert value(text, "spillway_request_duration_seconds_count") == n
            assert (
                value(text, "spillway_prompt_tokens_total")
                + value(text, "spillway_completion_tokens_total")
            ) == tokens
            assert value(text, "spillway_inflight_requests", backend="sim") == 0
            assert value(text, "spillway_backend_healthy", backend="sim") == 1
            # one series per label set: the workers' samples are merged, not listed
            assert value(text, "spillway_config_reloads_total", result="success") == 0
        budget = {"scope": "team", "owner": "demo", "unit": "tokens", "window": "day"}
        wait_for(
            lambda: value(scrape(gw.url), "spillway_budget_used", **budget) == tokens,
            "the budget gauge to show every worker's tokens",
        )

        # a worker that dies: its live gauges go, what it counted stays counted
        dead = workers_of(gw.proc.pid)[0]
        os.kill(dead, signal.SIGKILL)
        wait_for(lambda: not list(shared.glob(f"gauge_live*_{dead}.db")), "dead worker marked")
        assert list(shared.glob(f"counter_{dead}.db"))
        more = sum(chat(gw.url) for _ in range(5))
        text = scrape(gw.url)
        assert value(text, "spillway_requests_total", status_class="2xx") == n + 5
        assert (
            value(text, "spillway_prompt_tokens_total")
            + value(text, "spillway_completion_tokens_total")
        ) == tokens + more
        assert value(text, "spillway_inflight_requests", backend="sim") == 0
    finally:
        gw.stop()
    # a directory given by the operator is kept (emptied at the next start)
    assert shared.is_dir()


def test_workers_metrics_directory_is_temporary(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    gw = GatewayProcess(config(redis_url, key_prefix), workers=2, env={"TMPDIR": str(tmp_path)})
    try:
        made = list(tmp_path.glob("spillway-metrics-*"))
        assert len(made) == 1
        for _ in range(6):
            chat(gw.url)
        assert value(scrape(gw.url), "spillway_requests_total") == 6
        assert list(made[0].glob("counter_*.db"))
    finally:
        gw.stop()
    assert gw.proc.returncode == 0
    assert not made[0].exists()


def test_stale_samples_of_an_earlier_run_are_cleared(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    shared = tmp_path / "prom"
    for run in range(2):
        gw = GatewayProcess(config(redis_url, key_prefix), workers=2,
                            env={"PROMETHEUS_MULTIPROC_DIR": str(shared)})  # fmt: skip
        try:
            for _ in range(3):
                chat(gw.url)
            assert value(scrape(gw.url), "spillway_requests_total") == 3, f"run {run}"
        finally:
            gw.stop()
