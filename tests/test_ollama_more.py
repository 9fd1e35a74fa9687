"""The rest of Ollama's native API end to end, with the official `ollama` client against a real
`llamagate serve` and real llama-servers: embeddings, show, ps and keep_alive, copy, delete,
create and blobs, tools, think, generate's system/raw/template/context, and the CLI."""

from __future__ import annotations

import hashlib
import json
import math
import time
from datetime import datetime

import httpx
import ollama
import pytest
from conftest import Server, wait_until
from tinymodel import write_tiny_model

MODEL = "smollm2:135m"
GREEDY = {"temperature": 0, "num_predict": 12}

# A Hermes-style template (tools in the system turn, calls in <tool_call> tags) for the tiny
# model, whose weights are steered to open a tool call: llama-server's grammar then writes it.
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nYou may call these functions:\n<tools>\n"
    "{%- for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    'Call one as <tool_call>{"name": <name>, "arguments": <args>}</tool_call><|im_end|>\n{%- endif %}'
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{%- elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    '{%- for call in message.tool_calls %}<tool_call>{"name": "{{ call.function.name }}", '
    '"arguments": {{ call.function.arguments | tojson }}}</tool_call>{%- endfor %}<|im_end|>\n'
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo"]}},
                   "required": ["city"]}}}


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.url)


@pytest.fixture(scope="module")
def own(tmp_path_factory, tiny_gguf, smollm2, llama_server_binary):
    """A server of this module's own, for tests that unload, delete and count blobs."""
    tmp = tmp_path_factory.mktemp("more")
    srv = Server(tmp)
    try:
        srv.create("tiny", tiny_gguf)
        srv.create("smol", smollm2)
        tools = write_tiny_model(tmp / "tools.gguf", context_length=2048, chat_template=TOOLS_TEMPLATE,
                                 extra_tokens=("<tool_call>", "</tool_call>"), favour="<tool_call>")
        srv.create("tools", tools)
        srv.client = ollama.Client(host=srv.url)
        yield srv
    finally:
        srv.stop()


def _show(srv: Server, model: str) -> dict:
    """/api/show as JSON: the ollama client's ShowResponse has no `system`."""
    return httpx.post(f"{srv.url}/api/show", json={"model": model}).json()


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _blobs(srv: Server) -> set[str]:
    return {p.name for p in (srv.models / "blobs").iterdir()}


# Embeddings ----------------------------------------------------------------------------------


def test_embed_single_and_batch(client):
    one = client.embed(model=MODEL, input="The sky is blue.")
    assert len(one.embeddings) == 1 and len(one.embeddings[0]) == 576  # smollm2's embedding_length
    assert _norm(one.embeddings[0]) == pytest.approx(1.0)
    assert one.prompt_eval_count > 0 and one.total_duration >= one.load_duration > 0
    batch = client.embed(model=MODEL, input=["The sky is blue.", "Bananas are yellow.", "The sky is blue."])
    a, b, c = batch.embeddings
    assert a == pytest.approx(one.embeddings[0], abs=1e-5) and a == pytest.approx(c, abs=1e-5)
    assert a != pytest.approx(b, abs=1e-3)
    banana = client.embed(model=MODEL, input="Bananas are yellow.").prompt_eval_count
    assert batch.prompt_eval_count == 2 * one.prompt_eval_count + banana


def test_embed_dimensions(client):
    full = client.embed(model=MODEL, input="hello world").embeddings[0]
    cut = client.embed(model=MODEL, input="hello world", dimensions=32).embeddings[0]
    assert len(cut) == 32 and _norm(cut) == pytest.approx(1.0)
    head = full[:32]
    assert cut == pytest.approx([x / _norm(head) for x in head], abs=1e-5)


def test_embed_truncate(client):
    text = "one two three four five six seven eight nine ten " * 3
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model=MODEL, input=text, truncate=False, options={"num_ctx": 16})
    assert e.value.status_code == 400 and e.value.error == "the input length exceeds the context length"
    r = client.embed(model=MODEL, input=text, truncate=True, options={"num_ctx": 16})
    assert r.prompt_eval_count == 16 and len(r.embeddings[0]) == 576


