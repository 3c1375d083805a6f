"""Agent frameworks that default to the Responses API, through the gateway.

The OpenAI Agents SDK (its default model provider speaks Responses) and
pydantic-ai's ``OpenAIResponsesModel`` each run a tool-using agent: the model
calls ``get_weather``, the framework runs it and sends the result back, the
model answers with it. Bridged to a vLLM-style chat backend and passed through
to a native Responses backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from openai import AsyncOpenAI

from tests.e2e.test_responses_api import KEY_A, SCRIPT, config
from tests.support.fake_responses import FakeResponses, FakeToolChat
from tests.support.gateway import Running, start_gateway


@pytest.fixture
async def gw() -> AsyncIterator[tuple[Running, FakeToolChat, FakeResponses]]:
    chat = await FakeToolChat(SCRIPT).start()
    native = await FakeResponses(SCRIPT).start()
    running = await start_gateway(config(chat.url, native.url, None))
    yield running, chat, native
    await running.stop()
    await chat.stop()
    await native.stop()


@pytest.fixture
def agents_sdk() -> Iterator[None]:
    import agents

    agents.set_tracing_disabled(True)  # its exporter would reach OpenAI
    yield
    agents.set_tracing_disabled(False)


@pytest.mark.usefixtures("agents_sdk")
@pytest.mark.parametrize("model", ["bridged", "native"])
async def test_openai_agents_sdk_runs_a_tool(
    gw: tuple[Running, FakeToolChat, FakeResponses], model: str
) -> None:
    from agents import Agent, Runner, function_tool, set_default_openai_client

    running, chat, native = gw
    ran: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return "18C and sunny"

    async with AsyncOpenAI(base_url=running.base_url, api_key=KEY_A, max_retries=0) as oa:
        set_default_openai_client(oa, use_for_tracing=False)
        agent = Agent(
            name="forecaster",
            instructions="Answer with the weather.",
            model=model,
            tools=[get_weather],
        )
        result = await Runner.run(agent, "What is the weather in Paris?")
    assert ran == ["Paris"]
    assert result.final_output == "Result: 18C and sunny"
    seen = chat.seen if model == "bridged" else native.seen
    assert len(seen) == 2  # the tool call, then the answer
    if model == "native":
        assert seen[0].path == "/v1/responses"
    else:
        assert seen[1].body["messages"][-1]["role"] == "tool"


@pytest.mark.parametrize("model", ["bridged", "native"])
async def test_pydantic_ai_responses_model_runs_a_tool(
    gw: tuple[Running, FakeToolChat, FakeResponses], model: str
) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    running, chat, native = gw
    ran: list[str] = []

    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return "18C and sunny"

    async with AsyncOpenAI(base_url=running.base_url, api_key=KEY_A, max_retries=0) as oa:
        provider = OpenAIProvider(openai_client=oa)
        agent = Agent(
            OpenAIResponsesModel(model, provider=provider),
            instructions="Be brief.",
            tools=[get_weather],
        )
        result = await agent.run("What is the weather in Paris?")
    assert ran == ["Paris"]
    assert result.output == "Result: 18C and sunny"
    usage = result.usage
    assert usage.output_tokens > 0 and usage.input_tokens > 0
    seen = chat.seen if model == "bridged" else native.seen
    assert len(seen) == 2
