"""Tools on every model, in both dialects: where the chat template knows no tools (SmolLM2's),
llamagate lists them in a system note and reads the model's call (proxy/tools.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import msgspec
import ollama
import pytest
from openai import OpenAI

from conftest import fake_upstream_server
from proxy import tools
from test_ollama_fake_upstream import THINKING_TEMPLATE, _metadata_gguf

MODEL = "smollm2:135m"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo"]}},
                   "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0, "num_predict": 40}
# The 36 built-in tools Open WebUI 0.12.4 sends with every chat message from its UI (captured
# from its /api/chat body): 26 kB of JSON schemas.
OPEN_WEBUI_TOOLS = json.loads((Path(__file__).parent / "open_webui_tools.json").read_text())
# A call forced by `format` (Ollama has no tool_choice): the grammar makes SmolLM2 write one.
CALL_FORMAT = tools.call_schema([msgspec.convert(WEATHER["function"], tools.Function)])


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.url)


@pytest.fixture(scope="module")
def oai(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1/", api_key="x", max_retries=0)


# The real model -------------------------------------------------------------------------------


def test_api_chat_takes_tools_on_a_model_whose_template_has_none(client):
    """Open WebUI and LangChain send tools with every chat: a 200 with an answer, not a 400."""
    assert "tools" not in client.show(MODEL).capabilities
    r = client.chat(model=MODEL, messages=ASK, tools=[WEATHER], options=GREEDY)
    assert r.done and (r.message.content or r.message.tool_calls)
    lines = list(client.chat(model=MODEL, messages=ASK, tools=[WEATHER], options=GREEDY, stream=True))
    assert lines[-1].done and all(not line.done for line in lines[:-1])


def test_open_webui_builtin_tools_fit_the_default_context(server, smollm2, llama_server_binary):
    """Their whole schemas are 6037 tokens, over the default num_ctx (4096) with one message and
    nothing to drop; the note's signatures leave room for the answer. The prompt llama-server
    would read (`_debug_render_only`) is counted by llama-tokenize of the same build with the
    model's vocabulary: reading it at one thread would take some 40 s."""
    assert len(OPEN_WEBUI_TOOLS) == 36
    r = httpx.post(f"{server.url}/api/chat", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Write three sentences about the sea."}],
        "tools": OPEN_WEBUI_TOOLS, "stream": False, "_debug_render_only": True})
    prompt = r.json()["_debug_info"]["rendered_template"]
    assert all(t["function"]["name"] in prompt for t in OPEN_WEBUI_TOOLS)
    ids = subprocess.run([str(llama_server_binary.with_name("llama-tokenize")), "-m", str(smollm2), "--stdin",
                          "--ids", "--log-disable"], input=prompt, capture_output=True, text=True, check=True).stdout
    assert 1000 < len(json.loads(ids.strip().splitlines()[-1])) < 3000


