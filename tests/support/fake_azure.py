"""A real aiohttp server that speaks Azure OpenAI's chat-completions dialect.

``POST /openai/deployments/{deployment}/chat/completions?api-version=V`` (and
``/embeddings``, OpenAI's embeddings answer naming the deployed model):

* no or unknown ``api-version``: 404 ``{"error":{"code":"404","message":"Resource not found"}}``;
* ``api-key`` must match (or ``Authorization: Bearer <token>`` when a token is
  set), else 401 with Azure's message; an unknown deployment is a 404
  ``DeploymentNotFound``;
* parameters that are not in OpenAI's published request schema (vLLM extras
  such as ``top_k``) are a 400 "Unrecognized request argument supplied";
* answers name the deployed model (not the deployment) and carry content
  filter results; a stream starts with Azure's prompt-filter event (no choices,
  empty model). With tools and no tool result in the last message it calls the
  named or first tool; after tool results it answers ``Result: <results>``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.support.fakes import FakeServer, Seen
from tests.support.schema import _bundle

API_VERSIONS = {"2024-06-01", "2024-10-21", "2025-04-01-preview"}
SAFE = {
    k: {"filtered": False, "severity": "safe"} for k in ("hate", "self_harm", "sexual", "violence")
}
UNAUTHORIZED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
    "to provide a valid key for an active subscription and use a correct regional "
    "API endpoint for your resource."
)


@dataclass
class AzureBehaviour:
    api_key: str | None = "azure-test-key"
    token: str | None = None  # accepted as ``Authorization: Bearer <token>``
    deployments: dict[str, str] = field(default_factory=lambda: {"gpt4o-prod": "gpt-4o-2024-08-06"})
    words: int = 5
    error: tuple[int, str, str] | None = None  # (status, code, message) for every request


def _known_params() -> set[str]:
    props: dict[str, Any] = {}
    for part in _bundle()["$defs"]["CreateChatCompletionRequest"]["allOf"]:
        ref = part.get("$ref")
        target = _bundle()["$defs"][ref.rsplit("/", 1)[1]] if ref else part
        props.update(target.get("properties", {}))
        for sub in target.get("allOf", []):
            if "$ref" in sub:
                props.update(
                    _bundle()["$defs"][sub["$ref"].rsplit("/", 1)[1]].get("properties", {})
                )
    return set(props)


def _schema_value(schema: Any, name: str) -> Any:
    if not isinstance(schema, dict):
        return f"{name}-value"
    if schema.get("type") == "object":
        return {k: _schema_value(v, k) for k, v in (schema.get("properties") or {}).items()}
    return {"integer": 3, "number": 2.5, "boolean": False}.get(schema.get("type"), f"{name}-value")


class FakeAzure(FakeServer):
    """``await start()``; ``url`` is the resource endpoint (``https://x.openai.azure.com``)."""

    def __init__(self, behaviour: AzureBehaviour | None = None) -> None:
        self.behaviour = behaviour or AzureBehaviour()
        self.seen: list[Seen] = []
        self.known = _known_params()
        app = web.Application()
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        app.router.add_post("/openai/deployments/{deployment}/embeddings", self._embeddings)
        super().__init__(app)

    @property
    def url(self) -> str:
        return self.base

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message}}, status=status)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        refused = self._refused(request)
        if refused is not None:
            return refused
        raw = await request.read()
        body = orjson.loads(raw)
        self.seen.append(Seen(request.path, dict(request.headers), body, raw, dict(request.query)))
        inputs = [body["input"]] if isinstance(body["input"], str) else body["input"]
        dims = int(body.get("dimensions") or 3)
        data = [{"object": "embedding", "index": i, "embedding": [0.5] * dims}
                for i in range(len(inputs))]  # fmt: skip
        tokens = sum(len(str(x).split()) for x in inputs)
        return web.json_response({
            "object": "list", "data": data,
            "model": self.behaviour.deployments[request.match_info["deployment"]],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })  # fmt: skip

    def _refused(self, request: web.Request) -> web.Response | None:
        """Azure's answer to a bad api-version, bad credentials or an unknown deployment."""
        b = self.behaviour
        if request.query.get("api-version") not in API_VERSIONS:
            return self._error(404, "404", "Resource not found")
        key_ok = b.api_key is not None and request.headers.get("api-key") == b.api_key
        token_ok = (
            b.token is not None and request.headers.get("Authorization") == f"Bearer {b.token}"
        )
        if not (key_ok or token_ok):
            return self._error(401, "401", UNAUTHORIZED)
        if request.match_info["deployment"] not in b.deployments:
            return self._error(
                404,
                "DeploymentNotFound",
                "The API deployment for this resource "
                "does not exist. If you created the deployment within the last 5 "
                "minutes, please wait a moment and try again.",
            )
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        b = self.behaviour
        refused = self._refused(request)
        if refused is not None:
            return refused
        deployment = request.match_info["deployment"]
        raw = await request.read()
        body = orjson.loads(raw)
        self.seen.append(Seen(request.path, dict(request.headers), body, raw, dict(request.query)))
        for key in body:
            if key not in self.known:
                return web.json_response(
                    {
                        "error": {
                            "message": f"Unrecognized request argument supplied: {key}",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": None,
                        }
                    },
                    status=400,
                )
        if b.error is not None:
            return self._error(*b.error)
        model = b.deployments[deployment]
        message, finish, completion = self._answer(body)
        prompt = sum(len(str(m.get("content") or "").split()) + 3 for m in body["messages"])
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if body.get("stream"):
            return await self._stream(
                request, body, model=model, message=message, finish=finish, usage=usage
            )
        return web.json_response(
            {
                "id": "chatcmpl-azure",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "fp_azure",
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": SAFE}],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": finish,
                        "logprobs": None,
                        "message": message,
                        "content_filter_results": SAFE,
                    }
                ],
                "usage": usage,
            }
        )

    def _answer(self, body: dict[str, Any]) -> tuple[dict[str, Any], str, int]:
        last = body["messages"][-1]
        tools = body.get("tools") or []
        choice = body.get("tool_choice", "auto")
        if tools and choice != "none" and last.get("role") != "tool":
            fn = tools[0]["function"]
            if isinstance(choice, dict):
                fn = next(
                    t["function"]
                    for t in tools
                    if t["function"]["name"] == choice["function"]["name"]
                )
            args = orjson.dumps(_schema_value(fn.get("parameters"), fn["name"])).decode()
            call = {
                "id": f"call_azure{len(self.seen)}",
                "type": "function",
                "function": {"name": fn["name"], "arguments": args},
            }
            msg = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
            return msg, "tool_calls", max(1, len(args) // 4)
        if last.get("role") == "tool":
            results = [str(m.get("content")) for m in body["messages"] if m.get("role") == "tool"]
            words = ["Result:", *" ".join(results).split()]
        else:
            words = [f"w{i}" for i in range(self.behaviour.words)]
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if cap and len(words) > cap:
            words, finish = words[:cap], "length"
        return (
            {"role": "assistant", "content": " ".join(words), "refusal": None},
            finish,
            len(words),
        )

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        *,
        model: str,
        message: dict[str, Any],
        finish: str,
        usage: dict[str, int],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {
            "id": "chatcmpl-azure",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_azure",
        }

        def ev(obj: dict[str, Any]) -> bytes:
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        def chunk(delta: dict[str, Any], reason: str | None = None) -> bytes:
            return ev(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": delta,
                            "finish_reason": reason,
                            "logprobs": None,
                            "content_filter_results": SAFE,
                        }
                    ],
                }
            )

        out = [
            ev(
                {
                    "choices": [],
                    "created": 0,
                    "id": "",
                    "model": "",
                    "object": "",
                    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": SAFE}],
                }
            ),
            chunk({"role": "assistant", "content": "", "refusal": None}),
        ]
        for call in message.get("tool_calls") or ():
            fn = call["function"]
            out.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": fn["name"], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            for cut in range(0, len(fn["arguments"]), 4):
                out.append(
                    chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "function": {"arguments": fn["arguments"][cut : cut + 4]},
                                }
                            ]
                        }
                    )
                )
        for i, word in enumerate((message.get("content") or "").split()):
            out.append(chunk({"content": word if i == 0 else " " + word}))
        out.append(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            out.append(ev({**base, "choices": [], "usage": usage}))
        out.append(b"data: [DONE]\n\n")
        for data in out:
            await resp.write(data)
        await resp.write_eof()
        return resp
