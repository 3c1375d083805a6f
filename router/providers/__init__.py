"""Wire protocols. ``build_backend`` makes the runtime object for one backend."""

from __future__ import annotations

from router.config import Backend
from router.providers.anthropic import AnthropicBackend
from router.providers.azure import AzureBackend
from router.providers.base import Adapter, Call, ProviderBackend, Usage
from router.providers.openai import OpenAIBackend
from router.providers.simulated import SimulateBackend
from router.upstream import Upstream

__all__ = ["Adapter", "Call", "ProviderBackend", "Usage", "build_backend"]


def build_backend(name: str, cfg: Backend, upstream: Upstream) -> ProviderBackend:
    if cfg.provider == "simulate":
        return SimulateBackend(name, cfg)
    if cfg.provider == "openai":
        return OpenAIBackend(name, cfg, upstream)
    if cfg.provider == "anthropic":
        return AnthropicBackend(name, cfg, upstream)
    if cfg.provider == "azure":
        return AzureBackend(name, cfg, upstream)
    raise NotImplementedError(f"provider {cfg.provider!r} is not available")
