"""models.X.kind: embeddings models only on backends with an embeddings endpoint
(found by ``spillway check``), one kind of model per pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.cli import main
from router.config import ConfigError
from router.config_load import parse_config

BASE = """
backends:
  gpu: {provider: openai, url: "http://10.0.0.11:8000/v1"}
  azure: {provider: azure, url: "https://x.openai.azure.com", api_key: "azure-key-0000"}
  claude: {provider: anthropic, api_key: "sk-ant-000000000"}
  sim: {provider: simulate}
pools:
  vectors: {members: [{backend: gpu, model: bge}, {backend: azure, model: emb}]}
  simulated: {members: [{backend: sim, model: s}]}
  chat: {members: [{backend: gpu, model: llama}, {backend: claude, model: claude-x}]}
  claude-only: {members: [{backend: claude, model: claude-x}]}
models:
  chat: {routes: [{pools: [chat]}]}
"""


def test_embeddings_models_load_with_their_kind() -> None:
    cfg = parse_config(
        BASE + "  embed: {kind: embeddings, routes: [{pools: [vectors, simulated]}]}\n"
    )
    assert cfg.models["embed"].kind == "embeddings"
    assert cfg.models["chat"].kind == "chat"  # the default


def test_embeddings_on_anthropic_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        BASE + "  embed: {kind: embeddings, routes: [{pools: [vectors]}, {pools: [claude-only]}]}\n"
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert err.value.problems == [
        "models.embed.routes[1].pools[0]: embeddings model 'embed' is routed to pool "
        "'claude-only', whose member 0 (backend 'claude', provider 'anthropic') has no "
        "embeddings endpoint"
    ]
    path = tmp_path / "spillway.yaml"
    path.write_text(text)
    assert main(["check", str(path)]) == 1
    assert "has no embeddings endpoint" in capsys.readouterr().err


def test_a_pool_serves_one_kind_of_model() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + "  embed: {kind: embeddings, routes: [{pools: [simulated]}]}\n"
                     "  other: {routes: [{pools: [simulated]}]}\n")  # fmt: skip
    assert err.value.problems == [
        "models.other.routes[0].pools[0]: pool 'simulated' already serves embeddings model "
        "'embed'; a pool serves one kind of model"
    ]


def test_unknown_kind_names_its_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + "  embed: {kind: rerank, routes: [{pools: [vectors]}]}\n")
    assert err.value.problems[0].startswith("models.embed.kind: Input should be 'chat' or")


def test_tokenize_only_on_vllm_members() -> None:
    cfg = parse_config(BASE.replace("model: llama}", "model: llama, tokenize: true}"))
    assert cfg.pools["chat"].members[0].tokenize
    with pytest.raises(ConfigError) as err:
        parse_config(BASE.replace("model: claude-x}]}\nmodels", "model: claude-x, "
                                  "tokenize: true}]}\nmodels"))  # fmt: skip
    assert err.value.problems == [
        "pools.claude-only.members[0].tokenize: backend 'claude' (provider 'anthropic') is "
        "not a vLLM server with /tokenize"
    ]
