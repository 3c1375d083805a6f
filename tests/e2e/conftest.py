"""Upstreams shared by the Anthropic Messages tests: a fake Anthropic API (native)
and a fake vLLM server answering six words (translated)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fakes import Behaviour, FakeOpenAI


@pytest.fixture
async def native() -> AsyncIterator[FakeAnthropic]:
    server = await FakeAnthropic().start()
    yield server
    await server.stop()


@pytest.fixture
async def vllm() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI("vllm", Behaviour(words=6)).start()
    yield server
    await server.stop()
