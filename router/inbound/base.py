"""The gateway's one call shape, and what every codec shares.

A codec parses its client API's body into a :class:`ClientCall`: the model
asked for, whether it streams, the output-token bound and the number of
outputs (what quotas reserve with the prompt bound), the facts routing rules
look at, and what a pool member must have to serve it (one of the call's
``apis``, and ``fim`` for fill-in-the-middle). Everything after parsing (route,
admit, attempt, relay, settle) is the same for every codec; the codec renders
errors, and in-band stream errors, in its API's form.

A backend that speaks the call's own API gets it natively. A codec reaches
backends that speak another API through its ``bridges``: a :class:`Bridge`
translates the request into that API, and a fresh :class:`AnswerTranslator`
per attempt turns each answer (body or stream bytes, already in that API's
form with the client's model name) back into the client's API. No pair of
client API and backend is special-cased: an attempt picks the call's own API
when the member's backend has it, else the first bridge whose API it has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from router.contract import MAX_TOKENS, ValidationError, error_param
from router.errors import InvalidRequest, SpillwayError
from router.inbound.numbers import unreadable
from router.streaming import error_event

Model = TypeVar("Model", bound=BaseModel)


@dataclass(slots=True, eq=False)
class ClientCall:
    """A client's request in the gateway's one call shape."""

    codec: Codec
    request: Any  # the codec's parsed model (what adapters read)
    raw: bytes  # the body as received (with the model of the path, on Azure paths)
    doc: dict[str, Any]  # ``raw`` as parsed by orjson (do not mutate)
    model: str  # the model name the client asked for
    stream: bool
    max_output: int | None  # output tokens per output the client allows (None: pool default)
    outputs: int  # outputs generated (choices x prompts); 0 when nothing is generated
    prompt_bound: int  # upper bound of the prompt tokens (reserved)
    estimate: Callable[[], int]  # a typical prompt-token count (routing rules)
    user: str | None = None
    tools: bool = False
    wants_usage: bool = False
    fim: bool = False  # needs a member that fills in the middle
    translated: dict[str, tuple[Any, bytes]] | None = None  # per bridge API, made on use
    state: Any = None  # what the codec keeps about the call (its own type)

    def __post_init__(self) -> None:
        if self.max_output and self.outputs * self.max_output > MAX_TOKENS:
            param = "max_tokens"
            if getattr(self.request, "max_completion_tokens", None) is not None:
                param = "max_completion_tokens"
            raise InvalidRequest(
                f"Invalid request: {param}: {self.outputs} outputs of up to {self.max_output} "
                f"tokens each is {self.outputs * self.max_output} tokens; a request may "
                f"generate at most {MAX_TOKENS}.",
                param=param,
            )

    @property
    def api(self) -> str:
        return self.codec.api

    @property
    def apis(self) -> frozenset[str]:
        """The APIs the call can go out in: its own, and its codec's bridges'."""
        return self.codec.apis

    def target(self, served: frozenset[str]) -> str | None:
        """The API an attempt on a backend serving ``served`` uses (None: none)."""
        if self.codec.api in served:
            return self.codec.api
        return next((api for api in self.codec.bridges if api in served), None)

    def prefix_key(self, limit: int) -> bytes | None:
        """What ``prefix_affinity`` places the call by: its codec's digest of the
        prompt's opening, reading at most ``limit`` bytes (None: no key)."""
        return self.codec.prefix_key(self.request, limit)

    def translated_to(self, api: str) -> tuple[Any, bytes]:
        """(request, raw body) in ``api``: the call itself, or its bridge's translation
        (made once per call)."""
        if api == self.codec.api:
            return self.request, self.raw
        if self.translated is None:
            self.translated = {}
        got = self.translated.get(api)
        if got is None:
            got = self.translated[api] = self.codec.bridges[api].request(self)
        return got


class AnswerTranslator(Protocol):
    """One attempt's answers in a bridge's API -> the client's API."""

    def body(self, data: bytes) -> bytes:
        """A complete answer."""
        ...

    def chunk(self, data: bytes) -> bytes:
        """Stream bytes as relayed (whole SSE events); may hold some back."""
        ...

    def finish(self) -> bytes:
        """What is still held back when the stream ends."""
        ...


