"""The per-request log line of a real ``spillway serve`` process, and secrets.

No client key and no backend credential may appear in the logs (at DEBUG),
in /metrics, or in any error message a client gets, whatever goes wrong.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.gateway import GatewayProcess
from tests.support.net import free_port

CLIENT_KEY = "sk-client-SECRET-4f1c9a2b7e"
OTHER_KEY = "sk-other-SECRET-77d0e1f2a3"
UPSTREAM_KEY = "sk-upstream-SECRET-9b8c7d6e5f"
ECHO_KEY = "sk-echoed-SECRET-1a2b3c4d5e"
WRONG_KEY = "sk-wrong-SECRET-0f0f0f0f0f"
SECRETS = (CLIENT_KEY, OTHER_KEY, UPSTREAM_KEY, ECHO_KEY, WRONG_KEY, "SECRET")
ENV = {"CLIENT_KEY": CLIENT_KEY, "OTHER_KEY": OTHER_KEY, "UPSTREAM_KEY": UPSTREAM_KEY,
       "ECHO_KEY": ECHO_KEY}  # fmt: skip

ACCESS_FIELDS = {
    "ts", "level", "logger", "msg", "request_id", "endpoint", "team", "key_id", "model", "pool",
    "backend",
    "status", "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms",
}  # fmt: skip


def config(good: FakeOpenAI, echo: FakeOpenAI, logging: dict[str, Any]) -> dict[str, Any]:
    return {
        "logging": logging,
        "backends": {
            "gpu": {"provider": "openai", "url": good.url, "api_key": "${UPSTREAM_KEY}"},
            "echo": {
                "provider": "openai",
                "url": echo.url,
                "api_key": "${ECHO_KEY}",
                "flavour": "openai",
            },
            "gone": {
                "provider": "openai",
                "url": f"http://127.0.0.1:{free_port()}/v1",
                "api_key": "${UPSTREAM_KEY}",
            },
        },
        "pools": {
            "local": {
                "members": [{"backend": "gpu", "model": "llama"}],
                "price": {"input_per_mtok": 1, "output_per_mtok": 1},
            },
            "hosted": {"members": [{"backend": "echo", "model": "gpt"}]},
            "down": {"members": [{"backend": "gone", "model": "x"}]},
        },
        "models": {
            "chat": {"routes": [{"pools": ["local"]}]},
            "hosted": {"routes": [{"pools": ["hosted"]}]},
            "down": {"routes": [{"pools": ["down"]}]},
        },
        "teams": {
            "research": {"budgets": [{"tokens_per_day": 100000}]},
            "ops": {"models": ["chat"]},
        },
        "keys": [
            {"id": "ci-bot", "team": "research", "key": "${CLIENT_KEY}"},
            {
                "id": "ops-bot",
                "team": "ops",
                "key": "${OTHER_KEY}",
                "limits": {"requests_per_minute": 1},
            },
        ],
    }


@pytest.fixture
async def echo() -> AsyncIterator[FakeOpenAI]:
    """An upstream that refuses its credential and quotes it back, as some servers do."""
    fake = await FakeOpenAI(
        "echo", Behaviour(status=401, error_message=f"Invalid API key: {ECHO_KEY}")
    ).start()
    yield fake
    await fake.stop()


def access_lines(log: str) -> list[dict[str, Any]]:
    """The lines of the model endpoints' requests (not the health checks' lines)."""
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("logger") == "spillway.access" and "endpoint" in doc:
                out.append(doc)
    return out


async def test_one_json_line_per_request(upstream: FakeOpenAI, echo: FakeOpenAI) -> None:
    gw = GatewayProcess(config(upstream, echo, {"level": "INFO"}), env=ENV)
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=CLIENT_KEY,
                                      max_retries=0) as c:  # fmt: skip
            raw = await c.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": "hi there"}], max_tokens=3,
                stream=True, stream_options={"include_usage": True},
            )  # fmt: skip
            rid = raw.headers["x-request-id"]
            usages = [ch.usage async for ch in raw.parse() if ch.usage is not None]
            usage = usages[0]
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=WRONG_KEY,
                                      max_retries=0) as c:  # fmt: skip
            with pytest.raises(openai.AuthenticationError):
                await c.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "x"}]
                )
        gw.stop()
        lines = access_lines(gw.log())
    finally:
        gw.stop()
    assert len(lines) == 2
    ok, denied = lines
    assert set(ok) == ACCESS_FIELDS
    assert ok["request_id"] == rid
    assert ok["endpoint"] == denied["endpoint"] == "chat"
    assert ok["level"] == "info" and ok["msg"] == "request"
    assert ok["ts"].endswith("Z") and len(ok["ts"]) == len("2024-01-01T00:00:00.000Z")
    assert (ok["team"], ok["key_id"], ok["model"], ok["pool"], ok["backend"]) == (
        "research",
        "ci-bot",
        "chat",
        "local",
        "gpu",
    )
    assert ok["status"] == 200
    assert (ok["prompt_tokens"], ok["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert 0 < ok["ttft_ms"] <= ok["latency_ms"]
    assert denied["status"] == 401 and denied["key_id"] is None and denied["team"] is None


async def test_text_format_and_level(upstream: FakeOpenAI, echo: FakeOpenAI) -> None:
    for logging, want in (({"format": "text"}, 1), ({"level": "WARNING"}, 0),
                          ({"requests": False}, 0)):  # fmt: skip
        gw = GatewayProcess(config(upstream, echo, logging), env=ENV)
        try:
            async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=CLIENT_KEY,
                                          max_retries=0) as c:  # fmt: skip
                await c.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
        finally:
            gw.stop()
        log = gw.log()
        assert not access_lines(log)
        text = [ln for ln in log.splitlines()
                if " spillway.access: request " in ln and " endpoint=" in ln]  # fmt: skip
        assert len(text) == want, (logging, log)
        if want:
            assert "team=research" in text[0] and "key_id=ci-bot" in text[0]
            assert "status=200" in text[0] and "backend=gpu" in text[0]


async def _exercise(gw: GatewayProcess) -> list[str]:
    """Everything that can go wrong, and what each client was told."""
    told: list[str] = []
    async with aiohttp.ClientSession() as s:

        async def post(headers: dict[str, str], model: str = "chat", **body: Any) -> None:
            doc = {"model": model, "messages": [{"role": "user", "content": "hello"}], **body}
            async with s.post(gw.base_url + "/chat/completions", json=doc,
                              headers=headers) as r:  # fmt: skip
                told.append(f"{r.status} {dict(r.headers)} {await r.text()}")

        good = {"Authorization": f"Bearer {CLIENT_KEY}"}
        await post(good, max_tokens=3)
        await post(good, max_tokens=3, stream=True)
        await post(good, model="hosted")  # upstream refuses and quotes its key: a 502
        await post(good, model="down")  # upstream unreachable
        await post(good, model="nope")
        await post(good, max_tokens=-5)
        await post({"Authorization": f"Bearer {WRONG_KEY}"})
        await post({"Authorization": f"Basic {WRONG_KEY}"})
        await post({"Authorization": WRONG_KEY})
        await post({"api-key": WRONG_KEY})
        other = {"Authorization": f"Bearer {OTHER_KEY}"}
        await post(other, max_tokens=2)
        await post(other, max_tokens=2)  # rate limited
        await post(other, model="hosted")  # not allowed
        for path in ("/v1/models", "/v1/quota"):
            for h in (good, {"Authorization": f"Bearer {WRONG_KEY}"}):
                async with s.get(gw.url + path, headers=h) as r:
                    told.append(f"{r.status} {await r.text()}")
        async with s.get(gw.url + "/metrics") as r:
            told.append(await r.text())
    return told


async def test_secrets_never_leak(upstream: FakeOpenAI, echo: FakeOpenAI) -> None:
    gw = GatewayProcess(config(upstream, echo, {"level": "DEBUG"}), env=ENV)
    try:
        told = await _exercise(gw)
    finally:
        gw.stop()
    log = gw.log()
    statuses = [t.split(" ", 1)[0] for t in told[:13]]
    assert statuses == ["200", "200", "502", "502", "404", "400", "401", "401", "401", "401",
                        "200", "429", "403"]  # fmt: skip
    # the gateway did send its credentials upstream, and logged every request
    assert upstream.seen[0].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert echo.seen[0].headers["Authorization"] == f"Bearer {ECHO_KEY}"
    assert len(access_lines(log)) == 13
    metrics = told[-1]
    assert "key_id" not in metrics and "spillway_requests_total" in metrics
    for secret in SECRETS:
        assert secret not in log
        for answer in told:
            assert secret not in answer, answer


def test_config_errors_never_show_secrets(tmp_path: Path) -> None:
    doc = yaml.safe_load(yaml.safe_dump({
        "backends": {"gpu": {"provider": "openai", "url": "http://127.0.0.1:9/v1",
                             "api_key": UPSTREAM_KEY, "bogus": 1}},
        "pools": {"p": {"members": [{"backend": "gpu", "model": "m"}]}},
        "models": {"m": {"routes": [{"pools": ["p"]}]}},
        "teams": {"t": {}},
        "keys": [{"id": "a", "team": "t", "key": CLIENT_KEY, "sha256": "ab" * 32},
                 {"id": "b", "team": "nope", "key": OTHER_KEY}],
    }))  # fmt: skip
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run(
        [sys.executable, "-m", "router", "check", str(path)], capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert "backends.gpu.bogus" in out.stderr
    for secret in SECRETS:
        assert secret not in out.stdout + out.stderr
