"""Fill-in-the-middle templates: each family's prompt as its model card writes it."""

from __future__ import annotations

from typing import Any

import pytest

from router.config import ConfigError, FimTemplateConfig
from router.fim import PRESETS, infill
from tests.support.gateway import make_config

PRE, SUF = "def f(x):\n    ", "\n    return y\n"


@pytest.mark.parametrize(
    ("preset", "prompt", "stops"),
    [
        ("starcoder", f"<fim_prefix>{PRE}<fim_suffix>{SUF}<fim_middle>",
         ["<|endoftext|>", "<file_sep>"]),
        ("codellama", f"<PRE> {PRE} <SUF>{SUF} <MID>", ["<EOT>"]),
        ("deepseek-coder",
         f"<\uff5cfim\u2581begin\uff5c>{PRE}<\uff5cfim\u2581hole\uff5c>{SUF}"
         "<\uff5cfim\u2581end\uff5c>", ["<\uff5cend\u2581of\u2581sentence\uff5c>"]),
        ("qwen-coder", f"<|fim_prefix|>{PRE}<|fim_suffix|>{SUF}<|fim_middle|>",
         ["<|endoftext|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]),
        ("codestral", f"[SUFFIX]{SUF}[PREFIX]{PRE}", ["</s>"]),
    ],
)  # fmt: skip
def test_presets_follow_the_model_cards(preset: str, prompt: str, stops: list[str]) -> None:
    body: dict[str, Any] = {"model": "m", "prompt": PRE, "suffix": SUF, "max_tokens": 8}
    infill(body, PRESETS[preset])
    assert body == {"model": "m", "prompt": prompt, "max_tokens": 8, "stop": stops}


def test_every_prompt_of_a_list_is_filled_and_client_stops_are_kept() -> None:
    body: dict[str, Any] = {"prompt": ["a", "b"], "suffix": "z", "stop": ["\n"]}
    infill(body, PRESETS["starcoder"])
    assert body["prompt"] == ["<fim_prefix>a<fim_suffix>z<fim_middle>",
                              "<fim_prefix>b<fim_suffix>z<fim_middle>"]  # fmt: skip
    assert body["stop"] == ["\n"] and "suffix" not in body


def test_explicit_template_and_order() -> None:
    spm = FimTemplateConfig(prefix="<P>", suffix="<S>", middle="<M>", order="spm", stop=["<E>"])
    body: dict[str, Any] = {"prompt": "pre", "suffix": "suf"}
    infill(body, spm.template())
    assert body == {"prompt": "<S>suf<P>pre<M>", "stop": ["<E>"]}


def _cfg(fim: Any, provider: str = "openai") -> dict[str, Any]:
    backend: dict[str, Any] = {"provider": provider}
    if provider == "openai":
        backend["url"] = "http://gpu:8000/v1"
    return {
        "backends": {"b": backend},
        "pools": {"p": {"members": [{"backend": "b", "model": "m", "fim": fim}]}},
        "models": {"code": {"routes": [{"pools": ["p"]}]}},
    }


@pytest.mark.parametrize(
    ("fim", "provider", "problem"),
    [
        ("starcoderz", "openai", "pools.p.members[0].fim: 'starcoderz' is not one of native,"),
        ({"prefix": "x" * 300, "suffix": "y"}, "openai", "over 256 bytes"),
        ({"prefix": "<P>"}, "openai", "pools.p.members[0].fim: template suffix: Field required"),
        ({"prefix": "<P>", "suffix": "<S>", "midle": ""}, "openai",
         "pools.p.members[0].fim: template midle: unknown key"),
        ("native", "anthropic", "pools.p.members[0].fim: backend 'b' (provider 'anthropic') "
         "has no completions endpoint"),
    ],
)  # fmt: skip
def test_bad_fim_settings_are_config_errors(fim: Any, provider: str, problem: str) -> None:
    if provider == "anthropic":
        doc = _cfg(fim, provider)
        doc["backends"]["b"]["api_key"] = "sk-ant-0000000"
    else:
        doc = _cfg(fim)
    with pytest.raises(ConfigError) as err:
        make_config(doc)
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_good_fim_settings_load() -> None:
    for fim in ["native", *PRESETS, {"prefix": "<P>", "suffix": "<S>", "middle": "<M>"}]:
        cfg = make_config(_cfg(fim))
        member = cfg.pools["p"].members[0]
        assert member.fim is not None
        if isinstance(fim, str) and fim in PRESETS:
            assert member.fim_template() is PRESETS[fim]
