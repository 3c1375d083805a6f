"""The GPU-fleet example config is valid and routes as its comments say."""

from __future__ import annotations

from pathlib import Path

from router.config_load import load_config
from router.routing.explain import explain

EXAMPLE = Path(__file__).parents[3] / "config" / "examples" / "gpu-fleet.yaml"


def test_gpu_fleet_example() -> None:
    cfg = load_config(EXAMPLE, env={"OPENAI_API_KEY": "sk-x"})
    assert cfg.routing.retries.budget_ratio == 0.2
    assert cfg.backends["gpu-a"].metrics_url
    doc = explain(cfg, team="research", model="llama-3", prompt_tokens=100, headers={})
    assert doc["route"] == "local-first"
    assert [p["pool"] for p in doc["pools"]] == ["llama-local", "gpt-hosted"]
    doc = explain(cfg, team="research", model="chat", prompt_tokens=100,
                  headers={"x-tier": "gold"})  # fmt: skip
    assert doc["route"] == "premium"
