"""Real client libraries in the conversations they really have with SmolLM2: LangChain's
ChatOllama with tools, the `ollama` client's tool round trip, `openai` streaming with tools, and
a chat in each dialect longer than the context it is served with: 16 messages over 512 tokens
here, 100 over the default 4,096 in tests/e2e/long_chats.py (contrib/e2e.sh runs it: three minutes
of prompt processing on one thread, too long for the default run)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest
from conftest import Server
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama

MODEL = "smollm2:135m"
SHORT = "smollm2:short"  # SmolLM2 created with PARAMETER num_ctx SHORT_CTX
SHORT_CTX = 512
# Greedy, short: the answers are the model's own, but a run repeats itself.
OPTIONS = {"temperature": 0, "seed": 1, "num_predict": 48}
QUESTION = "What is the weather in Paris? Use the get_weather tool."
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"22 C and sunny in {city}"


@pytest.fixture(scope="module")
def gate(server: Server) -> Server:
    """The suite's shared server, SmolLM2 imported (tests/conftest.py)."""
    return server


@pytest.fixture(scope="module")
def short(gate: Server, smollm2: Path) -> str:
    gate.create(SHORT, smollm2, f"PARAMETER num_ctx {SHORT_CTX}")
    return SHORT


@pytest.fixture(scope="module")
def oai(gate: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gate.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def long_chat(turns: int) -> list[dict[str, str]]:
    """`turns` messages, user and assistant in turn, about 70 tokens each (16: some 1,100 tokens;
    100: some 7,000), so the server must drop the oldest turns to answer the newest."""
    filler = ("The lighthouse keeper wrote the tide tables by hand each evening, noting the wind, the "
              "colour of the sea, the ships that passed and the birds that rested on the rail. ")
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for i in range(turns - 1):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"Entry {i}. {filler}"})
    messages.append({"role": "user", "content": "In one sentence: what did the keeper write?"})
    return messages


# LangChain --------------------------------------------------------------------------------------


def test_langchain_chat(gate: Server) -> None:
    llm = ChatOllama(model=MODEL, base_url=gate.url, temperature=0, seed=1, num_predict=32)
    answer = llm.invoke([HumanMessage("Name a colour.")])
    assert isinstance(answer, AIMessage) and answer.content.strip()
    assert answer.response_metadata["model"] == MODEL and answer.response_metadata["done"] is True
    streamed = list(llm.stream("Name a fruit."))
    assert len(streamed) > 1 and all(isinstance(c, AIMessageChunk) for c in streamed)
    assert "".join(c.content for c in streamed).strip()


def test_langchain_bind_tools_round_trip(gate: Server) -> None:
    llm = ChatOllama(model=MODEL, base_url=gate.url, temperature=0, seed=1, num_predict=48).bind_tools([get_weather])
    first = llm.invoke([HumanMessage(QUESTION)])
    assert isinstance(first, AIMessage) and (first.tool_calls or first.content.strip())
    # Whatever the small model chose, the conversation goes on the way an agent loop sends it:
    # its call (or the call a larger model would have made), then the tool's answer.
    calls = first.tool_calls or [{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1", "type": "tool_call"}]
    assert all(c["name"] == "get_weather" for c in calls)
    history = [HumanMessage(QUESTION), AIMessage(content="", tool_calls=calls),
               *(ToolMessage(get_weather.invoke(c["args"]), tool_call_id=c["id"]) for c in calls)]
    final = llm.invoke(history)
    assert isinstance(final, AIMessage) and (final.content.strip() or final.tool_calls)


# The ollama client --------------------------------------------------------------------------------


def test_ollama_tool_round_trip(gate: Server) -> None:
    client = ollama.Client(host=gate.url)
    messages: list = [{"role": "user", "content": QUESTION}]
    first = client.chat(model=MODEL, messages=messages, tools=[WEATHER], options=OPTIONS)
    assert first.done and (first.message.tool_calls or first.message.content.strip())
    calls = first.message.tool_calls or [ollama.Message.ToolCall(
        function=ollama.Message.ToolCall.Function(name="get_weather", arguments={"city": "Paris"}))]
    messages += [{"role": "assistant", "content": "", "tool_calls": calls},
                 *({"role": "tool", "tool_name": c.function.name, "content": "22 C and sunny"} for c in calls)]
    # Streamed this time, as chat UIs ask.
    lines = list(client.chat(model=MODEL, messages=messages, tools=[WEATHER], options=OPTIONS, stream=True))
    assert lines[-1].done and lines[-1].done_reason in ("stop", "length")
    assert "".join(line.message.content for line in lines).strip() or any(line.message.tool_calls for line in lines)


def test_ollama_chat_longer_than_the_context(gate: Server, short: str) -> None:
    r = ollama.Client(host=gate.url).chat(model=short, messages=long_chat(16), options=OPTIONS)
    assert r.done and r.message.content.strip()
    assert 0 < r.prompt_eval_count <= SHORT_CTX


# The openai client --------------------------------------------------------------------------------


def test_openai_streaming_with_tools(oai: openai.OpenAI) -> None:
    question = {"role": "user", "content": QUESTION}
    chunks = list(oai.chat.completions.create(
        model=MODEL, messages=[question], tools=[WEATHER], stream=True, temperature=0, seed=1, max_tokens=48))
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish and finish[-1] in ("stop", "length", "tool_calls")
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert content.strip() or deltas
    # The round trip: the assistant's call and the tool's answer, streamed back.
    call_id = next((t.id for t in deltas if t.id), "call_1")
    name = next((t.function.name for t in deltas if t.function and t.function.name), "get_weather")
    arguments = "".join(t.function.arguments or "" for t in deltas if t.function) or '{"city": "Paris"}'
    history = [question,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
               {"role": "tool", "tool_call_id": call_id, "content": "22 C and sunny"}]
    again = list(oai.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], stream=True, temperature=0, seed=1, max_tokens=48))
    assert any(c.choices and c.choices[0].finish_reason for c in again)
    assert "".join(c.choices[0].delta.content or "" for c in again if c.choices).strip() or any(
        c.choices and c.choices[0].delta.tool_calls for c in again)


def test_openai_chat_longer_than_the_context(oai: openai.OpenAI, short: str) -> None:
    r = oai.chat.completions.create(model=short, messages=long_chat(16), temperature=0, seed=1, max_tokens=48)
    assert r.choices[0].message.content.strip()
    assert 0 < r.usage.prompt_tokens <= SHORT_CTX
