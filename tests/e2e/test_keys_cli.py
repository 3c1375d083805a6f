"""``spillway keys create|list|get|rotate|revoke --url`` against a real gateway process
(real PostgreSQL), and the keys it makes used with the openai SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import openai
import pytest

from router.cli import main
from tests.support.gateway import GatewayProcess
from tests.support.keys import ADMIN_TOKEN, identity_config
from tests.support.net import free_port

CLI = [sys.executable, "-m", "router", "keys"]


def keys(*args: str, token: str | None = ADMIN_TOKEN) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: its own process."""
    env = {k: v for k, v in os.environ.items() if k != "SPILLWAY_ADMIN_TOKEN"}
    if token is not None:
        env["SPILLWAY_ADMIN_TOKEN"] = token
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env,
                          check=False)  # fmt: skip


@pytest.fixture
def run_keys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The same command run in this process (the suite stays quick)."""

    def run(*args: str, token: str | None = ADMIN_TOKEN) -> subprocess.CompletedProcess[str]:
        if token is None:
            monkeypatch.delenv("SPILLWAY_ADMIN_TOKEN", raising=False)
        else:
            monkeypatch.setenv("SPILLWAY_ADMIN_TOKEN", token)
        try:
            code = main(["keys", *args])
        except SystemExit as exc:  # argparse refusing the arguments
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run


def works(gw: GatewayProcess, secret: str) -> bool:
    with openai.OpenAI(base_url=gw.base_url, api_key=secret, max_retries=0) as c:
        try:
            c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
        except openai.AuthenticationError:
            return False
    return True


@pytest.fixture
def gateway(database_url: str, db_schema: str) -> Iterator[tuple[GatewayProcess, str]]:
    port = free_port()
    gw = GatewayProcess(identity_config(database_url, db_schema, admin_port=port))
    yield gw, f"http://127.0.0.1:{port}"
    gw.stop()


def test_the_key_admin_workflow(
    gateway: tuple[GatewayProcess, str], run_keys: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    gw, url = gateway
    made = keys("create", "dev-1", "--url", url, "--team", "eng", "--rpm", "30",
                "--model", "chat", "--budget", '{"usd_per_month": 5}')  # fmt: skip
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    secret = doc["secret"]
    assert doc["limits"] == {"requests_per_minute": 30} and doc["models"] == ["chat"]
    assert "shown only now" in made.stderr
    assert works(gw, secret)

    listed = run_keys("list", "--url", url)
    assert listed.returncode == 0 and listed.stdout.startswith("dev-1\tteam=eng\tactive")
    assert secret not in listed.stdout

    rotated = run_keys("rotate", "dev-1", "--url", url, "--grace", "600", "--json")
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout)["secret"]
    assert works(gw, new) and works(gw, secret)  # the old one during its grace period

    revoked = run_keys("revoke", "dev-1", "--url", url)
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked_at"]
    assert not works(gw, new) and not works(gw, secret)
    assert "revoked" in run_keys("list", "--url", url, "--all").stdout


def test_cli_errors_are_plain(
    gateway: tuple[GatewayProcess, str], run_keys: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    _, url = gateway
    keys = run_keys
    no_token = keys("list", "--url", url, token=None)
    assert no_token.returncode == 1 and "SPILLWAY_ADMIN_TOKEN" in no_token.stderr
    wrong = keys("list", "--url", url, token="wrong-token")
    assert wrong.returncode == 1 and "HTTP 401: Incorrect admin token." in wrong.stderr
    missing = keys("get", "nobody", "--url", url)
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr
    bad_team = keys("create", "--url", url, "--team", "nope")
    assert bad_team.returncode == 1 and "Unknown team 'nope'" in bad_team.stderr
    no_id = keys("revoke", "--url", url)
    assert no_id.returncode == 2 and "needs the key id" in no_id.stderr
    gone = keys("list", "--url", f"http://127.0.0.1:{free_port()}")
    assert gone.returncode == 1 and "refused" in gone.stderr.lower()
