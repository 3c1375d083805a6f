"""``POST /v1/completions``: OpenAI's legacy completions contract.

A request with ``suffix`` (fill-in-the-middle) needs a pool member that
declares ``fim``; the provider renders the family's template for it, or passes
``suffix`` on to a backend that takes it (``fim: native``).
"""

from __future__ import annotations

from router.errors import InvalidRequest, SpillwayError
from router.fim import MAX_TEMPLATE_BYTES
from router.inbound.base import ClientCall, Codec, validate
from router.inbound.contracts import CompletionRequest
from router.quota import tokens as tokenest
from router.routing.prefix import PROMPT_OPENING_BYTES, leading_key


def estimate(req: CompletionRequest) -> int:
    """A typical prompt-token count: four characters per token, token ids as given."""
    prompt = req.prompt
    if prompt is None or isinstance(prompt, str):
        chars, ids = len(prompt or ""), 0
    elif prompt and isinstance(prompt[0], int):
        chars, ids = 0, len(prompt)
    else:
        chars = sum(len(p) for p in prompt if isinstance(p, str))
        ids = sum(len(p) for p in prompt if isinstance(p, list))
    return (chars + len(req.suffix or "")) // 4 + ids + 1


class CompletionsCodec(Codec):
    endpoint = "completions"
    api = "completions"
    kind = "chat"
    path = "/v1/completions"

    def prefix_key(self, request: CompletionRequest, limit: int) -> bytes | None:
        return leading_key(request.prompt, min(limit, PROMPT_OPENING_BYTES))

    def parse(self, raw: bytes, model: str | None = None) -> ClientCall:
        req, doc = validate(CompletionRequest, raw, model)
        fim = req.suffix is not None
        bound = tokenest.bound(raw)
        if fim:  # the template's sentinels are added to each prompt
            bound += MAX_TEMPLATE_BYTES * req.prompts()
        return ClientCall(
            codec=self, request=req, raw=raw, doc=doc, model=req.model, stream=bool(req.stream),
            max_output=req.output_limit(), outputs=req.generated() * req.prompts(),
            prompt_bound=bound, estimate=lambda: estimate(req), user=req.user,
            wants_usage=req.wants_usage(), fim=fim,
        )  # fmt: skip

    def unserved(self, model: str, call: ClientCall) -> SpillwayError:
        if call.fim:
            return InvalidRequest(
                f"Model `{model}` cannot fill in the middle: no backend of its route "
                "declares `fim` (pools.<pool>.members[].fim), so `suffix` cannot be used.",
                param="suffix", code="unsupported_parameter",
            )  # fmt: skip
        return super().unserved(model, call)
