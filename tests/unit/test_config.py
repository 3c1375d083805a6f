"""Config loading: YAML paths in every message, typos, references, ${ENV}."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from router.config import ConfigError
from router.config_load import load_config, parse_config

GOOD = """
backends:
  gpu: {provider: openai, url: "http://10.0.0.11:8000/v1", max_concurrency: 64}
  openai: {provider: openai, url: "https://api.openai.com/v1", api_key: "${OPENAI_API_KEY}"}
  demo: {provider: simulate}
pools:
  llama-local:
    strategy: weighted
    members:
      - {backend: gpu, model: meta-llama/Llama-3.1-8B-Instruct, weight: 2}
      - {backend: demo, model: sim}
    budget: {tokens_per_day: 50000000}
  gpt-hosted:
    members: [{backend: openai, model: gpt-4o-mini}]
    price: {input_per_mtok: 0.15, output_per_mtok: 0.60}
    budget: {usd_per_month: 5000}
models:
  chat:
    aliases: [gpt-4o-mini]
    routes:
      - when: {teams: [research], prompt_tokens_over: 32000}
        pools: [gpt-hosted]
      - pools: [llama-local, gpt-hosted]
teams:
  research:
    models: [chat]
    limits: {requests_per_minute: 600, tokens_per_minute: 400000, concurrent: 32}
    budgets:
      - {tokens_per_day: 2000000}
      - {usd_per_month: 500, pools: [gpt-hosted]}
keys:
  - {id: ci-bot, team: research, sha256: "%s"}
  - {id: alice, team: research, key: "${ALICE_KEY:-sk-alice-default}",
     limits: {requests_per_minute: 60}}
