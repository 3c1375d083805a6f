"""Pydantic models of OpenAI's completions and embeddings contracts.

Like :mod:`router.contract` (chat completions), each request model covers
OpenAI's fields and vLLM's extras (vLLM's ``CompletionRequest`` and
``EmbeddingCompletionRequest``), keeps unknown fields (``extra="allow"``) so
they are forwarded untouched, and checks what OpenAI checks, with errors that
name the parameter.

Embeddings limits are OpenAI's: at most 2,048 inputs, no empty input, at most
8,192 tokens in an input given as token ids and 300,000 token ids in all. A
string's tokens can only be counted by the model's tokenizer: the backend
refuses one that is too long (its 400 is passed on).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.contract import (
    MAX_TOKENS,
    Count,
    CountOrAll,
    FieldError,
    Int32,
    Int64,
    PositiveCount,
    StreamOptions,
    VllmServingExtras,
)

MAX_EMBEDDING_INPUTS = 2048
MAX_INPUT_TOKENS = 8192  # per input, for token-id inputs
MAX_TOTAL_TOKEN_IDS = 300_000

TokenIds = list[Annotated[int, Field(ge=0, le=MAX_TOKENS)]]
TextOrTokens = str | list[str] | TokenIds | list[TokenIds]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


def _texts_and_ids(value: TextOrTokens, name: str) -> tuple[list[str], list[list[int]]]:
    """The strings and token-id lists of a prompt or input; 400 on empty ones."""
    texts: list[str] = []
    ids: list[list[int]] = []
    if isinstance(value, str):
        texts = [value]
    elif not value:
        raise FieldError(name, f"{name} must not be an empty array")
    else:
        for item in value:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, int):
                ids = [cast(list[int], value)]
                break
            else:
                ids.append(item)
    for i, text in enumerate(texts):
        if text == "":
            where = name if isinstance(value, str) else f"{name}[{i}]"
            raise FieldError(where, f"{where} must not be an empty string")
    for i, tokens in enumerate(ids):
        if not tokens:
            raise FieldError(f"{name}[{i}]", f"{name}[{i}] must not be an empty array")
    return texts, ids


# ------------------------------------------------------------------- completions


class _VllmCompletionExtras(VllmServingExtras):
    """vLLM's extras of ``CompletionRequest`` (what the openai flavour does not send)."""

    # vLLM extras (sampling)
    use_beam_search: bool | None = None
    top_k: CountOrAll | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None
    length_penalty: float | None = None
    stop_token_ids: list[Int32] | None = None
    include_stop_str_in_output: bool | None = None
    ignore_eos: bool | None = None
    min_tokens: Count | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    truncate_prompt_tokens: CountOrAll | None = None
    truncation_side: Literal["left", "right"] | None = None
    allowed_token_ids: list[Int32] | None = None
    prompt_logprobs: CountOrAll | None = None
    logprob_token_ids: Annotated[list[Int32], Field(min_length=1)] | None = None
    bad_words: list[str] | None = None
    # vLLM extras (prompt, output format and serving)
    prompt_embeds: str | list[str] | None = None
    add_special_tokens: bool | None = None
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    repetition_detection: dict[str, Any] | None = None
    thinking_token_budget: Int32 | None = None
    stream_interval: PositiveCount | None = None


class CompletionRequest(_VllmCompletionExtras):
    """``POST /v1/completions`` body: OpenAI's legacy fields plus vLLM's extras."""

    # OpenAI
    model: Annotated[str, Field(min_length=1, max_length=256)]
    prompt: TextOrTokens | None = None
    suffix: str | None = None
    max_tokens: Count | None = None  # OpenAI's default: 16
    temperature: Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    best_of: Annotated[int, Field(ge=1, le=128)] | None = None
    stop: str | Annotated[list[str], Field(max_length=64)] | None = None
    echo: bool | None = None
    logprobs: CountOrAll | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    seed: Int64 | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _cross_field_rules(self) -> CompletionRequest:
        if self.prompt is None:
            if not self.prompt_embeds:
                raise FieldError("prompt", "prompt is required")
        else:
            texts, _ = _texts_and_ids(self.prompt, "prompt")
            if self.suffix is not None and not texts:
                raise FieldError("suffix", "suffix needs a text prompt, not token ids")
        if self.stream_options is not None and not self.stream:
            raise FieldError("stream_options", "stream_options can only be set when stream is true")
        if self.stop is not None:
            stops = [self.stop] if isinstance(self.stop, str) else self.stop
            if any(s == "" for s in stops):
                raise FieldError("stop", "stop strings must not be empty")
        if self.best_of is not None:
            if self.best_of < (self.n or 1):
                raise FieldError("best_of", "best_of must be greater than or equal to n")
            if self.stream and self.best_of > 1:
                raise FieldError("best_of", "best_of cannot be used with stream")
        if self.echo and self.suffix is not None:
            raise FieldError("echo", "echo cannot be used with suffix")
        return self

    # -- derived values the gateway needs -----------------------------------------
    def output_limit(self) -> int:
        """Generated tokens per choice: ``max_tokens``, else the contract's 16."""
        return 16 if self.max_tokens is None else self.max_tokens

    def generated(self) -> int:
        """Sequences generated per prompt (``best_of`` are generated, ``n`` returned)."""
        return max(self.n or 1, self.best_of or 1)

    def prompts(self) -> int:
        """How many prompts the request holds (each gets ``n`` choices)."""
        prompt = self.prompt
        if prompt is None or isinstance(prompt, str) or not prompt:
            return 1
        return 1 if isinstance(prompt[0], int) else len(prompt)

    def wants_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


VLLM_COMPLETION_EXTRAS: frozenset[str] = frozenset(_VllmCompletionExtras.model_fields)


# -------------------------------------------------------------------- embeddings


class _VllmEmbeddingExtras(_Open):
    """vLLM's extras of ``EmbeddingCompletionRequest``."""

    truncate_prompt_tokens: CountOrAll | None = None
    add_special_tokens: bool | None = None
    normalize: bool | None = None
    embed_dtype: str | None = None
    endianness: str | None = None
    priority: Int64 | None = None
    request_id: str | None = None


class EmbeddingRequest(_VllmEmbeddingExtras):
    """``POST /v1/embeddings`` body: OpenAI's fields plus vLLM's extras."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: TextOrTokens
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: PositiveCount | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _limits(self) -> EmbeddingRequest:
        texts, ids = _texts_and_ids(self.input, "input")
        count = len(texts) + len(ids)
        if count > MAX_EMBEDDING_INPUTS:
            raise FieldError(
                "input",
                f"input holds {count} inputs; at most {MAX_EMBEDDING_INPUTS} are allowed "
                "per request",
            )
        total = 0
        for i, tokens in enumerate(ids):
            if len(tokens) > MAX_INPUT_TOKENS:
                where = "input" if isinstance(self.input[0], int) else f"input[{i}]"
                raise FieldError(
                    where,
                    f"{where} is {len(tokens)} tokens long; an input may be at most "
                    f"{MAX_INPUT_TOKENS} tokens",
                )
            total += len(tokens)
        if total > MAX_TOTAL_TOKEN_IDS:
            raise FieldError(
                "input",
                f"input holds {total} tokens; at most {MAX_TOTAL_TOKEN_IDS} are allowed "
                "per request",
            )
        return self

    def split(self) -> tuple[list[str], list[list[int]]]:
        """The string inputs and the token-id inputs."""
        return _texts_and_ids(self.input, "input")


VLLM_EMBEDDING_EXTRAS: frozenset[str] = frozenset(_VllmEmbeddingExtras.model_fields)
