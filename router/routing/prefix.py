"""Prefix-cache-aware placement: consistent hashing with bounded load (pure).

A model server keeps the KV cache of the prompts it has seen; a request whose
leading prompt it holds skips that part of the prefill. Multi-turn agent
conversations resend a growing prompt every turn whose start never changes:
the system and developer prompts and the first user message. That opening is
hashed (:func:`opening_key`) and placed by weighted rendezvous hashing
(highest random weight): every replica ranks the members the same way for the
same conversation, and when a member joins or leaves only the conversations it
wins or held move (rendezvous hashing is consistent hashing without a ring).

Bounded load (Mirrokni, Thorup and Zadimoghaddam, 2018): walking the ranking,
the first member whose load after taking the request stays within
``ceil((1 + epsilon) * (total load + 1) * its weight share)`` takes it, so no
member carries more than (1 + epsilon) times its share of the mean. A member
over the bound passes its conversations on, in the same order on every
replica, and gets them back as it drains.

What the opening is depends on the endpoint (each codec's ``prefix_key``): a
chat conversation's messages up to its first user message; a completions
prompt's first :data:`PROMPT_OPENING_BYTES` (a prompt has no turns to go by: a
file's or a template's opening stays while the text after it grows); an
embeddings input whole, up to the limit (inputs do not grow: the same text
goes back to the member that embedded it). A batch is placed by its first
prompt or input; token-id prompts by their leading ids (four bytes a token).

Why the opening and not the longest shared block: conversations that share a
system prompt share its blocks, so keying on the longest known prefix sends
every new conversation with that prompt to the one member holding it (then the
load bound scatters them). Keying on the opening spreads conversations evenly
and keeps each on the member that holds its own history; a shared system prompt
is cached once per member, a small price for its first turn there.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from router.contract import ChatCompletionRequest, ImagePart, TextPart

T = TypeVar("T")

_SEP = b"\x1e"
_TOKEN_ID_MASK = (1 << 64) - 1
PROMPT_OPENING_BYTES = 1024  # what places a completions prompt (about 256 tokens)

Prompt = str | list[Any]  # a completions prompt or embeddings input, as parsed


def opening_key(req: ChatCompletionRequest, limit: int) -> bytes:
    """A 16-byte digest of the conversation's opening: each message (role and text)
    up to and including the first user message, at most ``limit`` bytes of it."""
    h = hashlib.blake2b(digest_size=16)
    left = limit
    for msg in req.messages:
        role = msg.role
        h.update(role.encode())
        h.update(_SEP)
        content = getattr(msg, "content", None)
        if isinstance(content, str):
            data = content.encode()
            h.update(data[:left])
            left -= len(data)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, TextPart):
                    data = part.text.encode()
                elif isinstance(part, ImagePart):
                    data = part.image_url.url.encode()
                else:
                    data = part.type.encode()
                h.update(data[:left])
                left -= len(data)
                if left <= 0:
                    break
        h.update(_SEP)
        if role == "user" or left <= 0:
            break
    return h.digest()


def leading_key(prompt: Prompt | None, limit: int) -> bytes | None:
    """A 16-byte digest of the first ``limit`` bytes of a prompt, or of its first
    ``limit // 4`` token ids; of the first prompt of a batch. None for no prompt."""
    first: object = prompt
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        first = prompt[0]  # a batch: list[str] or list[list[int]]
    h = hashlib.blake2b(digest_size=16)
    if isinstance(first, str) and first:
        h.update(b"t")
        h.update(first[:limit].encode()[:limit])
    elif isinstance(first, list) and first:
        ids = first[: max(1, limit // 4)]
        h.update(b"i")
        h.update(array("Q", [i & _TOKEN_ID_MASK for i in ids if isinstance(i, int)]).tobytes())
    else:
        return None
    return h.digest()


def score(key: bytes, ident: bytes, weight: float) -> float:
    """Weighted rendezvous score of a member for a key (higher wins)."""
    digest = hashlib.blake2b(key + b"\x00" + ident, digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
    return -weight / math.log(u)


def bounded_choice(
    ranked: Sequence[T],
    load: Callable[[T], float],
    weight: Callable[[T], float],
    epsilon: float,
) -> T | None:
    """The first of ``ranked`` whose load with one more request stays within
    (1 + epsilon) times its weighted share of the total; None when none does."""
    total = sum(load(m) for m in ranked) + 1.0
    weights = sum(weight(m) for m in ranked)
    for m in ranked:
        cap = math.ceil((1.0 + epsilon) * total * weight(m) / weights - 1e-9)
        if load(m) + 1.0 <= cap:
            return m
    return None
