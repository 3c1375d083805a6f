"""Azure OpenAI deployments: the OpenAI pass-through with Azure's URL and auth.

``POST {url}/openai/deployments/{deployment}/{chat/completions,completions,embeddings}
?api-version=V``, and OpenAI Responses on the v1 API (``POST {url}/openai/v1/responses``,
the deployment as the body's ``model``); a pool member's ``model`` is the deployment
name. Authentication is the ``api-key`` header (``api_key`` or ``api_key_file``), or
``Authorization: Bearer`` with a Microsoft Entra token from the environment variable named by
``token_env`` or the file named by ``token_file``; both are read again on an
interval and after a refusal (:mod:`router.providers.credentials`), since
Entra tokens expire in about an hour. Azure rejects parameters it
does not know, so the flavour defaults to ``openai`` (vLLM extras dropped or
rejected per ``unsupported_params``).
"""

from __future__ import annotations

from urllib.parse import quote

from yarl import URL

from router.config import Backend
from router.providers.openai import PATHS, CompatBackend
from router.upstream import Upstream

DEFAULT_API_VERSION = "2024-10-21"  # the latest GA data-plane inference version


class AzureBackend(CompatBackend):
    """One Azure OpenAI resource; its deployments are the pool members' models."""

    provider = "azure"
    default_flavour = "openai"

    def __init__(self, name: str, cfg: Backend, upstream: Upstream) -> None:
        super().__init__(name, cfg, upstream)
        assert cfg.url is not None
        base = cfg.url.rstrip("/")
        if base.endswith("/openai"):
            base = base[: -len("/openai")]
        self.base = base
        self.api_version = cfg.api_version or DEFAULT_API_VERSION
        self._urls: dict[tuple[str, str], URL] = {}

    def auth_headers(self) -> dict[str, str]:
        value = self.credential.value
        if value is None:
            return {}
        if self.cfg.api_key is not None or self.cfg.api_key_file is not None:
            return {"api-key": value}
        return {"Authorization": f"Bearer {value}"}

    def endpoint(self, api: str, member_model: str) -> URL:
        key = (api, member_model)
        url = self._urls.get(key)
        if url is None and api == "responses":  # the v1 API: the deployment is the body's model
            url = self._urls[key] = URL(f"{self.base}/openai/v1/responses")
        elif url is None:
            url = URL(
                f"{self.base}/openai/deployments/{quote(member_model, safe='')}"
                f"{PATHS[api]}?api-version={quote(self.api_version, safe='')}",
                encoded=True,
            )
            self._urls[key] = url  # bounded: one per configured deployment and API
        return url
