"""The real Codex CLI (npm ``@openai/codex``), non-interactively, through the gateway.

``codex exec`` with a ``model_providers`` entry whose ``base_url`` is the
gateway and ``wire_api = "responses"`` completes a plain turn, and a turn in
which the model runs a shell command through Codex's ``exec_command`` tool and
answers with its output: bridged to a vLLM-style chat backend and passed
through to a native Responses backend. Codex sends a ``web_search`` tool
unless told not to; a chat backend has no such tool, so the config turns it
off as the README says.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.test_responses_api import KEY_A, config
from tests.support.fake_responses import FakeResponses, FakeToolChat, Script
from tests.support.gateway import Running, start_gateway
from tests.support.npm_cli import ensure_cli

CODEX_VERSION = "0.171.0"
MARK = "spillway-tool-ran"
SCRIPT = Script(calls={"exec_command": {"cmd": f"echo {MARK}"}}, text="Hello from the model")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def codex() -> Path:
    return ensure_cli("@openai/codex", CODEX_VERSION, "codex")


@pytest.fixture
async def gw() -> AsyncIterator[tuple[Running, FakeToolChat, FakeResponses]]:
    chat = await FakeToolChat(Script(text="Hello from the model")).start()
    native = await FakeResponses(Script(text="Hello from the model")).start()
    running = await start_gateway(config(chat.url, native.url, None))
    yield running, chat, native
    await running.stop()
    await chat.stop()
    await native.stop()


def codex_home(tmp: Path, base_url: str, model: str) -> Path:
    home = tmp / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'model = "{model}"\n'
        'model_provider = "spillway"\n'
        'web_search = "disabled"\n'
        'approval_policy = "never"\n'
        "[model_providers.spillway]\n"
        'name = "Spillway"\n'
        f'base_url = "{base_url}"\n'
        'env_key = "SPILLWAY_API_KEY"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
    )
    return home


async def run_codex(codex: Path, home: Path, workdir: Path, prompt: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_"))}
    env.update(CODEX_HOME=str(home), SPILLWAY_API_KEY=KEY_A, HOME=str(home.parent), NO_COLOR="1")
    proc = await asyncio.create_subprocess_exec(
        str(codex),
        "exec",
        "--skip-git-repo-check",
        "--ephemeral",
        "--color",
        "never",
        "--dangerously-bypass-approvals-and-sandbox",
        "-C",
        str(workdir),
        prompt,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.mark.parametrize("model", ["bridged", "native"])
async def test_codex_exec_plain_and_tool_turns(
    codex: Path, gw: tuple[Running, FakeToolChat, FakeResponses], tmp_path: Path, model: str
) -> None:
    running, chat, native = gw
    home = codex_home(tmp_path, running.base_url, model)
    work = tmp_path / "work"
    work.mkdir()
    seen = chat.seen if model == "bridged" else native.seen

    code, out = await run_codex(codex, home, work, "say hello")
    assert code == 0, out
    assert "Hello from the model" in out
    assert len(seen) == 1 and seen[0].body["stream"] is True

    # the model runs a command through Codex's tool, then answers with its output
    for fake in (chat, native):
        fake.script.calls = dict(SCRIPT.calls)
    code, out = await run_codex(codex, home, work, "run the check")
    assert code == 0, out
    assert f"Result: {MARK}" in out or MARK in out.split("Result:")[-1], out
    assert len(seen) == 3  # the plain turn; then the tool call, and the answer after it
    if model == "bridged":
        last = seen[-1].body["messages"]
        assert last[-2]["tool_calls"][0]["function"]["name"] == "exec_command"
        assert last[-1]["role"] == "tool" and MARK in last[-1]["content"]
    else:
        items = seen[-1].body["input"]
        assert items[-2]["type"] == "function_call" and items[-2]["name"] == "exec_command"
        assert items[-1]["type"] == "function_call_output" and MARK in str(items[-1]["output"])
