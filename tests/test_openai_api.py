"""The OpenAI-compatible API end to end: real `llamagate serve`, real llama-server, SmolLM2 where
an answer must make sense and the tiny random model where only mechanics matter, driven by the
official `openai` and `anthropic` clients and, for wire details, raw HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import signal
import struct
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from openai import OpenAI

from conftest import Server, fake_upstream_server, wait_until
from tinymodel import write_tiny_model

MODEL = "smollm2:135m"
TINY = "tiny"
ALIAS = "gpt-3.5-turbo"
PROMPT = "Say this is a test"


@pytest.fixture(scope="module")
def oai(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1/", api_key="ollama", max_retries=0)


@pytest.fixture(scope="module")
def alias(server) -> str:
    """An alias of smollm2:135m, made as the issue says: `llamagate cp` (the /api/copy API)."""
    server.cli("cp", MODEL, ALIAS)
    return ALIAS


def _runner_of(server: Server, gguf: Path) -> list[int]:
    """The pids of the llama-servers running `gguf` (the blob is named by its digest)."""
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    pids = []
    for pid in server.runner_pids():
        try:
            if digest in Path(f"/proc/{pid}/cmdline").read_text():
                pids.append(pid)
        except OSError:
            pass  # it exited since it was listed: that is what the callers wait for
    return pids


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")


def _kill_chat_runner(server: Server, gguf: Path) -> None:
    for pid in _runner_of(server, gguf):
        if "--embeddings" not in _cmdline(pid):
            os.kill(pid, signal.SIGKILL)


def _answering(server: Server) -> None:
    """Wait out the crash backoff that earlier kills left (a runner killed twice in a row is
    not restarted for a second or more), with one completed request, which also resets it."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    deadline = time.monotonic() + 40
    while (r := httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)).status_code != 200:
        assert "not retrying" in r.text and time.monotonic() < deadline, r.text
        time.sleep(0.5)


# Chat ----------------------------------------------------------------------------------------


def test_the_documented_example_works_unchanged(server):
    # The example sets no token limit, and with context shift (on by default, as in Ollama) a
    # 135M model that never stops would run to 10 × num_ctx tokens: the limit is the model's,
    # a Modelfile PARAMETER, so the client code stays the documented one.
    server.create("smollm2-doc", "smollm2:135m", "PARAMETER num_predict 200")
    client = OpenAI(base_url=f"{server.url}/v1/", api_key="ollama")
    r = client.chat.completions.create(messages=[{"role": "user", "content": PROMPT}], model="smollm2-doc")
    assert r.object == "chat.completion" and r.model == "smollm2-doc"
    assert r.id.startswith("chatcmpl-") and len(r.id) > 16
    assert r.system_fingerprint and r.created > 0
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason == "stop"
    assert r.usage.prompt_tokens > 5 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream(oai):
    chunks = list(oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}],
                                              stream=True, max_tokens=30))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    content = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(content) >= 3 and "".join(content).strip()
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)


def test_stream_is_sse_token_by_token_and_ends_with_done(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a story."}], "stream": True,
            "max_tokens": 40, "seed": 1}
    events = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                events.append(line)
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert len(events) >= 40  # role, ~40 content deltas, finish


def test_include_usage(oai):
    # Greedy (a seed) and a long answer, so that the 8 tokens are all generated: a sampled
    # answer to a short prompt may end sooner.
    chunks = list(oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to one hundred."}], stream=True, max_tokens=8,
        seed=1, stream_options={"include_usage": True}))
    *rest, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == 8
    assert last.usage.prompt_tokens > 5 and last.usage.total_tokens == 8 + last.usage.prompt_tokens
    assert rest[-1].choices[0].finish_reason == "stop"