def test_embeddings_legacy_and_load_only(client):
    legacy = client.embeddings(model=MODEL, prompt="hello world").embedding
    assert legacy == pytest.approx(client.embed(model=MODEL, input="hello world").embeddings[0], abs=1e-5)
    assert client.embed(model=MODEL, input="").embeddings == []
    assert client.embeddings(model=MODEL, prompt="").embedding == []


def test_embed_runner_is_its_own_process(server, client):
    client.embed(model=MODEL, input="x")
    client.generate(model=MODEL, prompt="hi", options={"num_predict": 2})
    args = [line for line in server.log().splitlines() if f"[{MODEL} (embedding)] starting:" in line]
    assert args and "--embeddings" in args[-1] and "--pooling mean" in args[-1]
    assert sum(1 for m in client.ps().models if m.model == MODEL) == 1  # two runners, one model


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "nosuch", "input": "x"}, 404, 'model "nosuch" not found, try pulling it first'),
        ({"model": MODEL, "input": [1, 2]}, 400, "input"),
        ({"input": "x"}, 404, "model '' not found"),
    ],
)
def test_embed_errors(server, body, status, fragment):
    r = httpx.post(f"{server.url}/api/embed", json=body, timeout=60)
    assert r.status_code == status and fragment in r.json()["error"]


# Show ----------------------------------------------------------------------------------------


def test_show(client, server):
    r = client.show(MODEL)
    assert r.capabilities == ["completion"]  # SmolLM2's template has no tools, no thinking
    assert r.modelinfo["general.architecture"] == "llama"
    assert r.modelinfo["llama.context_length"] == 8192 and r.modelinfo["llama.embedding_length"] == 576
    assert r.modelinfo["general.parameter_count"] == 134515008
    assert r.modelinfo["tokenizer.ggml.tokens"] == []  # the vocabulary only with verbose
    assert "general.name" not in r.modelinfo
    assert "<|im_start|>" in r.template and r.details.family == "llama"
    assert r.modelfile.startswith('# Modelfile generated by "ollama show"') and "\nFROM /" in r.modelfile
    assert isinstance(r.modified_at, datetime)
    verbose = httpx.post(f"{server.url}/api/show", json={"name": MODEL, "verbose": True}).json()
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) == 49152
    # Every listed model can be shown (Zed drops all models when one fails).
    for m in client.list().models:
        assert client.show(m.model).modelinfo


def test_show_parameters_system_license(own):
    own.client.create(model="dressed", from_="tiny", system="Be brief.", license=["MIT", "BSD"],
                      parameters={"stop": ["<|im_end|>", "END"], "temperature": 0.3, "num_ctx": 100000})
    r = own.client.show("dressed")
    lines = r.parameters.splitlines()
    assert 'stop                           "<|im_end|>"' in lines and 'stop                           "END"' in lines
    assert "num_ctx                        512" in lines  # what the server will use: the training context
    assert r.license == "MIT\nBSD"
    assert _show(own, "dressed")["system"] == "Be brief."
    assert 'SYSTEM """Be brief."""' in r.modelfile and "PARAMETER temperature 0.3" in r.modelfile


def test_show_errors(server):
    r = httpx.post(f"{server.url}/api/show", json={"model": "nosuch"})
    assert r.status_code == 404 and r.json()["error"] == "model 'nosuch:latest' not found"
    r = httpx.post(f"{server.url}/api/show", json={})
    assert r.status_code == 400 and r.json()["error"] == "model is required"


# ps and keep_alive ----------------------------------------------------------------------------


def _loaded(srv: Server) -> dict:
    return {m.model: m for m in srv.client.ps().models}


