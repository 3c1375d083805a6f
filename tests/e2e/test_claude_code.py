"""The real Claude Code CLI (npm ``@anthropic-ai/claude-code``), non-interactively, with
``ANTHROPIC_BASE_URL`` at Spillway: one plain turn, and one in which the model calls
Claude Code's ``Read`` tool and answers from its result, through a native Anthropic
backend and through a translated vLLM-style backend.

The CLI sends what it sends to Anthropic (``/v1/messages?beta=true``, ~50-120 KB
bodies, betas, adaptive thinking, context management), so every run also checks
that nothing it needs is refused or lost. A few runs only: each start costs seconds.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEMO_KEY
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fakes import FakeOpenAI
from tests.support.gateway import Running, start_gateway
from tests.support.npm_cli import ensure_cli

VERSION = "2.1.332"
SECRET = "spillway-notes-7f3a"


def config(anthropic_url: str, vllm_url: str) -> dict[str, Any]:
    return {
        "backends": {
            "anth": {"provider": "anthropic", "url": anthropic_url, "api_key": "sk-ant-test-key"},
            "vllm": {"provider": "openai", "url": vllm_url},
        },
        "pools": {
            "anth-pool": {"members": [{"backend": "anth", "model": "claude-sonnet-4-5"}]},
            "vllm-pool": {"members": [{"backend": "vllm", "model": "qwen3-coder"}]},
        },
        "models": {
            "claude-native": {"routes": [{"pools": ["anth-pool"]}]},
            "qwen-local": {"routes": [{"pools": ["vllm-pool"]}]},
        },
        "teams": {"dev": {"budgets": [{"tokens_per_day": 50_000_000}]}},
        "keys": [{"id": "ci", "team": "dev", "key": DEMO_KEY}],
    }


@pytest.fixture(scope="module")
def claude() -> Path:
    return ensure_cli("@anthropic-ai/claude-code", VERSION, "claude")


@pytest.fixture
async def gw(native: FakeAnthropic, vllm: FakeOpenAI) -> AsyncIterator[Running]:
    running = await start_gateway(config(native.url, vllm.url))
    yield running
    await running.stop()


async def run_claude(
    claude: Path, gw: Running, model: str, prompt: str, workdir: Path
) -> tuple[int, str, str]:
    home = workdir / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": gw.url,
        "ANTHROPIC_API_KEY": DEMO_KEY,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        str(claude), "-p", prompt, "--model", model, "--allowedTools", "Read",
        cwd=workdir, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("model", ["claude-native", "qwen-local"])
async def test_plain_turn(
    claude: Path, gw: Running, native: FakeAnthropic, vllm: FakeOpenAI, model: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    native.behaviour.use_tools = False
    code, out, err = await run_claude(claude, gw, model, "say hi", tmp_path)
    assert code == 0, err
    assert "w0 w1 w2 w3 w4 w5" in out
    if model == "claude-native":
        sent = native.seen[-1]
        assert "claude-code-20250219" in sent.headers["anthropic-beta"]
        assert sent.body["model"] == "claude-sonnet-4-5"
        assert len(sent.raw) > 40_000  # the whole system prompt and tool set
    else:
        body = vllm.seen[-1].body
        assert body["model"] == "qwen3-coder" and body["stream"] is True
        assert {t["function"]["name"] for t in body["tools"]} >= {"Bash", "Read", "Edit"}


@pytest.mark.parametrize("model", ["claude-native", "qwen-local"])
async def test_tool_turn(
    claude: Path, gw: Running, native: FakeAnthropic, vllm: FakeOpenAI, model: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    notes = tmp_path / "notes.txt"
    notes.write_text(SECRET + "\n")
    call = {"file_path": str(notes)}
    native.behaviour.tool_name = vllm.behaviour.tool_name = "Read"
    native.behaviour.tool_input = vllm.behaviour.tool_input = call
    vllm.behaviour.tool_calls = True
    code, out, err = await run_claude(claude, gw, model, "What is in notes.txt?", tmp_path)
    assert code == 0, err
    assert "Result:" in out and SECRET in out  # the model's answer from the tool's result
    if model == "claude-native":
        last = native.seen[-1].body["messages"]
        results = [b for b in last[-1]["content"] if b.get("type") == "tool_result"]
        assert results and results[0]["tool_use_id"] == last[-2]["content"][-1]["id"]
    else:
        sent = vllm.seen[-1].body["messages"]
        tool = next(m for m in sent if m["role"] == "tool")
        assert SECRET in tool["content"]
        assert any(m.get("tool_calls") for m in sent if m["role"] == "assistant")