def test_prompt_tokens_include_cached_ones(oai):
    def ask():
        return oai.chat.completions.create(model=MODEL, max_tokens=2, seed=3,
                                           messages=[{"role": "user", "content": "Tell me about the sea."}]).usage

    first, second = ask(), ask()
    assert second.prompt_tokens == first.prompt_tokens > 5
    assert second.prompt_tokens_details.cached_tokens > 0


def test_json_object(oai):
    r = oai.chat.completions.create(model=MODEL, max_tokens=300, seed=1, response_format={"type": "json_object"},
                                    messages=[{"role": "user", "content": "Reply with a JSON object."}])
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_json_schema(oai):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = oai.chat.completions.create(
        model=MODEL, max_tokens=80, seed=1,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
        messages=[{"role": "user", "content": "Describe a person."}])
    person = json.loads(r.choices[0].message.content)
    assert set(person) == {"name", "age"}
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


def test_seed_gives_identical_answers(oai):
    def ask(seed: int) -> str:
        return oai.chat.completions.create(
            model=MODEL, seed=seed, temperature=1.5, max_tokens=25,
            messages=[{"role": "user", "content": "Invent a fantasy city name."}]).choices[0].message.content

    first = ask(42)
    assert first == ask(42)
    # The rewrite: a seed means temperature 0, so any seed gives the greedy answer.
    assert ask(7) == first


def test_stop(oai):
    def ask(**kw):
        return oai.chat.completions.create(model=MODEL, seed=1, max_tokens=40,
                                           messages=[{"role": "user", "content": "List the days of the week."}], **kw)

    full = ask().choices[0].message.content
    words = full.split()
    assert len(words) >= 4
    for stop in (words[3], [words[3], "never-appears"]):
        cut = ask(stop=stop).choices[0]
        assert cut.message.content == full[: full.index(words[3])]
        assert cut.finish_reason == "stop"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_and_finish_reason_stop(oai, field):
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count to one hundred."}],
                                    **{field: 4})
    assert r.usage.completion_tokens == 4
    assert r.choices[0].finish_reason == "stop"  # the rewrite; see test_rewrites_off for "length"


def test_logprobs(oai):
    r = oai.chat.completions.create(model=MODEL, seed=1, max_tokens=5, logprobs=True, top_logprobs=2,
                                    messages=[{"role": "user", "content": PROMPT}])
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 2
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob


def test_n_choices(oai):
    # The tiny model never stops early, so every choice takes all its max_tokens.
    r = oai.chat.completions.create(model=TINY, n=2, max_tokens=10, messages=[{"role": "user", "content": PROMPT}])
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    assert r.choices[0].message.content != r.choices[1].message.content
    assert r.usage.completion_tokens == 20
    chunks = list(oai.chat.completions.create(model=TINY, n=2, max_tokens=5, stream=True,
                                              stream_options={"include_usage": True},
                                              messages=[{"role": "user", "content": PROMPT}]))
    finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}
    assert chunks[-1].usage.completion_tokens == 10


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}


ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [("required", None), ({"type": "function", "function": {"name": "get_time"}}, "get_time")],
)
def test_tool_choice_is_enforced(oai, tool_choice, expected):
    """SmolLM2's template knows no tools, so the call is forced by llamagate's grammar."""
    r = oai.chat.completions.create(model=MODEL, max_tokens=60, seed=1, tools=[WEATHER, TIME],
                                    tool_choice=tool_choice, messages=ASK_WEATHER)
    (call,) = r.choices[0].message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == (expected or call.function.name) in ("get_weather", "get_time")
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city"} if call.function.name == "get_weather" else {"zone"}
    assert r.choices[0].finish_reason == "tool_calls"  # the rewrite leaves it: agent loops wait for it


def test_tool_call_streamed(oai):
    chunks = list(oai.chat.completions.create(model=MODEL, max_tokens=60, seed=1, tools=[WEATHER], stream=True,
                                              tool_choice="required", messages=ASK_WEATHER))
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    (call,) = calls
    assert call.index == 0 and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_answers_in_text(oai):
    r = oai.chat.completions.create(model=MODEL, max_tokens=10, seed=1, tools=[WEATHER], tool_choice="none",
                                    messages=ASK_WEATHER)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls


