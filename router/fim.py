"""Fill-in-the-middle prompts for code models whose servers refuse ``suffix``.

vLLM answers ``suffix`` with "suffix is not currently supported", so code
completion against a self-hosted code model needs the gateway to build the
model's own infilling prompt. A pool member declares ``fim:``

* ``native``: the backend takes ``suffix`` itself (Codestral's API, OpenAI-style
  servers); it is passed through;
* a preset named after a model family (below), with the family's sentinel
  tokens, their order and the tokens that end the middle, each taken from the
  family's model card (cited beside it);
* an explicit template ``{prefix, suffix, middle}`` (sentinel strings), with an
  optional ``order`` (``psm``: prefix, suffix, middle; ``spm``: suffix first)
  and ``stop`` strings.

The sentinels are written into the prompt text; the servers' tokenizers map
them to the special tokens (Hugging Face tokenizers do so for the StarCoder,
DeepSeek-Coder, Qwen and CodeLlama vocabularies; with ``--tokenizer-mode
mistral`` the Mistral tokenizer keeps control tokens in text as text, so serve
Codestral with its Hugging Face tokenizer or use ``fim: native``).

This module has no imports from the package: the config validates names
against it and the providers render prompts with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Order = Literal["psm", "spm"]
MAX_TEMPLATE_BYTES = 256  # sentinels of one explicit template, together (bounds reservations)


@dataclass(frozen=True, slots=True)
class FimTemplate:
    """The sentinel strings of one family and the stop strings ending a middle."""

    prefix: str
    suffix: str
    middle: str
    order: Order = "psm"
    stop: tuple[str, ...] = ()

    def render(self, prefix: str, suffix: str) -> str:
        """The infilling prompt for the code before (``prefix``) and after (``suffix``)."""
        if self.order == "spm":
            return f"{self.suffix}{suffix}{self.prefix}{prefix}{self.middle}"
        return f"{self.prefix}{prefix}{self.suffix}{suffix}{self.middle}"

    @property
    def size(self) -> int:
        """Bytes the sentinels add to a prompt (each becomes at most that many tokens)."""
        return len((self.prefix + self.suffix + self.middle).encode())


PRESETS: dict[str, FimTemplate] = {
    # https://huggingface.co/bigcode/starcoder ("Fill-in-the-middle": <fim_prefix>,
    # <fim_suffix>, <fim_middle>, prefix-suffix-middle order); StarCoder2
    # (https://huggingface.co/bigcode/starcoder2-15b) uses the same tokens. A middle
    # ends with <|endoftext|>; StarCoder2 may go on with the next <file_sep>.
    "starcoder": FimTemplate(
        "<fim_prefix>", "<fim_suffix>", "<fim_middle>", stop=("<|endoftext|>", "<file_sep>")
    ),
    # https://huggingface.co/codellama/CodeLlama-7b-hf (infilling) and the format in
    # https://github.com/meta-llama/codellama/blob/main/llama/generation.py
    # (infilling_prompt_tokens): "<PRE> {pre} <SUF>{suf} <MID>"; the middle ends
    # with <EOT>.
    "codellama": FimTemplate("<PRE> ", " <SUF>", " <MID>", stop=("<EOT>",)),
    # https://huggingface.co/deepseek-ai/deepseek-coder-6.7b-base ("Code Insertion"):
    # fim-begin, prefix, fim-hole, suffix, fim-end; the tokens are spelt with full-width
    # vertical bars (U+FF5C) and U+2581 for the space; the middle ends with the
    # end-of-sentence token.
    "deepseek-coder": FimTemplate(
        "<\uff5cfim\u2581begin\uff5c>",
        "<\uff5cfim\u2581hole\uff5c>",
        "<\uff5cfim\u2581end\uff5c>",
        stop=("<\uff5cend\u2581of\u2581sentence\uff5c>",),
    ),
    # https://huggingface.co/Qwen/Qwen2.5-Coder-7B ("fill in the middle"):
    # <|fim_prefix|>prefix<|fim_suffix|>suffix<|fim_middle|>; generation ends at
    # <|endoftext|> or any of the repository-level tokens the card lists as stops.
    "qwen-coder": FimTemplate(
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        stop=("<|endoftext|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"),
    ),
    # https://huggingface.co/mistralai/Codestral-22B-v0.1 (FIM through mistral-common's
    # FIMRequest, https://github.com/mistralai/mistral-common): "[SUFFIX]suffix[PREFIX]prefix",
    # suffix first and no middle token; the middle ends with </s>.
    "codestral": FimTemplate("[PREFIX]", "[SUFFIX]", "", order="spm", stop=("</s>",)),
}
PRESET_NAMES = tuple(PRESETS)


def infill(body: dict[str, Any], template: FimTemplate) -> None:
    """Turn a completions body with ``suffix`` into the template's infilling prompt
    (in place): each text prompt is rendered with the suffix, ``suffix`` is removed,
    and the family's end-of-middle stops are added when the client gave none."""
    suffix = body.pop("suffix")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        body["prompt"] = template.render(prompt, suffix)
    elif isinstance(prompt, list):
        body["prompt"] = [template.render(p, suffix) for p in prompt]
    if template.stop and not body.get("stop"):
        body["stop"] = list(template.stop)