def test_ps_shows_a_model_until_keep_alive_expires(own):
    # 4 s: long enough for `llamagate ps` to start and ask on a loaded 2-core machine.
    own.client.generate(model="tiny", prompt="hi", keep_alive="4s", options={"num_predict": 2})
    m = _loaded(own)["tiny:latest"]
    assert m.size > 0 and m.size_vram == 0 and len(m.digest) == 64 and m.details.family == "llama"
    assert m.context_length == 512  # the tiny model's training context caps the default
    left = m.expires_at.timestamp() - time.time()
    assert 0 < left <= 4.5
    assert "tiny:latest" in own.cli("ps").stdout
    assert wait_until(lambda: "tiny:latest" not in _loaded(own) and own.runner_pids() == [], timeout=10)
    # The next load starts from the default keep_alive (5m), not the last request's 4s.
    own.client.generate(model="tiny", prompt="hi", options={"num_predict": 2})
    assert _loaded(own)["tiny:latest"].expires_at.timestamp() - time.time() > 200


def test_keep_alive_zero_unloads_at_once(own):
    own.client.generate(model="tiny", prompt="hi", options={"num_predict": 2})
    assert "tiny:latest" in _loaded(own)
    r = own.client.generate(model="tiny", prompt="", keep_alive=0)
    assert r.done_reason == "unload"
    assert wait_until(lambda: "tiny:latest" not in _loaded(own) and own.runner_pids() == [], timeout=5)


def test_keep_alive_negative_keeps_and_sticks(own):
    own.client.chat(model="tiny", messages=[], keep_alive=-1)
    first = _loaded(own)["tiny:latest"]
    assert first.expires_at.year > 2300
    assert "Forever" in own.cli("ps").stdout
    # A later request without keep_alive keeps the runner's setting (Ollama's stickiness).
    own.client.generate(model="tiny", prompt="hi", options={"num_predict": 2})
    time.sleep(0.5)
    assert _loaded(own)["tiny:latest"].expires_at.year > 2300
    r = own.cli("stop", "tiny")
    assert r.returncode == 0
    assert wait_until(lambda: "tiny:latest" not in _loaded(own), timeout=5)
    r = own.cli("stop", "tiny", check=False)
    assert r.returncode == 1 and "couldn't find model" in r.stderr


def test_unload_waits_for_the_request_in_flight(own):
    """An unload (keep_alive 0) answers at once but stops the runner only after the requests in
    flight: the generation runs to its end, then the process goes."""
    body = {"model": "smol", "prompt": "Write a long story about a dragon.",
            "options": {"num_predict": 60, "temperature": 0}}
    with httpx.stream("POST", f"{own.url}/api/generate", json=body, timeout=120) as r:
        lines = r.iter_lines()
        json.loads(next(lines))
        unload = httpx.post(f"{own.url}/api/generate", json={"model": "smol", "keep_alive": 0}, timeout=10)
        assert unload.json()["done_reason"] == "unload"
        assert "smol:latest" in _loaded(own)  # still serving the stream
        final = json.loads(list(lines)[-1])
    assert final["done"] and final["eval_count"] == 60
    assert wait_until(lambda: "smol:latest" not in _loaded(own), timeout=10)


def test_keep_alive_strings_and_numbers(own):
    for value in ("1800s", "-1s", 1800, "1h30m"):
        r = httpx.post(f"{own.url}/api/generate", json={"model": "tiny", "keep_alive": value})
        assert r.status_code == 200 and r.json()["done_reason"] == "load"
    r = httpx.post(f"{own.url}/api/generate", json={"model": "tiny", "keep_alive": True})
    assert r.status_code == 400
    own.client.generate(model="tiny", keep_alive=0)


# Copy, delete, create, blobs ------------------------------------------------------------------


