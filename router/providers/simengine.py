"""The simulated model server's engine: a batch of fixed size and a prefix cache.

One :class:`SimEngine` per simulated instance (a ``provider: simulate`` backend,
or a ``spillway simulate`` process) models the two things of a vLLM server a
router can see and act on:

* capacity: at most ``max_num_seqs`` requests generate at once; the others
  wait in line, first come first served (vLLM's running and waiting queues,
  exposed as ``vllm:num_requests_running`` / ``_waiting``);
* automatic prefix caching: the prompt is tokenized (words; for chat, plus
  three tokens of chat template per message), cut into blocks of
  ``block_size`` tokens, each block hashed together with everything before
  it; an LRU of ``prefix_cache_blocks`` such hashes is the cache. The longest
  run of leading blocks found there is a hit (only full blocks are cached, as
  in vLLM); the time to first token is ``ttft_ms`` times the share of the
  prompt not hit. A completions request with several prompts, or an
  embeddings request with several inputs, prefills each one. Hits and queries
  count tokens, as ``vllm:prefix_cache_hits`` / ``_queries``.

A request takes one place in the batch whatever its endpoint and ``n``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence

from router.config import SimulateSettings
from router.contract import ChatCompletionRequest, TextPart

# the prompts a request prefills, as the simulated tokenizer sees them; called only
# when the engine has a prefix cache
Prompts = Callable[[], Sequence[list[str]]]


def prompt_tokens(req: ChatCompletionRequest) -> list[str]:
    """The prompt as the simulated tokenizer sees it: per message a start token, the
    role, the words of its text, an end token."""
    tokens: list[str] = []
    for msg in req.messages:
        tokens.append("<|start|>")
        tokens.append(msg.role)
        content = getattr(msg, "content", None)
        if isinstance(content, str):
            tokens.extend(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, TextPart):
                    tokens.extend(part.text.split())
        tokens.append("<|end|>")
    return tokens


def block_hashes(tokens: list[str], block_size: int) -> list[bytes]:
    """Chained hashes of the full blocks: each covers its block and all before it."""
    out: list[bytes] = []
    parent = b""
    for start in range(0, len(tokens) - block_size + 1, block_size):
        text = "\x1f".join(tokens[start : start + block_size]).encode()
        parent = hashlib.blake2b(parent + text, digest_size=8).digest()
        out.append(parent)
    return out


class PrefixCache:
    """An LRU of block hashes; counts tokens queried and hit."""

    def __init__(self, capacity: int, block_size: int) -> None:
        self.capacity = capacity
        self.block_size = block_size
        self._blocks: OrderedDict[bytes, None] = OrderedDict()
        self.queries = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def prefill(self, tokens: list[str]) -> int:
        """Look the prompt up, then cache its blocks; the prompt tokens found cached."""
        blocks = block_hashes(tokens, self.block_size)
        cached = self._blocks
        hit = 0
        for block in blocks:
            if block not in cached:
                break
            hit += 1
        for block in blocks:
            if block in cached:
                cached.move_to_end(block)
            else:
                cached[block] = None
        while len(cached) > self.capacity:
            cached.popitem(last=False)
        hit_tokens = hit * self.block_size
        self.queries += len(tokens)
        self.hits += hit_tokens
        return hit_tokens


class SimEngine:
    """Running and waiting requests of one simulated server, and its prefix cache."""

    def __init__(self, knobs: SimulateSettings) -> None:
        self.knobs = knobs
        self.limit = knobs.max_num_seqs
        self.running = 0
        self._line: deque[asyncio.Future[None]] = deque()
        self.cache = (
            PrefixCache(knobs.prefix_cache_blocks, knobs.block_size)
            if knobs.prefix_cache_blocks
            else None
        )

    @property
    def waiting(self) -> int:
        return len(self._line)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the ``max_num_seqs`` places in the batch, waiting in line for it."""
        if self.limit and (self.running >= self.limit or self._line):
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._line.append(turn)
            try:
                await turn  # the one leaving hands its place over: running stays counted
            except asyncio.CancelledError:
                if turn.cancelled():
                    with contextlib.suppress(ValueError):  # unless a leaver dropped it
                        self._line.remove(turn)
                else:
                    self._leave()  # handed a place just as the client left
                raise
        else:
            self.running += 1
        try:
            yield
        finally:
            self._leave()

    def _leave(self) -> None:
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.running -= 1

    def first_token_seconds(self, prompts: Prompts) -> float:
        """``ttft_ms``, scaled by the share of the prompts the prefix cache lacks."""
        base = self.knobs.ttft_ms / 1000
        cache = self.cache
        if cache is None:
            return base
        total = hit = 0
        for tokens in prompts():
            hit += cache.prefill(tokens)
            total += len(tokens)
        return base * (total - hit) / max(1, total)

    def usage(self) -> float:
        """Share of the prefix cache in use (0..1), as vLLM's KV-cache usage."""
        if self.cache is None:
            return 0.0
        return len(self.cache) / self.cache.capacity