def test_api_chat_tool_call_and_round_trip(client, server):
    first = client.chat(model=MODEL, messages=ASK, tools=[WEATHER], format=CALL_FORMAT, options=GREEDY)
    (call,) = first.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments["city"] in ("Paris", "Tokyo")
    assert first.message.content == "" and first.done_reason == "stop"
    raw = httpx.post(f"{server.url}/api/chat", json={"model": MODEL, "messages": ASK, "tools": [WEATHER],
                                                     "format": CALL_FORMAT, "options": GREEDY, "stream": False},
                     timeout=120).json()
    (wire_call,) = raw["message"]["tool_calls"]
    assert wire_call["id"].startswith("call_") and wire_call["function"]["index"] == 0
    assert isinstance(wire_call["function"]["arguments"], dict)
    # Streamed: the call on a line of its own with empty content, then the done line.
    lines = list(client.chat(model=MODEL, messages=ASK, tools=[WEATHER], format=CALL_FORMAT, options=GREEDY,
                             stream=True))
    call_lines = [line for line in lines if line.message.tool_calls]
    assert len(call_lines) == 1 and call_lines[0].message.content == ""
    assert lines[-1].done and not lines[-1].message.tool_calls
    assert "".join(line.message.content for line in lines) == ""
    # The result goes back as a tool message; the model answers from the longer prompt.
    messages = [*ASK, first.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_name": "get_weather", "content": '{"temperature": "22 C"}'}]
    second = client.chat(model=MODEL, messages=messages, tools=[WEATHER], options=GREEDY)
    assert second.done and second.prompt_eval_count > first.prompt_eval_count


def test_both_dialects_read_the_same_call(client, oai):
    """The same conversation, tools and grammar through /api/chat and /v1: the same call."""
    native = client.chat(model=MODEL, messages=ASK, tools=[WEATHER], format=CALL_FORMAT, options=GREEDY)
    v1 = oai.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "call", "schema": CALL_FORMAT}})
    (call,) = v1.choices[0].message.tool_calls
    assert call.function.name == native.message.tool_calls[0].function.name
    assert json.loads(call.function.arguments) == native.message.tool_calls[0].function.arguments
    assert v1.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_v1_forced_call_finishes_with_tool_calls(oai, stream):
    """The finish_reason rewrite leaves tool_calls alone: agent loops wait for it."""
    r = oai.chat.completions.create(model=MODEL, max_tokens=60, seed=1, tools=[WEATHER], tool_choice="required",
                                    messages=ASK, stream=stream)
    if stream:
        chunks = list(r)
        (call,) = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
        finish = chunks[-1].choices[0].finish_reason
    else:
        (call,) = r.choices[0].message.tool_calls
        finish = r.choices[0].finish_reason
    assert call.function.name == "get_weather" and finish == "tool_calls"
    # The round trip: the call and its result back, a 200 with an answer.
    again = oai.chat.completions.create(model=MODEL, max_tokens=20, seed=1, tools=[WEATHER], messages=[
        *ASK, {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.function.name,
                                                             "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}])
    assert again.choices[0].message.content and again.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        (None, "f()"),
        ({"type": "object", "properties": {}}, "f()"),
        (WEATHER["function"]["parameters"], 'f(city: "Paris"|"Tokyo")'),
        ({"type": "object", "properties": {"n": {"type": "integer", "default": 0, "description": "left out"},
                                           "q": {"type": "string"}}, "required": ["q"]},
         "f(n?: integer = 0, q: string)"),
        ({"type": "object", "properties": {"a": {"type": ["string", "null"]}, "b": {"const": "x"},
                                           "c": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]}}},
         'f(a?: string|null, b?: "x", c?: integer|boolean)'),
        ({"type": "object", "properties": {"ids": {"type": "array", "items": {"type": "string"}},
                                           "kinds": {"type": "array", "items": {"enum": ["a", "b"]}},
                                           "any": {"type": "array"}, "free": {"type": "object"}}},
         'f(ids?: string[], kinds?: ("a"|"b")[], any?: any[], free?: object)'),
        ({"type": "object", "properties": {"at": {"type": "object", "properties": {"x": {"type": "number"}},
                                                  "required": ["x"]}}},
         "f(at?: {x: number})"),
        # Pydantic's $defs, written out where used; a recursive one named the second time.
        ({"type": "object", "properties": {"node": {"$ref": "#/$defs/Node"}, "other": {"$ref": "#/$defs/Gone"}},
          "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}}},
         "f(node?: {next?: Node}, other?: Gone)"),
        # Parts of the wrong shape are left out, never a 500.
        ({"properties": ["a"], "$defs": ["b"]}, "f()"),
        ({"properties": {"a": "string", "b": {"type": "array", "items": 1}}, "required": "a"}, "f(a?: any, b?: any[])"),
    ],
)
def test_signature(parameters, expected):
    assert tools.signature(tools.Function("f", None, parameters)) == expected


def test_signature_has_the_description_on_one_line():
    f = tools.Function("f", "Does\n  things.\n\nReally.", None)
    assert tools.signature(f) == "f(): Does things. Really."


# Exact wire checks against the fake llama-server ----------------------------------------------


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fake-tools")
    srv = fake_upstream_server(tmp)
    try:
        srv.create("plain", _metadata_gguf(tmp / "plain.gguf", "llama"))
        srv.create("native", _metadata_gguf(tmp / "native.gguf", "qwen3", **{"tokenizer.chat_template": THINKING_TEMPLATE}))
        srv.client = ollama.Client(host=srv.url)
        srv.oai = OpenAI(base_url=f"{srv.url}/v1/", api_key="x", max_retries=0)
        yield srv
    finally:
        srv.stop()


def _last_chat(fake) -> dict:
    return [r for r in fake.requests() if r.get("path") == "/v1/chat/completions"][-1]["body"]


CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def _echo(text: str) -> list[dict]:
    return [{"role": "user", "content": f"ECHO:{text}"}]