class Bridge(Protocol):
    """Carries a call to backends that speak another API (the key in ``Codec.bridges``)."""

    def request(self, call: ClientCall) -> tuple[Any, bytes]:
        """The call's request in the bridge's API: (the parsed model, its JSON)."""
        ...

    def answers(self, call: ClientCall) -> AnswerTranslator:
        """A translator for one attempt's answers."""
        ...


def validate(
    model: type[Model], raw: bytes, model_name: str | None
) -> tuple[Model, dict[str, Any]]:
    """``raw`` validated as ``model``, and its JSON object; ``model_name`` (a path's
    deployment) replaces the body's ``model``. A 400 naming the parameter on failure.

    orjson reads the body first: it refuses what JSON has no number for (``NaN``,
    ``Infinity``, a literal beyond a double such as ``1e400``), which the contract's
    own parser would take into fields it does not check. Its object is kept for the
    adapters (:attr:`router.providers.base.Call.body`), so a body is parsed by orjson
    once whatever happens to it."""
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise unreadable(raw, exc) from None
    if not isinstance(doc, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        if model_name is None:
            return model.model_validate_json(raw), doc
        checked = dict(doc)
        checked["model"] = model_name
        return model.model_validate(checked), doc
    except ValidationError as exc:
        param, message = error_param(exc)
        raise InvalidRequest(f"Invalid request: {message}", param=param) from None


class Codec:
    """One client API. Subclasses set the names and implement :meth:`parse`."""

    endpoint = ""  # the metrics label and access-log field
    api = ""  # the wire API of the parsed request (what a backend must speak)
    kind = "chat"  # the kind of model it serves (models.X.kind)
    path = ""  # the canonical path, for messages
    bridges: Mapping[str, Bridge] = {}  # other APIs it reaches, by API (none: native only)
    forward: tuple[str, ...] = ()  # client headers passed on to backends speaking ``api``

    @cached_property
    def apis(self) -> frozenset[str]:
        return frozenset((self.api, *self.bridges))

    def parse(self, raw: bytes, model: str | None = None) -> ClientCall:
        raise NotImplementedError

    async def prepare(self, call: ClientCall, team: str) -> None:
        """After authentication, before routing: complete ``call`` from what the gateway
        keeps for ``team`` (a stateful API's earlier turns). Default: nothing."""

    def own_answers(self, call: ClientCall) -> AnswerTranslator | None:
        """A watcher of one attempt's answers in the call's own API (passed through),
        e.g. to keep them; None (the default): relayed untouched."""
        return None

    async def answered(self, call: ClientCall) -> None:
        """The answer is complete, before its last bytes go out (a stream's last event is
        held back by the translator or watcher). Default: nothing."""

    def prefix_key(self, request: Any, limit: int) -> bytes | None:
        """The digest of the opening of ``request``'s prompt for ``prefix_affinity``
        (:mod:`router.routing.prefix`); None: placed least-loaded."""
        return None

    def answer_locally(self, call: ClientCall) -> bytes | None:
        """The JSON answer the gateway gives itself when no pool of the route can serve
        ``call`` (None: :meth:`unserved`)."""
        return None

    def error_response(self, exc: SpillwayError) -> web.Response:
        """The error as the client API's envelope (OpenAI's, here)."""
        return web.Response(
            body=exc.body(), status=exc.status, headers=exc.headers,
            content_type="application/json",
        )  # fmt: skip

    def stream_error(self, exc: SpillwayError) -> bytes:
        """An error after the stream started: in-band, then the stream's end."""
        return error_event(exc.envelope())

    def stream_failure(self, exc: SpillwayError, call: ClientCall) -> bytes:
        """:meth:`stream_error` for ``call`` (a codec whose in-band error depends on the
        stream so far overrides this)."""
        return self.stream_error(exc)

    def unserved(self, model: str, call: ClientCall) -> SpillwayError:
        """No member of the model's route can serve ``call``."""
        return InvalidRequest(
            f"Model `{model}` has no backend that serves {self.path}.",
            param="model", code="unsupported_endpoint",
        )  # fmt: skip
