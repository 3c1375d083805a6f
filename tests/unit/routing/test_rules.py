"""Routes: the first matching ``when`` wins; model names, aliases and globs."""

from __future__ import annotations

from typing import Any

from multidict import CIMultiDict

from router.routing.rules import Facts, Rules
from tests.support.gateway import make_config


def config() -> dict[str, Any]:
    return {
        "backends": {"sim": {"provider": "simulate"}},
        "pools": {p: {"members": [{"backend": "sim", "model": "m"}]}
                  for p in ("long", "tools", "beta", "eu", "stream", "short", "default")},
        "models": {
            "chat": {
                "aliases": ["gpt-4o", "llama-*"],
                "routes": [
                    {"name": "research-long", "when": {"teams": ["research"],
                                                       "prompt_tokens_over": 1000},
                     "pools": ["long"]},
                    {"when": {"tools": True}, "pools": ["tools"]},
                    {"when": {"headers": {"x-channel": "beta"}}, "pools": ["beta"]},
                    {"when": {"headers": {"x-region": "~eu-(west|north)-[0-9]+"}},
                     "pools": ["eu"]},
                    {"when": {"stream": True, "prompt_tokens_under": 50}, "pools": ["stream"]},
                    {"when": {"prompt_tokens_under": 50}, "pools": ["short"]},
                    {"pools": ["default", "long"]},
                ],
            },
            "embed-*": {"routes": [{"pools": ["default"]}]},
        },
        "teams": {"research": {"models": ["chat"]}, "ops": {"models": ["embed-*"]},
                  "all": {}},
    }  # fmt: skip


def facts(team: str = "ops", *, stream: bool = False, tools: bool = False,
          headers: dict[str, str] | None = None, tokens: int = 100) -> Facts:  # fmt: skip
    return Facts(team=team, stream=stream, tools=tools, headers=CIMultiDict(headers or {}),
                 prompt_tokens=lambda: tokens)  # fmt: skip


def decide(f: Facts) -> tuple[str, tuple[str, ...]]:
    d = Rules(make_config(config())).decide("chat", f)
    assert d is not None
    return d.route_name, d.pools


def test_names_aliases_and_globs() -> None:
    rules = Rules(make_config(config()))
    assert rules.resolve("chat") == "chat"
    assert rules.resolve("gpt-4o") == "chat"
    assert rules.resolve("llama-3.1-70b") == "chat"
    assert rules.resolve("embed-small") == "embed-*"
    assert rules.resolve("gpt-4") is None


def test_team_allowlists() -> None:
    rules = Rules(make_config(config()))
    assert rules.allowed("research", "chat") and not rules.allowed("research", "embed-*")
    assert rules.allowed("ops", "embed-*")
    assert rules.allowed("all", "chat")
    assert not rules.allowed("nobody", "chat")


def test_first_matching_route_wins() -> None:
    assert decide(facts("research", tokens=5000, tools=True)) == ("research-long", ("long",))
    assert decide(facts("research", tokens=1000, tools=True)) == ("chat#1", ("tools",))
    assert decide(facts(tokens=5000)) == ("chat#6", ("default", "long"))


def test_headers_exact_and_regex() -> None:
    assert decide(facts(headers={"X-Channel": "beta"}))[1] == ("beta",)
    assert decide(facts(headers={"x-channel": "beta2"}))[1] == ("default", "long")
    assert decide(facts(headers={"x-region": "eu-west-1"}))[1] == ("eu",)
    assert decide(facts(headers={"x-region": "eu-west-1a"}))[1] == ("default", "long")  # full
    assert decide(facts(headers={"x-region": "us-east-1"}))[1] == ("default", "long")


def test_stream_and_prompt_under() -> None:
    assert decide(facts(stream=True, tokens=10))[1] == ("stream",)
    assert decide(facts(stream=False, tokens=10))[1] == ("short",)
    assert decide(facts(stream=True, tokens=50))[1] == ("default", "long")


def test_prompt_size_is_computed_only_when_asked() -> None:
    calls = []

    def count() -> int:
        calls.append(1)
        return 10

    f = Facts(team="ops", stream=False, tools=True, headers=CIMultiDict(), prompt_tokens=count)
    assert decide(f)[1] == ("tools",)
    assert calls == []  # the first route is for another team: no need to count