def test_copy_then_chat_through_the_alias(server, client):
    blobs = _blobs(server)
    client.copy(MODEL, "alias/smol:v1")
    models = {m.model: m for m in client.list().models}
    assert models["alias/smol:v1"].digest == models[MODEL].digest
    assert _blobs(server) == blobs  # no second copy on disk
    r = client.chat(model="alias/smol:v1", messages=[{"role": "user", "content": "hi"}], options=GREEDY)
    assert r.message.content and r.model == "alias/smol:v1"
    with pytest.raises(ollama.ResponseError) as e:
        client.copy("nosuch", "x")
    assert e.value.status_code == 404
    pids = server.runner_pids()
    client.delete("alias/smol:v1")
    assert _blobs(server) == blobs  # shared with smollm2: nothing pruned
    assert server.runner_pids() == pids  # nor is smollm2's runner stopped


def test_delete_prunes_unshared_blobs_and_stops_the_runner(own, tiny_gguf):
    digest = "sha256-" + hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    # A second model file of its own: the tiny GGUF with another context length.
    other = write_tiny_model(own.models.parent / "other.gguf", context_length=256)
    own.create("doomed", other)
    other_blob = "sha256-" + hashlib.sha256(other.read_bytes()).hexdigest()
    own.client.copy("doomed", "doomed-alias")
    own.client.generate(model="doomed", prompt="hi", options={"num_predict": 2}, keep_alive=-1)
    pids = own.runner_pids()
    assert len(pids) == 1
    assert own.client.delete("doomed").status == "success"
    assert other_blob in _blobs(own) and own.runner_pids() == pids  # the alias still uses both
    assert own.cli("rm", "doomed-alias").stdout.strip() == "deleted 'doomed-alias'"
    assert own.runner_pids() == []  # stopped before its file went
    assert other_blob not in _blobs(own) and digest in _blobs(own)
    assert not (own.models / "manifests" / "registry.ollama.ai" / "library" / "doomed").exists()
    r = httpx.request("DELETE", f"{own.url}/api/delete", json={"model": "doomed"})
    assert r.status_code == 404 and r.json()["error"] == "model 'doomed' not found"
    r = httpx.request("DELETE", f"{own.url}/api/delete", json={"name": "bad name!"})
    assert r.status_code == 400


def test_create_from_an_uploaded_blob(own, tiny_gguf):
    digest = own.client.create_blob(tiny_gguf)
    statuses = [s.status for s in own.client.create(
        model="fromblob", files={"tiny.gguf": digest}, system="You are terse.",
        parameters={"temperature": 0.1, "stop": ["END"]}, messages=[{"role": "user", "content": "hello"}],
        stream=True)]
    assert statuses[0] == "parsing GGUF" and f"using existing layer {digest}" in statuses
    assert any(s.startswith("creating new layer sha256:") for s in statuses)
    assert statuses[-2:] == ["writing manifest", "success"]
    assert _show(own, "fromblob")["system"] == "You are terse." and '"END"' in own.client.show("fromblob").parameters
    assert own.client.generate(model="fromblob", prompt="hi", options={"num_predict": 3}).eval_count == 3
    # Non-streamed: one object, {"status": "success"}.
    r = httpx.post(f"{own.url}/api/create", json={"model": "fromblob2", "from": "fromblob", "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}
    assert _show(own, "fromblob2")["system"] == "You are terse."


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "x", "from": "tiny", "quantize": "q4_K_X"}, "unsupported quantization type q4_K_X"),
        ({"model": "x"}, "neither 'from' or 'files' was specified"),
        ({"model": "x", "files": {"../evil.gguf": "sha256:" + "0" * 64}}, "file path must be relative"),
        ({"model": "x", "files": {"m.gguf": "sha256:" + "0" * 64}}, "not found"),
        ({"model": "x", "files": {"m.gguf": "sha256:../../etc/passwd"}}, "invalid digest"),
        ({"model": "bad name!", "from": "tiny"}, "invalid model name"),
    ],
)
def test_create_errors(own, body, fragment):
    r = httpx.post(f"{own.url}/api/create", json=body)
    assert r.status_code == 400 and fragment in r.json()["error"], r.text


