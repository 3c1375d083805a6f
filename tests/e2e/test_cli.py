"""The `spillway` command as a user runs it: real processes, real ports."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from tests.support.net import free_port, wait_http

CLI = [sys.executable, "-m", "router"]


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if p.stdout:
            p.stdout.close()


def start(procs: list[subprocess.Popen[str]], *args: str, env: dict[str, str] | None = None,
          ) -> subprocess.Popen[str]:  # fmt: skip
    p = subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})}, start_new_session=True,
    )  # fmt: skip
    procs.append(p)
    return p


def read_banner(p: subprocess.Popen[str], until: str) -> str:
    """Lines printed at start, up to and including the first one containing ``until``."""
    assert p.stdout is not None
    text = ""
    while until not in text:
        line = p.stdout.readline()
        if not line:
            raise AssertionError(f"process ended; printed:\n{text}")
        text += line
    return text


def test_serve_default_prints_key_and_working_curl(spawn: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    p = start(spawn, "serve", "--port", str(port), env={"SPILLWAY_CONFIG": ""})
    banner = read_banner(p, "curl ")
    assert f"listening on http://127.0.0.1:{port}" in banner
    assert "demo key: sk-spillway-demo" in banner
    curl = next(line.strip() for line in banner.splitlines() if line.strip().startswith("curl "))
    out = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=10, check=True)
    assert '"object":"chat.completion"' in out.stdout
    assert '"model":"demo"' in out.stdout
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-spillway-demo") as c:
        answer = c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        assert answer.usage is not None and answer.usage.completion_tokens <= 5
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-nope-000",
                          max_retries=0).models.list()  # fmt: skip


def test_serve_from_env_config_with_workers(
    spawn: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "backends": {"sim": {"provider": "simulate"}},
        "pools": {"p": {"members": [{"backend": "sim", "model": "m"}]}},
        "models": {"m": {"routes": [{"pools": ["p"]}]}},
        "teams": {"t": {}}, "keys": [{"id": "k", "team": "t", "key": "sk-workers-1"}],
    }))  # fmt: skip
    start(spawn, "serve", "--port", str(port), "--workers", "2",
          env={"SPILLWAY_CONFIG": str(cfg)})  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/healthz")
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-workers-1") as c:
        for _ in range(6):
            assert (
                c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
                .choices[0]
                .message.content
            )


def test_check_reports_yaml_paths(tmp_path: Path) -> None:
    good = Path(__file__).parents[2] / "config" / "spillway.yaml"
    ok = subprocess.run(
        [*CLI, "check", str(good)], capture_output=True, text=True, timeout=30, check=False
    )
    assert ok.returncode == 0 and "ok (1 backends, 2 pools, 2 models" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        good.read_text()
        .replace("strategy", "x")
        .replace("members:", "membres:")
        .replace('"${SPILLWAY_DEMO_KEY:-sk-spillway-demo}"', '"${NOT_SET_ANYWHERE}"')
    )
    res = subprocess.run(
        [*CLI, "check", str(bad)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "NOT_SET_ANYWHERE"},
    )
    assert res.returncode == 1
    assert "keys[0].key: environment variable NOT_SET_ANYWHERE is not set" in res.stderr


def test_simulate_server_speaks_openai(spawn: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    p = start(spawn, "simulate", "--port", str(port), "--ttft-ms", "150", "--model", "sim-a")
    assert f":{port}" in read_banner(p, "listening")
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused") as c:
        assert [m.id for m in c.models.list()] == ["sim-a"]
        began = time.monotonic()
        stream = c.chat.completions.create(
            model="sim-a", messages=[{"role": "user", "content": "a b c"}], max_tokens=4,
            stop=["zzz"], stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = list(stream)
        assert time.monotonic() - began >= 0.15
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
        assert chunks[-2].choices[0].finish_reason == "length"
        with pytest.raises(openai.BadRequestError):
            c.with_options(max_retries=0).chat.completions.create(model="sim-a", messages=[])
    metrics = subprocess.run(
        ["curl", "-s", f"http://127.0.0.1:{port}/metrics"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    assert re.search(r'vllm:num_requests_waiting\{engine="0",model_name="sim-a"\} 0', metrics)


def test_simulate_refuses_bad_engine_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from router.cli import main

    assert main(["simulate", "--port", "0", "--max-num-seqs", "-1"]) == 2
    assert main(["simulate", "--port", "0", "--block-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "--max-num-seqs: Input should be greater than or equal to 0" in err
    assert "--block-size: Input should be greater than 0" in err