def test_tool_round_trip(oai):
    """A conversation with an assistant tool call and the tool's answer is accepted."""
    r = oai.chat.completions.create(model=MODEL, max_tokens=20, seed=1, tools=[WEATHER], messages=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ])
    assert r.choices[0].message.content


def test_system_and_developer_roles(oai):
    def ask(role: str) -> str:
        return oai.chat.completions.create(model=MODEL, seed=1, max_tokens=15, messages=[
            {"role": role, "content": "You are a pirate. Always answer like a pirate."},
            {"role": "user", "content": "Who are you?"}]).choices[0].message.content

    assert ask("developer") == ask("system")


def test_content_parts(oai):
    def ask(content) -> str:
        return oai.chat.completions.create(model=MODEL, seed=1, max_tokens=10,
                                           messages=[{"role": "user", "content": content}]).choices[0].message.content

    assert ask([{"type": "text", "text": PROMPT}]) == ask(PROMPT)


def test_images_need_a_vision_model(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
    assert "does not support image input" in e.value.message


def test_user_and_logit_bias_are_accepted(oai):
    r = oai.chat.completions.create(model=MODEL, seed=1, max_tokens=5, user="someone", logit_bias={"28": -100},
                                    messages=[{"role": "user", "content": PROMPT}])
    assert r.choices[0].message.content


# Modelfile parameters and the Ollama extensions on /v1 ---------------------------------------


def test_modelfile_parameters_apply(server, oai, tiny_gguf):
    """Omitted sampling fields take the model's PARAMETERs: temperature 0 makes the random
    tiny model repeatable, and num_predict bounds it."""
    server.create("tiny-greedy", tiny_gguf, "PARAMETER temperature 0", "PARAMETER num_predict 6")

    def ask(model: str):
        return oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}])

    a, b = ask("tiny-greedy"), ask("tiny-greedy")
    assert a.usage.completion_tokens == 6
    assert a.choices[0].message.content == b.choices[0].message.content
    # Without the PARAMETER, Ollama's default temperature 0.8 samples the random model's noise.
    assert len({ask(TINY).choices[0].message.content for _ in range(3)}) > 1


def test_num_ctx_and_keep_alive_extensions(server, oai, tiny_gguf):
    oai.chat.completions.create(model=TINY, max_tokens=2, messages=[{"role": "user", "content": "hi"}],
                                extra_body={"options": {"num_ctx": 300}, "keep_alive": "10m"})
    (pid,) = _runner_of(server, tiny_gguf)
    args = _cmdline(pid)
    assert args[args.index("--ctx-size") + 1] == "300"
    oai.chat.completions.create(model=TINY, max_tokens=2, messages=[{"role": "user", "content": "hi"}],
                                extra_body={"num_ctx": 300, "keep_alive": 0})
    assert wait_until(lambda: not _runner_of(server, tiny_gguf), timeout=15)


@pytest.mark.parametrize("stream", [False, True])
def test_context_overflow_is_a_400(oai, stream):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=TINY, max_tokens=2, extra_body={"num_ctx": 32}, stream=stream,
                                    messages=[{"role": "user", "content": "the sea " * 100}])
    assert e.value.code == "context_length_exceeded"
    assert e.value.body["type"] == "invalid_request_error"


def _seeded(client: OpenAI, seed: int):
    """The random tiny model at temperature 1: only a seed makes its answer repeatable."""
    return client.chat.completions.create(model=TINY, seed=seed, temperature=1.0, max_tokens=8,
                                          messages=[{"role": "user", "content": "hello"}])