def test_create_refuses_an_adapter_that_is_not_one(own, tiny_gguf):
    digest = own.client.create_blob(tiny_gguf)
    r = httpx.post(f"{own.url}/api/create", json={"model": "x", "from": "tiny", "adapters": {"a.gguf": digest}})
    assert r.status_code == 400 and "not a LoRA adapter" in r.json()["error"]


def test_blobs(own):
    data = b"some bytes for a blob"
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    before = _blobs(own)
    r = httpx.post(f"{own.url}/api/blobs/{wrong}", content=data)
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"]
    assert _blobs(own) == before  # nothing left behind, not even a temporary file
    assert httpx.head(f"{own.url}/api/blobs/{good}").status_code == 404
    assert httpx.post(f"{own.url}/api/blobs/{good}", content=data).status_code == 201
    assert httpx.post(f"{own.url}/api/blobs/{good}", content=data).status_code == 200
    assert httpx.head(f"{own.url}/api/blobs/{good}").status_code == 200
    assert httpx.head(f"{own.url}/api/blobs/sha256:1234").status_code == 400
    assert httpx.post(f"{own.url}/api/blobs/sha256-..%2f..%2fx", content=data).status_code in (400, 404)


# Tools and think -----------------------------------------------------------------------------


def test_tools_round_trip(own):
    assert "tools" in own.client.show("tools").capabilities
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    options = {"temperature": 0, "num_predict": 300}
    first = own.client.chat(model="tools", messages=messages, tools=[WEATHER_TOOL], options=options)
    calls = first.message.tool_calls
    assert calls and all(c.function.name == "get_weather" for c in calls)
    assert all(c.function.arguments["city"] in ("Paris", "Tokyo") for c in calls)
    # Streamed: each call on its own line with empty content, then the done line.
    lines = list(own.client.chat(model="tools", messages=messages, tools=[WEATHER_TOOL], options=options, stream=True))
    call_lines = [c for c in lines if c.message.tool_calls]
    assert all(len(c.message.tool_calls) == 1 and c.message.content == "" for c in call_lines)
    assert len(call_lines) == len(calls) and lines[-1].done and not lines[-1].message.tool_calls
    raw = httpx.post(f"{own.url}/api/chat", json={"model": "tools", "messages": messages, "tools": [WEATHER_TOOL],
                                                  "options": options, "stream": False}).json()
    call = raw["message"]["tool_calls"][0]
    assert call["id"] and call["function"]["index"] == 0 and isinstance(call["function"]["arguments"], dict)
    # The result goes back as a tool message, and the model answers from the longer prompt.
    messages += [first.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_name": "get_weather", "content": '{"temperature": "22 C"}'}]
    second = own.client.chat(model="tools", messages=messages, tools=[WEATHER_TOOL], options=options)
    assert second.done and second.prompt_eval_count > first.prompt_eval_count


def test_think_false_and_true_on_a_model_that_cannot_think(client):
    r = client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], think=False, options=GREEDY)
    assert r.message.content and not r.message.thinking
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], think=True)
    assert e.value.status_code == 400 and e.value.error == f'"{MODEL}" does not support thinking'


def test_logprobs(client):
    r = client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=3,
                    options={"temperature": 0, "num_predict": 4})
    assert len(r.logprobs) == 4 and "".join(lp.token for lp in r.logprobs) == r.message.content
    assert all(lp.logprob <= 0 and len(lp.top_logprobs) == 3 for lp in r.logprobs)
    # Greedy: the chosen token is the most likely one.
    assert all(lp.top_logprobs[0].token == lp.token for lp in r.logprobs)
    g = client.generate(model=MODEL, prompt="hi", raw=True, logprobs=True, options={"temperature": 0, "num_predict": 3})
    assert len(g.logprobs) == 3


# Generate: system, raw, template, context ----------------------------------------------------