def _answer_lines(fake, text: str) -> list[dict]:
    """/api/chat's stream lines for an answer of `text`, after the fake's reasoning lines
    (reasoning is never held back: it streams first)."""
    lines = [json.loads(line) for line in httpx.post(f"{fake.url}/api/chat", json={
        "model": "plain", "messages": _echo(text), "tools": [WEATHER]}).text.splitlines()]
    assert "".join(line["message"].get("thinking", "") for line in lines[:2]) == "Let me think."
    return lines[2:]


def test_the_note_replaces_tools_for_llama_server(fake):
    fake.client.chat(model="plain", messages=_echo("x"), tools=[WEATHER], think=False)
    body = _last_chat(fake)
    assert "tools" not in body and "response_format" not in body
    system = body["messages"][0]
    assert system["role"] == "system"
    assert system["content"].split("\n")[:2] == ["You can call these functions:",
                                                 '- get_weather(city: "Paris"|"Tokyo"): The weather in a city']
    # A template with tools gets them as they came, and no note.
    fake.client.chat(model="native", messages=_echo("x"), tools=[WEATHER], think=False)
    body = _last_chat(fake)
    assert body["tools"] == [WEATHER] and [m["role"] for m in body["messages"]] == ["user"]


def test_an_answer_that_is_a_call_is_a_tool_call(fake):
    lines = _answer_lines(fake, CALL)
    assert [line["message"].get("tool_calls") is not None for line in lines] == [True, False]
    (call,) = lines[0]["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}, "index": 0}
    assert call["id"].startswith("call_") and lines[0]["message"]["content"] == ""
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop"


@pytest.mark.parametrize("text", ["Sunny in Paris.", '{"city": "Paris"}', '{"name": "other", "arguments": {}}'])
def test_an_answer_that_is_no_call_is_content(fake, text):
    lines = _answer_lines(fake, text)
    assert "".join(line["message"]["content"] for line in lines) == text
    assert not any(line["message"].get("tool_calls") for line in lines)
    if not text.startswith("{"):  # text streams as it comes; JSON is held back to its end
        assert [line["message"]["content"] for line in lines[:2]] == [text[: len(text) // 2], text[len(text) // 2:]]


def test_earlier_calls_reach_the_template_as_content(fake):
    messages = [*ASK, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "sunny"}]
    fake.client.chat(model="plain", messages=messages, tools=[WEATHER], think=False)
    body = _last_chat(fake)
    assert body["messages"][2] == {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"city":"Paris"}}'}
    assert body["messages"][3] == {"role": "tool", "content": "sunny", "name": "get_weather"}


def test_bad_tools_are_a_400(fake):
    r = httpx.post(f"{fake.url}/api/chat", json={"model": "plain", "messages": ASK, "tools": [{"type": "function"}]})
    assert r.status_code == 400 and r.json()["error"].startswith("invalid tools")


@pytest.mark.parametrize("stream", [False, True])
def test_v1_auto_reads_a_call_too(fake, stream):
    r = fake.oai.chat.completions.create(model="plain", messages=_echo(CALL), tools=[WEATHER], stream=stream,
                                         stream_options={"include_usage": True} if stream else None)
    if stream:
        chunks = list(r)
        (call,) = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
        assert chunks[-1].usage is not None and not chunks[-1].choices
    else:
        (call,) = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert _last_chat(fake)["messages"][0]["content"].startswith("You can call these functions:\n")


def test_v1_tool_choice_none_sends_no_note(fake):
    fake.oai.chat.completions.create(model="plain", messages=_echo("x"), tools=[WEATHER], tool_choice="none")
    assert [m["role"] for m in _last_chat(fake)["messages"]] == ["user"]


def test_tool_calls_stop_rewrite_can_be_turned_on(tmp_path):
    srv = fake_upstream_server(tmp_path, env={"LLAMAGATE_OPENAI_TOOL_CALLS_STOP": "true"})
    try:
        srv.create("plain", _metadata_gguf(tmp_path / "plain.gguf", "llama"))
        oai = OpenAI(base_url=f"{srv.url}/v1/", api_key="x", max_retries=0)
        r = oai.chat.completions.create(model="plain", messages=_echo(CALL), tools=[WEATHER])
        assert r.choices[0].message.tool_calls and r.choices[0].finish_reason == "stop"
    finally:
        srv.stop()