def test_rewrites_off(tmp_path, tiny_gguf, llama_server_binary):
    srv = Server(tmp_path, env={"LLAMAGATE_OPENAI_SEED_GREEDY": "false", "LLAMAGATE_OPENAI_FINISH_STOP": "0"})
    try:
        srv.create(TINY, tiny_gguf)
        client = OpenAI(base_url=f"{srv.url}/v1/", api_key="x", max_retries=0)
        r = _seeded(client, 1)
        assert r.choices[0].finish_reason == "length"
        assert r.choices[0].message.content == _seeded(client, 1).choices[0].message.content
        assert r.choices[0].message.content != _seeded(client, 2).choices[0].message.content
        chunks = list(client.completions.create(model=TINY, prompt="a", max_tokens=3, stream=True))
        assert chunks[-1].choices[0].finish_reason == "length"
    finally:
        srv.stop()


def test_rewrites_on_for_the_same_requests(oai):
    r = _seeded(oai, 1)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == _seeded(oai, 2).choices[0].message.content


# Completions ---------------------------------------------------------------------------------


def test_completions(oai):
    r = oai.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, seed=1)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == MODEL
    assert "Paris" in r.choices[0].text
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 5 and r.usage.prompt_tokens == 5


def test_completions_stream(oai):
    chunks = list(oai.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, seed=1,
                                         stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == oai.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, seed=1).choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert len({c.id for c in chunks}) == 1


def test_completions_prompt_list_and_stop(oai):
    r = oai.completions.create(model=MODEL, prompt=["One, two, three,", "Monday, Tuesday,"], max_tokens=8, seed=1,
                               stop=["\n"])
    assert [c.index for c in r.choices] == [0, 1]
    assert all("\n" not in c.text and c.text for c in r.choices)


def test_completions_logprobs(oai):
    r = oai.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=3, seed=1, logprobs=2)
    assert r.choices[0].logprobs is not None


