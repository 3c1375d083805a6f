"""Prompt-token estimates.

Two numbers, for two jobs:

* :func:`bound` is what a reservation holds. It is an upper bound on the
  prompt tokens of any byte-level BPE tokenizer in common use: every token
  covers at least one byte of UTF-8 text, and the request's JSON spends at
  least as many bytes on each message's framing (``{"role":...,"content":...}``)
  as a chat template spends tokens on it. So the body's byte length bounds the
  text, template and tool definitions together. Image data is not text: each
  image is charged :data:`IMAGE_TOKENS` instead of its bytes.
* :func:`estimate` is a typical count (about four characters per token), used
  by routing rules such as ``prompt_tokens_over``.

Settlement always charges the upstream's reported usage, so a loose bound
costs only headroom while a request is in flight, never money.
"""

from __future__ import annotations

import re

from router.contract import ChatCompletionRequest, ImagePart

IMAGE_TOKENS = 2048  # at or above what GPT-4o, Claude and Qwen-VL charge per image
TEMPLATE_TOKENS = 16  # BOS and generation prompt beyond the per-message framing
_DATA_URL = re.compile(rb'"data:[^"]*"')


def bound(raw: bytes) -> int:
    """Upper bound of the prompt tokens of a request body (see the module doc)."""
    size = len(raw)
    if b'"image_url"' in raw:
        images = raw.count(b'"image_url"') // 2 or 1
        size -= sum(len(m) for m in _DATA_URL.findall(raw))
        size += images * IMAGE_TOKENS
    return size + TEMPLATE_TOKENS


def estimate(req: ChatCompletionRequest) -> int:
    """A typical prompt-token count: about four characters per token."""
    chars = 0
    images = 0
    for msg in req.messages:
        content = getattr(msg, "content", None)
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, ImagePart):
                    images += 1
                else:
                    chars += len(getattr(part, "text", "") or "")
        chars += 16
    for tool in req.tools or ():
        chars += len(tool.model_dump_json())
    return chars // 4 + images * 1024 + 1