def test_generate_template_override_matches_raw(client):
    template = "<|im_start|>system\n{{ .System }}<|im_end|>\n<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"
    via_template = client.generate(model=MODEL, prompt="What is 2+2?", system="Answer briefly.",
                                   template=template, options=GREEDY)
    raw_prompt = "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    raw = client.generate(model=MODEL, prompt=raw_prompt, raw=True, options=GREEDY)
    assert via_template.response == raw.response and raw.response
    assert raw.context is None and via_template.context
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=MODEL, prompt="x", template="{{ range .Messages }}{{ .Content }}{{ end }}")
    assert e.value.status_code == 400 and "unsupported template" in e.value.error


def test_generate_context_is_sent_back(client):
    first = client.generate(model=MODEL, prompt="My name is Ada.", options=GREEDY)
    assert first.context and all(isinstance(t, int) for t in first.context)
    second = client.generate(model=MODEL, prompt="What is my name?", context=first.context, options=GREEDY)
    alone = client.generate(model=MODEL, prompt="What is my name?", options=GREEDY)
    assert second.prompt_eval_count == alone.prompt_eval_count + len(first.context)
    assert second.context[: len(first.context)] == first.context


def test_generate_system(client):
    plain = client.generate(model=MODEL, prompt="Who are you?", options=GREEDY)
    pirate = client.generate(model=MODEL, prompt="Who are you?", system="You are a pirate named Jack.", options=GREEDY)
    assert plain.response != pirate.response


def test_generate_suffix_needs_an_insert_model(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=MODEL, prompt="def f(", suffix="return x")
    assert e.value.status_code == 400 and e.value.error == f'"{MODEL}" does not support insert'


# CLI -----------------------------------------------------------------------------------------


def test_cli_show(server):
    out = server.cli("show", MODEL).stdout
    assert out.splitlines()[0] == "  Model"
    for row in (r"architecture\s+llama", r"parameters\s+134.52M", r"context length\s+8192",
                r"embedding length\s+576", r"quantization\s+Q4_1"):
        assert __import__("re").search(row, out), row
    assert "  Capabilities\n    completion" in out
    assert server.cli("show", MODEL, "--template").stdout.startswith("{% for message in messages %}")
    r = server.cli("show", "nosuch", check=False)
    assert r.returncode == 1 and "not found" in r.stderr


def test_cli_cp_and_rm(server):
    assert server.cli("cp", "tiny", "tiny-copy").stdout.strip() == "copied 'tiny' to 'tiny-copy'"
    assert "tiny-copy:latest" in server.cli("list").stdout
    assert server.cli("rm", "tiny-copy").stdout.strip() == "deleted 'tiny-copy'"
    assert "tiny-copy" not in server.cli("list").stdout
    r = server.cli("rm", "tiny-copy", check=False)
    assert r.returncode == 1 and "not found" in r.stderr


def test_cli_ps_layout(own):
    own.client.generate(model="tiny", prompt="", keep_alive="10m")
    header, row = own.cli("ps").stdout.splitlines()[:2]
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert row.startswith("tiny:latest") and "100% CPU" in row and "512" in row and "minutes from now" in row
    own.client.generate(model="tiny", keep_alive=0)


# Conformance details (ollama-clients.md §12) not covered above --------------------------------


