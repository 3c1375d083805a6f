"""What each backend serves, in the config: the client APIs of each provider,
model kinds and fill-in-the-middle settings, and their cross-checks.

Kept apart from :mod:`router.config`, which imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from router.contract import VLLM_EXTRAS
from router.fim import MAX_TEMPLATE_BYTES, PRESETS, FimTemplate
from router.inbound.contracts import VLLM_COMPLETION_EXTRAS, VLLM_EMBEDDING_EXTRAS

if TYPE_CHECKING:
    from router.config import Config

# every parameter ``allow_params`` may name: the vLLM extras of any endpoint
VLLM_PARAMS = VLLM_EXTRAS | VLLM_COMPLETION_EXTRAS | VLLM_EMBEDDING_EXTRAS
# the client APIs each provider serves (its adapters); the rest are config errors
PROVIDER_APIS: dict[str, frozenset[str]] = {
    "openai": frozenset(("chat", "completions", "embeddings")),
    "azure": frozenset(("chat", "completions", "embeddings")),
    "simulate": frozenset(("chat", "completions", "embeddings")),
    "anthropic": frozenset(("chat", "messages", "count_tokens")),
}
# the providers whose servers may speak OpenAI's Responses API (pools.P.members[].responses)
RESPONSES_PROVIDERS = frozenset(("openai", "azure"))


def backend_apis(provider: str, flavour: str) -> frozenset[str]:
    """The client APIs a backend serves: its provider's, and Responses on hosted OpenAI
    (flavour openai) and Azure."""
    apis = PROVIDER_APIS[provider]
    if provider == "azure" or (provider == "openai" and flavour == "openai"):
        apis |= {"responses"}
    return apis


def member_apis(backend: frozenset[str], responses: str | None) -> frozenset[str]:
    """A pool member's APIs: its backend's, with Responses as the member declares."""
    if responses == "native":
        return backend | {"responses"}
    if responses == "bridge":
        return backend - {"responses"}
    return backend


class FimTemplateConfig(BaseModel):
    """An explicit fill-in-the-middle template: the model's sentinel strings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: Annotated[str, Field(min_length=1)]
    suffix: Annotated[str, Field(min_length=1)]
    middle: str = ""
    order: Literal["psm", "spm"] = "psm"  # prefix-suffix-middle, or suffix first
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=8)] = Field(
        default_factory=list
    )

    @model_validator(mode="after")
    def _small(self) -> FimTemplateConfig:
        if self.template().size > MAX_TEMPLATE_BYTES:
            raise ValueError(f"the sentinels are over {MAX_TEMPLATE_BYTES} bytes together")
        return self

    def template(self) -> FimTemplate:
        return FimTemplate(self.prefix, self.suffix, self.middle, self.order, tuple(self.stop))


def fim_setting(value: Any) -> Any:
    """``pools.P.members[].fim`` before validation: a known name, or a template."""
    if isinstance(value, dict):
        try:
            return FimTemplateConfig.model_validate(value)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"])
            msg = "unknown key (typo?)" if err["type"] == "extra_forbidden" else err["msg"]
            msg = msg.removeprefix("Value error, ")
            raise ValueError(f"template {where + ': ' if where else ''}{msg}") from None
    if isinstance(value, str) and value != "native" and value not in PRESETS:
        names = ", ".join(["native", *PRESETS])
        raise ValueError(f"{value!r} is not one of {names}, or a template")
    return value


def endpoint_checks(cfg: Config) -> list[str]:
    """Each pool serves one kind of model, on backends that have its endpoints."""
    problems: list[str] = []
    kinds: dict[str, tuple[str, str]] = {}  # pool -> (kind, the first model using it)
    for name, entry in cfg.models.items():
        for r, route in enumerate(entry.routes):
            for p, pool_name in enumerate(route.pools):
                where = f"models.{name}.routes[{r}].pools[{p}]"
                pool = cfg.pools.get(pool_name)
                if pool is None:
                    continue
                seen = kinds.setdefault(pool_name, (entry.kind, name))
                if seen[0] != entry.kind:
                    problems.append(
                        f"{where}: pool {pool_name!r} already serves {seen[0]} model "
                        f"{seen[1]!r}; a pool serves one kind of model"
                    )
                if entry.kind != "embeddings":
                    continue
                for i, member in enumerate(pool.members):
                    backend = cfg.backends.get(member.backend)
                    if backend is not None and "embeddings" not in PROVIDER_APIS[backend.provider]:
                        problems.append(
                            f"{where}: embeddings model {name!r} is routed to pool "
                            f"{pool_name!r}, whose member {i} (backend {member.backend!r}, "
                            f"provider {backend.provider!r}) has no embeddings endpoint"
                        )
    for name, pool in cfg.pools.items():
        for i, member in enumerate(pool.members):
            backend = cfg.backends.get(member.backend)
            if member.tokenize and backend is not None and backend.provider != "openai":
                problems.append(
                    f"pools.{name}.members[{i}].tokenize: backend {member.backend!r} "
                    f"(provider {backend.provider!r}) is not a vLLM server with /tokenize"
                )
            if (member.responses == "native" and backend is not None
                    and backend.provider not in RESPONSES_PROVIDERS):  # fmt: skip
                problems.append(
                    f"pools.{name}.members[{i}].responses: backend {member.backend!r} "
                    f"(provider {backend.provider!r}) has no Responses API; leave it bridged"
                )
            if member.fim is None:
                continue
            where = f"pools.{name}.members[{i}].fim"
            backend = cfg.backends.get(member.backend)
            if backend is not None and "completions" not in PROVIDER_APIS[backend.provider]:
                problems.append(
                    f"{where}: backend {member.backend!r} (provider {backend.provider!r}) "
                    "has no completions endpoint to fill in the middle with"
                )
            if kinds.get(name, ("chat", ""))[0] == "embeddings":
                problems.append(f"{where}: pool {name!r} serves an embeddings model")
    return problems
