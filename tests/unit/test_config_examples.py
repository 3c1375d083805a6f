"""Every example under config/examples passes ``spillway check`` and builds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from router.cli import main
from router.config_load import load_config
from router.providers import build_backend
from router.upstream import Upstream

EXAMPLES = sorted((Path(__file__).parent.parent.parent / "config" / "examples").glob("*.yaml"))
_REQUIRED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # ${VAR} without a :-default


def dummy_env(path: Path) -> dict[str, str]:
    return {name: f"dummy-{name.lower()}-0123" for name in _REQUIRED.findall(path.read_text())}


def test_an_example_for_each_provider() -> None:
    names = {p.stem for p in EXAMPLES}
    assert names >= {
        "poolside",
        "openai",
        "together",
        "groq",
        "mistral",
        "gemini",
        "anthropic",
        "azure",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_passes_check(
    path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = dummy_env(path)
    for name in env:
        monkeypatch.delenv(name, raising=False)
    assert main(["check", str(path)]) == 1  # the secrets are required...
    missing = capsys.readouterr().err
    assert all(f"environment variable {name} is not set" in missing for name in env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["check", str(path)]) == 0  # ...and with them the example is valid
    assert f"{path}: ok" in capsys.readouterr().out


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
async def test_example_backends_build(path: Path) -> None:
    cfg = load_config(path, env=dummy_env(path))
    upstream = Upstream()
    try:
        for name, backend in cfg.backends.items():
            built = build_backend(name, backend, upstream)
            assert built.cfg is backend and built.name == name
    finally:
        await upstream.close()


def test_an_example_serves_embeddings_and_fim_on_vllm() -> None:
    path = next(p for p in EXAMPLES if p.stem == "code-and-embeddings")
    cfg = load_config(path, env=dummy_env(path))
    embeds = [name for name, m in cfg.models.items() if m.kind == "embeddings"]
    assert embeds
    fim = [(m.fim, cfg.backends[m.backend]) for p in cfg.pools.values() for m in p.members
           if m.fim is not None]  # fmt: skip
    assert any(f == "qwen-coder" and b.flavour == "vllm" for f, b in fim)