""" % hashlib.sha256(b"sk-ci-bot-secret").hexdigest()  # noqa: UP031


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "t.yaml", env if env is not None else {"OPENAI_API_KEY": "x"})
    return err.value.problems


def test_design_example_loads() -> None:
    cfg = parse_config(GOOD, "t.yaml", {"OPENAI_API_KEY": "sk-openai"})
    assert cfg.backends["openai"].api_key is not None
    assert cfg.backends["openai"].api_key.get_secret_value() == "sk-openai"
    assert "sk-openai" not in repr(cfg)  # secrets don't print
    alice = cfg.keys[1]
    assert alice.key is not None and alice.key.get_secret_value() == "sk-alice-default"
    assert cfg.pools["gpt-hosted"].budget is not None
    assert cfg.pools["gpt-hosted"].budget.amounts() == [("usd", "month", 5000.0)]


def test_missing_env_var_names_it() -> None:
    found = problems(GOOD, env={})
    assert found == ["backends.openai.api_key: environment variable OPENAI_API_KEY is not set"]


def test_unknown_key_is_a_typo() -> None:
    found = problems(GOOD.replace("strategy: weighted", "stratgy: weighted"))
    assert found == ["pools.llama-local.stratgy: unknown key (typo?)"]


def test_undefined_references_name_their_path() -> None:
    text = (
        GOOD.replace("{backend: demo, model: sim}", "{backend: nope, model: sim}")
        .replace("pools: [llama-local, gpt-hosted]", "pools: [llama-local, gpt-hostd]")
        .replace("teams: [research]", "teams: [reserch]")
        .replace("id: alice, team: research", "id: alice, team: nobody")
        .replace("models: [chat]", "models: [chta]")
        .replace("pools: [gpt-hosted]}", "pools: [gtp]}")
    )
    found = problems(text)
    assert "pools.llama-local.members[1].backend: undefined backend 'nope'" in found
    assert "models.chat.routes[1].pools[1]: undefined pool 'gpt-hostd'" in found
    assert "models.chat.routes[0].when.teams[0]: undefined team 'reserch'" in found
    assert "keys[1].team: undefined team 'nobody'" in found
    assert "teams.research.models[0]: undefined model 'chta'" in found
    assert "teams.research.budgets[1].pools[0]: undefined pool 'gtp'" in found


def test_value_errors_name_their_path() -> None:
    found = problems(
        GOOD.replace("weight: 2", "weight: -1").replace(
            "max_concurrency: 64", "max_concurrency: many"
        )
    )
    assert any(p.startswith("pools.llama-local.members[0].weight:") for p in found)
    assert any(p.startswith("backends.gpu.max_concurrency:") for p in found)


def test_key_needs_one_secret_and_duplicates_are_errors() -> None:
    text = GOOD.replace(
        'key: "${ALICE_KEY:-sk-alice-default}"',
        f'sha256: "{hashlib.sha256(b"sk-ci-bot-secret").hexdigest()}"',
    )
    assert "keys[1]: the same secret is already used by another key" in problems(text)
    text = GOOD.replace("{id: alice,", "{id: ci-bot,")
    assert "keys[1].id: duplicate key id 'ci-bot'" in problems(text)


def test_budget_needs_an_amount_and_provider_urls() -> None:
    found = problems(GOOD.replace("budget: {tokens_per_day: 50000000}", "budget: {}"))
    assert found == [
        "pools.llama-local.budget: a budget needs at least one of tokens_per_* or usd_per_*"
    ]
    found = problems(
        GOOD.replace(
            'gpu: {provider: openai, url: "http://10.0.0.11:8000/v1",', "gpu: {provider: openai,"
        )
    )
    assert found == ["backends.gpu: provider 'openai' needs url"]


def test_env_default_and_dollar_escape() -> None:
    text = GOOD.replace("model: gpt-4o-mini}]", 'model: "${MODEL:-gpt-4o}$$"}]')
    cfg = parse_config(text, "t.yaml", {"OPENAI_API_KEY": "x"})
    assert cfg.pools["gpt-hosted"].members[0].model == "gpt-4o$"


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    assert problems("backends: [")[0].startswith("invalid YAML")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "absent.yaml")
    assert "cannot read" in err.value.problems[0]


def test_packaged_default_and_repo_copy_load() -> None:
    cfg = load_config(None, env={})
    assert cfg.backends["sim"].provider == "simulate"
    assert cfg.redis.url == ""
    repo = Path(__file__).parents[2] / "config" / "spillway.yaml"
    assert load_config(repo, env={}) == cfg


def test_queue_weight_priority_and_prefix_affinity_load() -> None:
    text = GOOD.replace(
        "    strategy: weighted\n",
        "    strategy: prefix_affinity\n    prefix_affinity: {epsilon: 0.5}\n"
        "    queue: {max_wait_ms: 1500, max_depth: 50, min_share: 0.2}\n",
    ).replace("    models: [chat]\n", "    models: [chat]\n    weight: 3\n    priority: 7\n")
    cfg = parse_config(text, "t.yaml", {"OPENAI_API_KEY": "x"})
    pool = cfg.pools["llama-local"]
    assert pool.strategy == "prefix_affinity" and pool.prefix_affinity.epsilon == 0.5
    assert pool.queue is not None
    assert (pool.queue.max_wait_ms, pool.queue.max_depth, pool.queue.min_share) == (1500, 50, 0.2)
    assert cfg.pools["gpt-hosted"].queue is None  # no queue: spill at once, as before
    team = cfg.teams["research"]
    assert (team.weight, team.priority) == (3.0, 7)


@pytest.mark.parametrize(
    ("fragment", "path"),
    [
        ("queue: {max_wait_ms: 0}", "pools.llama-local.queue.max_wait_ms:"),
        ("queue: {max_depth: -1}", "pools.llama-local.queue.max_depth:"),
        ("queue: {min_share: 0.8}", "pools.llama-local.queue.min_share:"),
        ("queue: {max_wait: 10}", "pools.llama-local.queue.max_wait: unknown key"),
        ("prefix_affinity: {epsilon: 0}", "pools.llama-local.prefix_affinity.epsilon:"),
    ],
)
def test_bad_queue_and_prefix_settings_name_their_path(fragment: str, path: str) -> None:
    found = problems(GOOD.replace("    strategy: weighted\n", f"    {fragment}\n"))
    assert any(p.startswith(path) for p in found), found


def test_bad_team_weight_and_priority() -> None:
    bad = "    models: [chat]\n    weight: 0\n    priority: 5000\n"
    found = problems(GOOD.replace("    models: [chat]\n", bad))
    assert "teams.research.weight: Input should be greater than 0" in found
    assert "teams.research.priority: Input should be less than or equal to 1000" in found


def test_min_share_must_leave_the_top_band_something() -> None:
    teams = "".join(f"  t{i}: {{priority: {i}}}\n" for i in range(1, 5))  # bands 0..4
    text = GOOD.replace("    strategy: weighted\n", "    queue: {min_share: 0.3}\n").replace(
        "keys:\n", teams + "keys:\n"
    )
    found = problems(text)
    assert any(p.startswith("pools.llama-local.queue.min_share: 4 priority bands") for p in found)
    parse_config(
        text.replace("min_share: 0.3", "min_share: 0.2"), "t.yaml", {"OPENAI_API_KEY": "x"}
    )


def test_metrics_port_needs_a_port_of_its_own() -> None:
    base = {"backends": {"s": {"provider": "simulate"}},
            "pools": {"p": {"members": [{"backend": "s", "model": "m"}]}},
            "models": {"m": {"routes": [{"pools": ["p"]}]}}}  # fmt: skip
    ok = parse_config(yaml.safe_dump({**base, "server": {"metrics_port": 9090}}), "t", env={})
    assert ok.server.metrics_port == 9090
    assert parse_config(yaml.safe_dump(base), "t", env={}).server.metrics_port is None
    clash = {**base, "listen": {"port": 9090}, "server": {"metrics_port": 9090}}
    with pytest.raises(ConfigError, match=r"server.metrics_port: 9090 is listen.port"):
        parse_config(yaml.safe_dump(clash), "t", env={})
