"""The gateway's one call shape, and what every codec shares.

A codec parses its client API's body into a :class:`ClientCall`: the model
asked for, whether it streams, the output-token bound and the number of
outputs (what quotas reserve with the prompt bound), the facts routing rules
look at, and what a pool member must have to serve it (``needs``: the wire
API, and ``fim`` for fill-in-the-middle). Everything after parsing (route,
admit, attempt, relay, settle) is the same for every codec; the codec renders
errors, and in-band stream errors, in its API's form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from router.contract import ValidationError, error_param
from router.errors import InvalidRequest, SpillwayError
from router.streaming import error_event

Model = TypeVar("Model", bound=BaseModel)


@dataclass(slots=True, eq=False)
class ClientCall:
    """A client's request in the gateway's one call shape."""

    codec: Codec
    request: Any  # the codec's parsed model (what adapters read)
    raw: bytes  # the body as received (with the model of the path, on Azure paths)
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

    @property
    def api(self) -> str:
        return self.codec.api


def validate(model: type[Model], raw: bytes, model_name: str | None) -> Model:
    """``raw`` validated as ``model``; ``model_name`` (a path's deployment) replaces
    the body's ``model``. A 400 naming the parameter on failure."""
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        if model_name is None:
            return model.model_validate_json(raw)
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(
                f"We could not parse the JSON body of your request. ({exc})", code="invalid_json"
            ) from None
        if not isinstance(doc, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        doc["model"] = model_name
        return model.model_validate(doc)
    except ValidationError as exc:
        param, message = error_param(exc)
        if message.startswith("Invalid JSON"):
            raise InvalidRequest(
                f"We could not parse the JSON body of your request. ({message})",
                code="invalid_json",
            ) from None
        raise InvalidRequest(f"Invalid request: {message}", param=param) from None


class Codec:
    """One client API. Subclasses set the names and implement :meth:`parse`."""

    endpoint = ""  # the metrics label and access-log field
    api = ""  # the wire API of the parsed request (what a backend must speak)
    kind = "chat"  # the kind of model it serves (models.X.kind)
    path = ""  # the canonical path, for messages

    def parse(self, raw: bytes, model: str | None = None) -> ClientCall:
        raise NotImplementedError

    def error_response(self, exc: SpillwayError) -> web.Response:
        """The error as the client API's envelope (OpenAI's, here)."""
        return web.Response(
            body=exc.body(), status=exc.status, headers=exc.headers,
            content_type="application/json",
        )  # fmt: skip

    def stream_error(self, exc: SpillwayError) -> bytes:
        """An error after the stream started: in-band, then the stream's end."""
        return error_event(exc.envelope())

    def unserved(self, model: str, call: ClientCall) -> SpillwayError:
        """No member of the model's route can serve ``call``."""
        return InvalidRequest(
            f"Model `{model}` has no backend that serves {self.path}.",
            param="model", code="unsupported_endpoint",
        )  # fmt: skip
