"""Azure OpenAI deployments: the OpenAI pass-through with Azure's URL and auth.

``POST {url}/openai/deployments/{deployment}/{chat/completions,completions,embeddings}
?api-version=V``; a pool member's ``model`` is the deployment name. Authentication is the
``api-key`` header, or, without ``api_key``, ``Authorization: Bearer`` with a
Microsoft Entra token read from the environment variable named by
``token_env`` (read when the config is loaded). Azure rejects parameters it
does not know, so the flavour defaults to ``openai`` (vLLM extras dropped or
rejected per ``unsupported_params``).
"""

from __future__ import annotations

import os
from urllib.parse import quote

from router.config import Backend
from router.providers.openai import PATHS, CompatBackend
from router.upstream import Upstream

DEFAULT_API_VERSION = "2024-10-21"  # the latest GA data-plane inference version


class AzureBackend(CompatBackend):
    """One Azure OpenAI resource; its deployments are the pool members' models."""

    provider = "azure"
    default_flavour = "openai"

    def __init__(self, name: str, cfg: Backend, upstream: Upstream) -> None:
        self._token: str | None = None
        if cfg.api_key is None and cfg.token_env is not None:
            self._token = os.environ.get(cfg.token_env) or None
        super().__init__(name, cfg, upstream)
        assert cfg.url is not None
        base = cfg.url.rstrip("/")
        if base.endswith("/openai"):
            base = base[: -len("/openai")]
        self.base = base
        self.api_version = cfg.api_version or DEFAULT_API_VERSION
        self._urls: dict[tuple[str, str], str] = {}
        if cfg.api_key is None and self._token is None:
            self.unusable = (
                f"Backend {name!r} has no credentials: environment variable "
                f"{cfg.token_env} was not set when the config was loaded."
            )

    def auth_headers(self) -> dict[str, str]:
        if self.cfg.api_key is not None:
            return {"api-key": self.cfg.api_key.get_secret_value()}
        if self._token is not None:
            return {"Authorization": f"Bearer {self._token}"}
        return {}

    def endpoint(self, api: str, member_model: str) -> str:
        key = (api, member_model)
        url = self._urls.get(key)
        if url is None:
            url = (
                f"{self.base}/openai/deployments/{quote(member_model, safe='')}"
                f"{PATHS[api]}?api-version={quote(self.api_version, safe='')}"
            )
            self._urls[key] = url  # bounded: one per configured deployment and API
        return url
