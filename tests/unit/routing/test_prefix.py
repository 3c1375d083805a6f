"""prefix_affinity: the conversation key of every endpoint, and rendezvous hashing
with bounded load."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import orjson
import pytest

from router.config import Pool
from router.contract import ChatCompletionRequest
from router.errors import InvalidRequest
from router.inbound.base import ClientCall
from router.inbound.chat import ChatCodec
from router.inbound.completions import CompletionsCodec
from router.inbound.embeddings import EmbeddingsCodec
from router.routing.balance import EVERY_API, Balancer
from router.routing.health import BackendState
from router.routing.prefix import PROMPT_OPENING_BYTES, leading_key, opening_key, score

SYSTEM = "You are a careful coding agent. " * 40


def chat(*turns: tuple[str, str], system: str | None = SYSTEM) -> ChatCompletionRequest:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages += [{"role": role, "content": text} for role, text in turns]
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages})


def balancer(names: list[str], *, epsilon: float = 0.25, weights: dict[str, float] | None = None,
             states: dict[str, BackendState] | None = None,
             apis: dict[str, frozenset[str]] | None = None) -> Balancer:  # fmt: skip
    weights = weights or {}
    cfg = Pool.model_validate({
        "strategy": "prefix_affinity", "prefix_affinity": {"epsilon": epsilon},
        "members": [{"backend": n, "model": "m", "weight": weights.get(n, 1.0)} for n in names],
    })  # fmt: skip
    states = states or {n: BackendState(n) for n in names}
    return Balancer("p", cfg, states, apis)


CHAT, COMPLETIONS, EMBEDDINGS = ChatCodec(), CompletionsCodec(), EmbeddingsCodec()


def call(codec: Any, body: dict[str, Any]) -> ClientCall:
    parsed: ClientCall = codec.parse(orjson.dumps({"model": "m", **body}))
    return parsed


def conversation(i: int) -> ClientCall:
    return call(
        CHAT,
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"task {i}: fix module {i}"},
            ]
        },
    )


def placement(b: Balancer, n: int) -> dict[int, str]:
    """Where each of ``n`` conversations goes on an idle pool."""
    return {i: b.order(0.0, None, conversation(i))[0].backend for i in range(n)}


# ------------------------------------------------------------------------- the key


def test_every_turn_of_a_conversation_has_the_key_of_its_opening() -> None:
    first = chat(("user", "rename the config loader"))
    later = chat(
        ("user", "rename the config loader"), ("assistant", "done, see the diff"),
        ("user", "now add a test"), ("assistant", "added"), ("user", "run it"),
    )  # fmt: skip
    assert opening_key(first, 65536) == opening_key(later, 65536)
    other = chat(("user", "rename the config writer"))
    assert opening_key(other, 65536) != opening_key(first, 65536)
    # the system prompt is part of the opening
    assert opening_key(chat(("user", "x"), system="a"), 65536) != opening_key(
        chat(("user", "x"), system="b"), 65536
    )


def test_the_key_reads_at_most_the_limit() -> None:
    long = "word " * 10_000
    a = chat(("user", long + "ending one"), system=None)
    b = chat(("user", long + "ending two"), system=None)
    assert opening_key(a, 1024) == opening_key(b, 1024)
    assert opening_key(a, 65536) != opening_key(b, 65536)


def test_parts_and_roles_count() -> None:
    text = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "https://x/1.png"}}]},
    ]})  # fmt: skip
    other = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "https://x/2.png"}}]},
    ]})  # fmt: skip
    assert opening_key(text, 65536) != opening_key(other, 65536)
    assert opening_key(chat(("user", "x"), system=None), 99) != opening_key(
        chat(("developer", "x"), ("user", "y"), system=None), 99
    )


# --------------------------------------------------------------------- placement


def test_conversations_spread_and_stay_put() -> None:
    b = balancer(["a", "b", "c", "d"])
    where = placement(b, 400)
    counts = Counter(where.values())
    assert set(counts) == {"a", "b", "c", "d"}
    assert max(counts.values()) < 1.4 * 100  # close to even
    assert placement(b, 400) == where  # the same on every call (and every replica)


def test_a_member_leaving_moves_only_its_own_conversations() -> None:
    before = placement(balancer(["a", "b", "c", "d", "e"]), 2000)
    after = placement(balancer(["a", "b", "c", "e"]), 2000)
    moved = [i for i in before if before[i] != after[i]]
    assert moved and all(before[i] == "d" for i in moved)
    assert len(moved) == sum(1 for v in before.values() if v == "d")


def test_a_member_joining_takes_only_its_share() -> None:
    before = placement(balancer(["a", "b", "c", "d"]), 2000)
    after = placement(balancer(["a", "b", "c", "d", "e"]), 2000)
    moved = [i for i in before if before[i] != after[i]]
    assert all(after[i] == "e" for i in moved)
    assert 0.12 < len(moved) / 2000 < 0.28  # about 1/5


def test_an_ejected_member_moves_only_its_conversations() -> None:
    states = {n: BackendState(n) for n in "abcd"}
    b = balancer(list("abcd"), states=states)
    before = placement(b, 1000)
    states["b"].healthy = False
    after = placement(b, 1000)
    assert all(before[i] == "b" or before[i] == after[i] for i in before)
    assert "b" not in after.values()


def test_weights_scale_the_share() -> None:
    b = balancer(["a", "b"], weights={"a": 3.0, "b": 1.0})
    counts = Counter(placement(b, 2000).values())
    assert 0.70 < counts["a"] / 2000 < 0.80


def _load_up(b: Balancer, states: dict[str, BackendState], keys: list[int]) -> Counter[str]:
    """Place requests one after the other, none finishing; the load per member."""
    for k in keys:
        first = b.order(0.0, None, conversation(k))[0]
        states[first.backend].inflight += 1
    return Counter({n: s.inflight for n, s in states.items()})


def test_no_member_goes_over_the_load_bound() -> None:
    for epsilon in (0.1, 0.25, 1.0):
        states = {n: BackendState(n) for n in "abcd"}
        b = balancer(list("abcd"), epsilon=epsilon, states=states)
        # a skewed mix: half the requests are one hot conversation
        keys = [0 if i % 2 else i for i in range(400)]
        loads = _load_up(b, states, keys)
        assert sum(loads.values()) == 400
        assert max(loads.values()) <= math.ceil((1 + epsilon) * 100)


def test_one_hot_conversation_spills_in_the_same_order_every_time() -> None:
    states = {n: BackendState(n) for n in "abcd"}
    b = balancer(list("abcd"), epsilon=0.25, states=states)
    key = conversation(7).prefix_key(65536)
    assert key is not None
    ranking = sorted(b.members, key=lambda m: score(key, m.ident, m.weight), reverse=True)
    assert b.order(0.0, None, conversation(7))[0] is ranking[0]
    loads = _load_up(b, states, [7] * 40)
    along = [loads[m.backend] for m in ranking]
    assert along == sorted(along, reverse=True) and along[0] > along[-1]
    assert max(along) <= math.ceil(1.25 * 10)


def test_scraped_load_counts_toward_the_bound() -> None:
    states = {n: BackendState(n) for n in "ab"}
    b = balancer(["a", "b"], epsilon=0.25, states=states)
    home = b.order(0.0, None, conversation(1))[0].backend
    away = "b" if home == "a" else "a"
    states[home].load_known = True
    states[home].running, states[home].waiting = 20.0, 5.0  # another replica's traffic
    assert b.order(0.0, None, conversation(1))[0].backend == away
    states[home].running, states[home].waiting = 1.0, 0.0
    assert b.order(0.0, None, conversation(1))[0].backend == home


def test_every_member_is_listed_for_retries() -> None:
    b = balancer(["a", "b", "c"])
    order = [m.backend for m in b.order(0.0, None, conversation(3))]
    assert sorted(order) == ["a", "b", "c"]
    # without a request (no prompt to hash) the pool is least-loaded
    assert sorted(m.backend for m in b.order()) == ["a", "b", "c"]


# ------------------------------------------------------- completions and embeddings


def test_a_chat_call_is_keyed_by_its_opening() -> None:
    first = conversation(3)
    assert first.prefix_key(65536) == opening_key(first.request, 65536)
    later = call(CHAT, {"messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": "task 3: fix module 3"},
        {"role": "assistant", "content": "done"}, {"role": "user", "content": "and a test"},
    ]})  # fmt: skip
    assert later.prefix_key(65536) == first.prefix_key(65536)


def test_a_completions_prompt_is_keyed_by_its_opening() -> None:
    head = "# module loader\nimport os\n" + "def f(x):\n    return x\n" * 60
    assert len(head.encode()) > PROMPT_OPENING_BYTES
    short = call(COMPLETIONS, {"prompt": head + "def g(", "suffix": "\n"})
    grown = call(COMPLETIONS, {"prompt": head + "def g(y):\n    return y\n\ndef h("})
    key = short.prefix_key(65536)
    assert key is not None and key == grown.prefix_key(65536)  # the file's opening stays
    other = call(COMPLETIONS, {"prompt": "# another file\n" + head})
    assert other.prefix_key(65536) != key
    # a batch by its first prompt; a smaller max_prefix_bytes reads less
    batch = call(COMPLETIONS, {"prompt": [head + "x", "unrelated"]})
    assert batch.prefix_key(65536) == key
    tiny = call(COMPLETIONS, {"prompt": "abcdefgh-one"}).prefix_key(8)
    assert tiny == call(COMPLETIONS, {"prompt": "abcdefgh-two"}).prefix_key(8)


def test_token_id_prompts_are_keyed_by_their_leading_ids() -> None:
    ids = list(range(1000, 1300))
    one = call(COMPLETIONS, {"prompt": ids})
    assert one.prefix_key(65536) == call(COMPLETIONS, {"prompt": [*ids, 5, 6]}).prefix_key(65536)
    assert one.prefix_key(65536) != call(COMPLETIONS, {"prompt": [7, *ids]}).prefix_key(65536)
    batch = call(COMPLETIONS, {"prompt": [ids, [1, 2]]})
    assert batch.prefix_key(65536) == one.prefix_key(65536)
    # the text of the ids is not the ids
    assert leading_key(" ".join(map(str, ids)), 65536) != one.prefix_key(65536)
    # ids beyond 32 bits (no tokenizer has them) are refused before anything keys them
    raw = b'{"model": "m", "prompt": [%d, %d]}' % (2**70, 2**64 + 1)
    with pytest.raises(InvalidRequest) as err:
        COMPLETIONS.parse(raw)
    assert (err.value.param or "").startswith("prompt")


def test_an_embeddings_input_is_keyed_by_its_text() -> None:
    a = call(EMBEDDINGS, {"input": "the spillway of the old dam"})
    assert a.prefix_key(65536) == call(
        EMBEDDINGS, {"input": ["the spillway of the old dam", "and more"]}
    ).prefix_key(65536)
    assert a.prefix_key(65536) != call(EMBEDDINGS, {"input": "the spillway"}).prefix_key(65536)
    assert call(EMBEDDINGS, {"input": [[5, 6, 7]]}).prefix_key(65536) == leading_key(
        [5, 6, 7], 65536
    )
    assert leading_key(None, 65536) is None and leading_key([], 65536) is None


def test_every_endpoint_spreads_and_stays_put() -> None:
    b = balancer(["a", "b", "c", "d"])
    for codec, field in ((COMPLETIONS, "prompt"), (EMBEDDINGS, "input")):
        calls = [call(codec, {field: f"document {i}: the river and the dam"}) for i in range(400)]
        where = [b.order(0.0, None, c)[0].backend for c in calls]
        counts = Counter(where)
        assert set(counts) == {"a", "b", "c", "d"} and max(counts.values()) < 140
        assert [b.order(0.0, None, c)[0].backend for c in calls] == where


def test_only_members_serving_the_call_are_ranked() -> None:
    chat_only = frozenset(("chat",))
    apis = {"a": chat_only, "b": chat_only, "c": EVERY_API, "d": EVERY_API}
    states = {n: BackendState(n) for n in "abcd"}
    b = balancer(list("abcd"), apis=apis, states=states)
    firsts = Counter()
    for i in range(200):
        c = call(COMPLETIONS, {"prompt": f"file {i}\n"})
        first = b.order(0.0, None, c)[0]
        firsts[first.backend] += 1
        states[first.backend].inflight += 1  # the load bound counts serving members only
    assert set(firsts) == {"c", "d"}
    assert max(firsts.values()) <= math.ceil(1.25 * 100)
    chats = Counter(b.order(0.0, None, conversation(i))[0].backend for i in range(200))
    assert {"a", "b"} <= set(chats)
