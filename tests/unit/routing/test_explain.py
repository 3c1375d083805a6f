"""`spillway explain` on the config alone: the route, the pools, the reasons."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml
from multidict import CIMultiDict

from router.cli import main
from router.routing.explain import explain, render
from router.routing.rules import Facts, Rules
from tests.support.gateway import make_config

CONFIG: dict[str, Any] = {
    "backends": {
        "gpu-a": {"provider": "openai", "url": "http://10.0.0.11:8000/v1",
                  "metrics_url": "http://10.0.0.11:8000/metrics", "max_concurrency": 64},
        "gpu-b": {"provider": "openai", "url": "http://10.0.0.12:8000/v1"},
        "openai": {"provider": "openai", "url": "https://api.openai.com/v1"},
    },
    "pools": {
        "llama-local": {"strategy": "least_loaded", "max_waiting": 8, "affinity": "user",
                        "members": [{"backend": "gpu-a", "model": "llama"},
                                    {"backend": "gpu-b", "model": "llama"}],
                        "budget": {"tokens_per_day": 50000000}},
        "gpt-hosted": {"members": [{"backend": "openai", "model": "gpt-4o-mini"}],
                       "budget": {"usd_per_month": 5000}},
    },
    "models": {"chat": {"aliases": ["gpt-4o-mini", "llama-*"], "routes": [
        {"name": "research-long", "when": {"teams": ["research"], "prompt_tokens_over": 32000},
         "pools": ["gpt-hosted"]},
        {"when": {"headers": {"x-tier": "~gold|platinum"}, "stream": True},
         "pools": ["gpt-hosted", "llama-local"]},
        {"when": {"tools": True, "prompt_tokens_under": 100}, "pools": ["llama-local"]},
        {"pools": ["llama-local", "gpt-hosted"]},
    ]}},
    "teams": {"research": {"models": ["chat"], "budgets": [
        {"tokens_per_day": 2000000}, {"usd_per_month": 500, "pools": ["gpt-hosted"]}]},
        "ops": {"models": []}, "eng": {}},
}  # fmt: skip


def test_chosen_route_and_pools_with_reasons() -> None:
    doc = explain(make_config(CONFIG), team="research", model="llama-3", prompt_tokens=1200,
                  headers={"X-Tier": "silver"})  # fmt: skip
    assert doc["problem"] is None and doc["model"] == "chat"
    assert doc["route"] == "chat#3"
    assert [r["matches"] for r in doc["routes"]] == [False, False, False, True]
    first = doc["routes"][0]["conditions"]
    assert [c["holds"] for c in first] == [True, False]
    assert "prompt_tokens_over 32000: 1200" in first[1]["what"]
    assert [p["pool"] for p in doc["pools"]] == ["llama-local", "gpt-hosted"]
    local, hosted = doc["pools"]
    assert local["skipped_if"]["saturated"] == [
        "every healthy member is at max_concurrency (gpu-a 64, gpu-b no limit) "
        "or more than 8 waiting (scraped: gpu-a)"
    ]
    assert any("usd_per_month 500.00 (pools gpt-hosted)" in b
               for b in hosted["skipped_if"]["budget"])  # fmt: skip
    assert not any("pools gpt-hosted" in b for b in local["skipped_if"]["budget"])
    assert hosted["skipped_if"]["saturated"] == ["never (no max_concurrency, no max_waiting)"]
    assert doc["unknown"]  # says what it cannot know
    assert "by glob" in " ".join(doc["notes"])
    text = render(doc)
    assert "route taken: chat#3" in text
    assert "1. llama-local" in text and "2. gpt-hosted" in text
    assert "not known from the config alone" in text


def test_problems() -> None:
    cfg = make_config(CONFIG)
    assert "404" in explain(cfg, team="research", model="nope", prompt_tokens=1,
                            headers={})["problem"]  # fmt: skip
    assert "403" in explain(cfg, team="ops", model="chat", prompt_tokens=1, headers={})["problem"]
    assert "not configured" in explain(cfg, team="x", model="chat", prompt_tokens=1,
                                       headers={})["problem"]  # fmt: skip


def test_explain_agrees_with_the_router_on_every_combination() -> None:
    cfg = make_config(CONFIG)
    rules = Rules(cfg)
    combos = itertools.product(
        ["research", "eng"], [False, True], [False, True],
        [{}, {"x-tier": "gold"}, {"X-TIER": "platinum"}, {"x-tier": "golden"}],
        [10, 500, 40000],
    )  # fmt: skip
    for team, stream, tools, headers, size in combos:
        doc = explain(cfg, team=team, model="chat", prompt_tokens=size, headers=headers,
                      stream=stream, tools=tools)  # fmt: skip
        facts = Facts(team=team, stream=stream, tools=tools,
                      headers=CIMultiDict(headers), prompt_tokens=lambda s=size: s)  # fmt: skip
        decision = rules.decide("chat", facts)
        assert decision is not None
        assert doc["route"] == decision.route_name, (team, stream, tools, headers, size)
        assert [p["pool"] for p in doc["pools"]] == list(decision.pools)
        # the chosen route is the first whose every condition holds
        assert [r["matches"] for r in doc["routes"]][-1] is True
        assert not any(r["matches"] for r in doc["routes"][:-1])


def test_cli_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spillway.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    code = main(["explain", "--config", str(path), "--team", "research", "--model", "chat",
                 "--prompt-tokens", "50", "--header", "x-tier=gold", "--stream"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "MATCH chat#1 -> gpt-hosted, llama-local" in out
    assert "yes  header x-tier matches /gold|platinum/: sent 'gold'" in out
    assert "skipped if a budget is spent" in out
    code = main(["explain", "--config", str(path), "--team", "research", "--model", "chat",
                 "--tools", "--prompt-tokens", "50", "--json"])  # fmt: skip
    doc = yaml.safe_load(capsys.readouterr().out)  # JSON is YAML
    assert code == 0 and doc["route"] == "chat#2" and doc["pools"][0]["pool"] == "llama-local"
    assert main(["explain", "--config", str(path), "--team", "ops", "--model", "chat"]) == 1
    assert "403" in capsys.readouterr().out
    assert main(["explain", "--config", str(path), "--model", "chat"]) == 2
    assert main(["explain", "--config", str(path), "--team", "research", "--model", "chat",
                 "--header", "novalue"]) == 2  # fmt: skip
    assert "NAME=VALUE" in capsys.readouterr().err


def queued_config() -> dict[str, Any]:
    doc = {**CONFIG, "pools": dict(CONFIG["pools"]), "teams": dict(CONFIG["teams"])}
    doc["pools"]["llama-local"] = {**CONFIG["pools"]["llama-local"],
                                   "queue": {"max_wait_ms": 2500, "max_depth": 64}}  # fmt: skip
    doc["teams"]["eng"] = {"weight": 2, "priority": 5}
    doc["teams"]["batch"] = {"priority": -1}
    return doc


def test_a_queued_pool_explains_its_wait() -> None:
    cfg = make_config(queued_config())
    doc = explain(cfg, team="eng", model="chat", prompt_tokens=10, headers={})
    local = next(p for p in doc["pools"] if p["pool"] == "llama-local")
    assert (
        "waits up to 2500 ms" in local["queue"]
        and "priority band (this request: 5)" in (local["queue"])
    )
    assert "weight (team 'eng': 2)" in local["queue"]
    assert local["skipped_if"]["saturated"][0].endswith("after waiting in its queue")
    assert "when saturated: waits up to 2500 ms" in render(doc)
    assert next(p for p in doc["pools"] if p["pool"] == "gpt-hosted")["queue"] is None
    lowered = explain(cfg, team="eng", model="chat", prompt_tokens=10,
                      headers={"x-spillway-priority": "3"})  # fmt: skip
    assert "this request: 0 (x-spillway-priority: 3)" in lowered["pools"][0]["queue"]
    raised = explain(cfg, team="eng", model="chat", prompt_tokens=10,
                     headers={"x-spillway-priority": "99"})  # fmt: skip
    assert "this request: 5 " in raised["pools"][0]["queue"]  # never raised
    shed = explain(cfg, team="batch", model="chat", prompt_tokens=10, headers={})
    assert "sheddable: never queued" in shed["pools"][0]["queue"]
    assert "after waiting" not in shed["pools"][0]["skipped_if"]["saturated"][0]
    bad = explain(cfg, team="eng", model="chat", prompt_tokens=10,
                  headers={"x-spillway-priority": "soon"})  # fmt: skip
    assert "refused (400)" in bad["pools"][0]["queue"]