def test_content_types_and_default_streaming(own):
    """§12 items 4 and 15: one JSON object where Ollama never streams, NDJSON by default where it does."""
    for method, path, body in (("GET", "/api/tags", None), ("GET", "/api/ps", None),
                               ("POST", "/api/show", {"model": "tiny"}),
                               ("POST", "/api/embed", {"model": "tiny", "input": "x"})):
        r = httpx.request(method, f"{own.url}{path}", json=body, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), path
        json.loads(r.content)
    for path, body in (("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}),
                       ("/api/generate", {"model": "tiny", "prompt": "x"}),
                       ("/api/create", {"model": "tiny-again", "from": "tiny"})):
        body["options"] = {"num_predict": 3}
        r = httpx.post(f"{own.url}{path}", json=body, timeout=60)
        assert r.headers["content-type"] == "application/x-ndjson", path
        lines = r.text.split("\n")
        assert lines[-1] == "" and all(lines[:-1]) and len(lines) > 2
    own.client.generate(model="tiny", keep_alive=0)


def test_stream_lines_carry_what_clients_require(own):
    """§12 items 9 and 10: every line of a stream has the fields strict clients (Zed) parse."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 5}}
    for line in httpx.post(f"{own.url}/api/chat", json=body, timeout=60).text.splitlines():
        obj = json.loads(line)
        assert isinstance(obj["model"], str) and datetime.fromisoformat(obj["created_at"])
        assert obj["message"]["role"] == "assistant" and isinstance(obj["message"]["content"], str)
        assert isinstance(obj["done"], bool)
    body = {"model": "tiny", "prompt": "x", "options": {"num_predict": 5}}
    for line in httpx.post(f"{own.url}/api/generate", json=body, timeout=60).text.splitlines():
        obj = json.loads(line)
        assert isinstance(obj["response"], str) and isinstance(obj["done"], bool) and obj["model"] == "tiny"


def test_what_clients_send_is_accepted(own):
    """§12 items 6, 7, 16, 21, 23, 33: headers, unknown keys, nulls and the message shapes
    real clients send never cause a 4xx."""
    # "Bearer " with its empty key as Copilot sends it (h11 trims the trailing space).
    headers = {"Authorization": "Bearer", "Accept": "application/json"}
    assert httpx.get(f"{own.url}/api/tags", headers=headers).status_code == 200
    body = {
        "model": "tiny", "stream": False, "tools": [], "think": None, "format": "", "keep_alive": "5m",
        "unknown_top_level": {"x": 1},
        "options": {"num_predict": 3, "temperature": None, "top_p": None, "min_p": 0.1, "num_ctx": 10**9,
                    "use_mmap": True, "tfs_z": 1.0, "custom_param": "x"},
        "messages": [
            {"role": "system", "content": "s", "extra": 1},
            {"role": "user"},
            {"role": "assistant", "content": "", "thinking": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}]},
            {"role": "tool", "content": "1", "tool_name": "f", "tool_call_id": "c1"},
            {"role": "user", "content": "x"},
        ],
    }
    r = httpx.post(f"{own.url}/api/chat", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    # A huge num_ctx is capped at the model's training context, a tiny one raised to 4.
    assert _loaded(own)["tiny:latest"].context_length == 512
    body["options"]["num_ctx"] = 1
    assert httpx.post(f"{own.url}/api/chat", json=body, timeout=60).status_code == 200
    assert _loaded(own)["tiny:latest"].context_length == 4
    embed = {"model": "tiny", "input": ["a", "b"], "truncate": True, "keep_alive": 0, "dimensions": 8,
             "options": {"mirostat": None, "num_ctx": None, "top_p": None}, "unknown": True}
    r = httpx.post(f"{own.url}/api/embed", json=embed, timeout=60)
    assert r.status_code == 200 and [len(v) for v in r.json()["embeddings"]] == [8, 8]
    own.client.generate(model="tiny", keep_alive=0)


def test_open_webui_unload_request(own):
    """§12 item 24: Open WebUI's unload sends no `stream` key and needs one object back."""
    own.client.generate(model="tiny", prompt="", keep_alive="5m")
    r = httpx.post(f"{own.url}/api/generate", json={"model": "tiny", "keep_alive": 0, "prompt": ""})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json()["done"] is True and r.json()["done_reason"] == "unload"
    assert wait_until(lambda: "tiny:latest" not in _loaded(own), timeout=5)


def test_delete_accepts_name(own):
    """§12 item 35: ollama-js and Continue send `name`."""
    own.client.copy("tiny", "by-name")
    r = httpx.request("DELETE", f"{own.url}/api/delete", json={"name": "by-name"})
    assert r.status_code == 200 and "by-name:latest" not in {m.model for m in own.client.list().models}