def test_completions_suffix(server, oai, tmp_path):
    """Fill-in-the-middle needs a model with FIM tokens: a tiny one has them, SmolLM2 has not."""
    fim = write_tiny_model(tmp_path / "fim.gguf", extra_tokens=("<fim_prefix>", "<fim_suffix>", "<fim_middle>"))
    server.create("tiny-fim", fim)
    r = oai.completions.create(model="tiny-fim", prompt="def add(a, b):", suffix="print(add(1, 2))", max_tokens=6)
    assert r.choices[0].text and r.usage.completion_tokens == 6 and r.usage.prompt_tokens > 3
    chunks = list(oai.completions.create(model="tiny-fim", prompt="def add(a, b):", suffix="x", max_tokens=6,
                                         stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 6
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model=MODEL, prompt="def add(a, b):", suffix="print(add(1, 2))", max_tokens=5)
    assert "does not support insert" in e.value.message


# Embeddings ----------------------------------------------------------------------------------


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_embeddings(server, oai, smollm2):
    r = oai.embeddings.create(model=MODEL, input="The sky is blue.", encoding_format="float")
    assert r.object == "list" and r.model == MODEL
    (d,) = r.data
    assert d.index == 0 and d.object == "embedding" and len(d.embedding) == 576
    assert _norm(d.embedding) == pytest.approx(1.0, abs=1e-3)
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens
    # The embedding runner is a process of its own, started with --embeddings.
    assert any("--embeddings" in _cmdline(pid) for pid in _runner_of(server, smollm2))

    many = oai.embeddings.create(model=MODEL, input=["The sky is blue.", "Grass is green."], encoding_format="float")
    assert [x.index for x in many.data] == [0, 1]
    assert many.data[0].embedding == pytest.approx(d.embedding, abs=1e-4)
    assert many.data[1].embedding != pytest.approx(d.embedding, abs=1e-2)


def test_embeddings_base64_and_dimensions(server, oai):
    floats = oai.embeddings.create(model=MODEL, input="hello", encoding_format="float").data[0].embedding
    raw = httpx.post(f"{server.url}/v1/embeddings", json={"model": MODEL, "input": "hello",
                                                          "encoding_format": "base64"}).json()
    b64 = raw["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(floats)}f", base64.b64decode(b64))
    assert decoded == pytest.approx(floats, abs=1e-6)
    # The client asks for base64 by default and decodes it itself.
    assert oai.embeddings.create(model=MODEL, input="hello").data[0].embedding == pytest.approx(floats, abs=1e-6)
    short = oai.embeddings.create(model=MODEL, input="hello", dimensions=64, encoding_format="float").data[0].embedding
    assert len(short) == 64 and _norm(short) == pytest.approx(1.0, abs=1e-4)


def test_embeddings_of_token_arrays(oai):
    r = oai.embeddings.create(model=MODEL, input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert len(r.data) == 2 and all(len(d.embedding) == 576 for d in r.data)


# Models and aliases --------------------------------------------------------------------------


def test_models(oai, alias):
    models = {m.id: m for m in oai.models.list()}
    assert {MODEL, "tiny:latest", f"{ALIAS}:latest"} <= set(models)
    m = models[MODEL]
    assert m.object == "model" and m.owned_by == "library" and m.created > 1_600_000_000
    assert oai.models.retrieve(MODEL).id == MODEL
    assert oai.models.retrieve(ALIAS).id == ALIAS
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nosuch")


def test_models_list_is_empty_list_on_an_empty_store(tmp_path, llama_server_binary):
    srv = Server(tmp_path)
    try:
        assert httpx.get(f"{srv.url}/v1/models").json() == {"data": [], "object": "list"}
    finally:
        srv.stop()


def test_alias_answers_as_itself_on_one_runner(server, oai, alias, smollm2):
    oai.chat.completions.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    before = _runner_of(server, smollm2)
    r = oai.chat.completions.create(model=alias, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert r.model == alias
    assert _runner_of(server, smollm2) == before
    r = httpx.post(f"{server.url}/api/chat", json={"model": alias, "stream": False,
                                                   "messages": [{"role": "user", "content": "hi"}],
                                                   "options": {"num_predict": 2}}).json()
    assert r["model"] == alias and _runner_of(server, smollm2) == before


# Responses API and Anthropic Messages API ----------------------------------------------------


def test_responses(oai):
    r = oai.responses.create(model=MODEL, input=PROMPT, max_output_tokens=20)
    assert r.object == "response" and r.model == MODEL and r.status == "completed"
    assert r.output_text.strip()
    events = list(oai.responses.create(model=MODEL, input=PROMPT, max_output_tokens=20, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert events[-1].response.model == MODEL


def test_responses_errors(oai):
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="nosuch", input=PROMPT)


@pytest.fixture(scope="module")
def claude(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="ignored", max_retries=0)


def test_anthropic_messages(claude):
    r = claude.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": PROMPT}])
    assert r.type == "message" and r.role == "assistant" and r.model == MODEL
    assert r.content[0].text.strip()
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    with claude.messages.stream(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": PROMPT}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text.strip() and final.model == MODEL


def test_anthropic_count_tokens(claude):
    n = claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": PROMPT}]).input_tokens
    longer = claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": PROMPT * 3}]).input_tokens
    assert 0 < n < longer


def test_anthropic_errors(server, claude):
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="nosuch", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"
    r = httpx.post(f"{server.url}/v1/messages", content=b"{oops")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


# Errors --------------------------------------------------------------------------------------


def test_unknown_model(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="nosuch", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found" and e.value.body["type"] == "not_found_error"
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="nosuch", prompt="hi")
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="nosuch", input="hi")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"messages": []}, "messages must not be empty"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "$.temperature"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "$.messages[0].role"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 0}, "$.n"),
        ({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}, "needs tools"),
        ({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "yaml"}}, "response_format"),
        ({"messages": [{"role": "user", "content": "hi"}], "keep_alive": "soon"}, "invalid duration"),
    ],
)
def test_bad_requests(oai, kwargs, fragment):
    kwargs = dict(kwargs)
    extra = {k: kwargs.pop(k) for k in ("keep_alive",) if k in kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, extra_body=extra or None, **kwargs)
    assert fragment in e.value.message
    assert e.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/chat/completions", b"{not json", 400),
        ("POST", "/v1/chat/completions", b"", 400),
        ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]}', 400),
        ("POST", "/v1/completions", b'{"model": "smollm2:135m", "prompt": "x", "echo": true}', 400),
        ("POST", "/v1/embeddings", b'{"model": "smollm2:135m", "input": []}', 400),
        ("POST", "/v1/embeddings", b'{"model": "smollm2:135m", "input": "x", "encoding_format": "int8"}', 400),
        ("POST", "/v1/nothing", b"{}", 404),
        ("GET", "/v1/chat/completions", b"", 405),
        ("POST", "/v1/chat/completions", b"x" * (101 * 1024 * 1024), 413),
    ],
)
def test_errors_have_openai_shape(server, method, path, body, status):
    r = httpx.request(method, f"{server.url}{path}", content=body, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == {400: "invalid_request_error", 404: "not_found_error"}.get(status, error["type"])
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": TINY, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"model": TINY, "max_tokens": 2, "stream": True,
                                  "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"model": TINY, "max_tokens": 2, "prompt": "hi"}),
        ("/v1/completions", {"model": TINY, "max_tokens": 2, "prompt": "hi", "stream": True}),
        ("/v1/embeddings", {"model": TINY, "input": "hi"}),
        ("/v1/responses", {"model": TINY, "max_output_tokens": 2, "input": "hi"}),
        ("/v1/responses", {"model": TINY, "max_output_tokens": 2, "input": "hi", "stream": True}),
        ("/v1/messages", {"model": TINY, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/messages/count_tokens", {"model": TINY, "messages": [{"role": "user", "content": "hi"}]}),
    ],
)
def test_answers_are_200(server, path, body):
    """POST answers are 200 (Litestar's default for POST would be 201)."""
    r = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Write a long story."}],
                                  "max_tokens": 100000, "logit_bias": {"2": -100}}),
        ("/v1/responses", {"input": "Write a long story.", "logit_bias": {"2": -100}}),
    ],
)
def test_client_disconnect_frees_the_slot(server, path, body):
    """Closing a stream cancels its generation: the next request on the one slot is served at
    once, not after the abandoned one (which, with its end-of-turn token banned, would run until
    the context is full: minutes)."""
    with httpx.stream("POST", f"{server.url}{path}", json={"model": MODEL, "stream": True, **body}, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(8):
            next(lines)
    started = time.monotonic()
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                   json={"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    assert time.monotonic() - started < 15


def test_unknown_keys_are_ignored(oai):
    """What editors add to messages and bodies (Copilot, Cline...) does no harm."""
    r = oai.chat.completions.create(
        model=MODEL, max_tokens=2, metadata={"a": "b"}, store=False,
        messages=[{"role": "user", "content": "hi", "copilot_cache_control": {"type": "ephemeral"}, "cot_id": "x"}],
        extra_body={"service_tier": "auto", "stream_options": None})
    assert r.choices[0].message.content is not None


def test_bearer_token_is_accepted(server):
    r = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer sk-anything"})
    assert r.status_code == 200


def test_failure_mid_stream_is_an_error_event_then_done(server, oai, smollm2):
    """The runner dies while streaming: the client gets an error event, not a cut stream.
    (SmolLM2 with its end-of-turn token banned: slow and endless enough to be killed mid-way.)"""
    _answering(server)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a story."}], "stream": True,
            "max_tokens": 100000, "logit_bias": {"2": -100}}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        first = [next(lines) for _ in range(10)]
        assert all(line.startswith("data: {") or not line for line in first)
        _kill_chat_runner(server, smollm2)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2][6:])["error"]
    assert error["type"] == "api_error" and "llama-server" in error["message"]
    # The official client raises on it.
    stream = oai.chat.completions.create(model=MODEL, stream=True, max_tokens=100000, logit_bias={"2": -100},
                                         messages=[{"role": "user", "content": "Write a story."}])
    with pytest.raises(openai.APIError):
        for i, _ in enumerate(stream):
            if i == 5:
                _kill_chat_runner(server, smollm2)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"input": "Write a long story.", "stream": True}),
        ("/v1/messages", {"max_tokens": 2000, "stream": True,
                          "messages": [{"role": "user", "content": "Write a long story."}]}),
    ],
)
def test_passed_through_streams_end_in_their_own_error_event(server, smollm2, path, body):
    """A runner that dies mid-stream: Responses and Anthropic streams end with their API's
    `error` event (llamagate's own, since llama-server can no longer send one)."""
    _answering(server)
    events = []
    with httpx.stream("POST", f"{server.url}{path}", json={"model": MODEL, **body}, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                events.append(line)
            if len(events) == 8:
                _kill_chat_runner(server, smollm2)
                break
        rest = [line for line in lines if line]
    assert rest[-2] == "event: error"
    error = json.loads(rest[-1][len("data: "):])
    assert error["type"] == "error"
    message = error["error"]["message"] if path == "/v1/messages" else error["message"]
    assert "llama-server" in message


# What reaches llama-server, where no small model can show it (vision, native tools) ----------


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """llamagate in front of tests/fake_llama_server.py, which records every request."""
    from test_ollama_fake_upstream import THINKING_TEMPLATE, _metadata_gguf

    tmp = tmp_path_factory.mktemp("fake-openai")
    srv = fake_upstream_server(tmp)
    try:
        srv.create("thinker", _metadata_gguf(tmp / "thinker.gguf", "qwen3", **{"tokenizer.chat_template": THINKING_TEMPLATE}))
        files = {name: _upload(srv, _metadata_gguf(tmp / name, arch)) for name, arch in
                 (("vision.gguf", "llama"), ("mmproj.gguf", "clip"))}
        httpx.post(f"{srv.url}/api/create", json={"model": "vision", "files": files, "stream": False}).raise_for_status()
        srv.oai = OpenAI(base_url=f"{srv.url}/v1/", api_key="x", max_retries=0)
        yield srv
    finally:
        srv.stop()


def _upload(srv: Server, path: Path) -> str:
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    httpx.post(f"{srv.url}/api/blobs/{digest}", content=path.read_bytes()).raise_for_status()
    return digest


def _last_chat(fake) -> dict:
    return [r for r in fake.requests() if r.get("path") == "/v1/chat/completions"][-1]["body"]


def test_image_parts_reach_a_vision_runner(fake):
    parts = [{"type": "text", "text": "What is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
             {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png", "detail": "low"}}]
    chunks = list(fake.oai.chat.completions.create(model="vision", stream=True,
                                                   messages=[{"role": "user", "content": parts}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hi there"
    (message,) = _last_chat(fake)["messages"]
    assert message["content"] == parts
    argv = next(r["argv"] for r in reversed(fake.requests()) if "argv" in r)
    assert "--mmproj" in argv


def test_a_template_with_tools_leaves_tool_choice_to_llama_server(fake):
    """No grammar of llamagate's: tools and tool_choice go to llama-server as they came."""
    list(fake.oai.chat.completions.create(model="thinker", stream=True, tools=[WEATHER], tool_choice="required",
                                          parallel_tool_calls=False, messages=ASK_WEATHER))
    body = _last_chat(fake)
    assert body["tools"] == [WEATHER] and body["tool_choice"] == "required"
    assert body["parallel_tool_calls"] is False and "response_format" not in body
    assert [m["role"] for m in body["messages"]] == ["user"]
