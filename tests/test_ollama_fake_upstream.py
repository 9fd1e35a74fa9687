"""What no small model here can show (thinking, vision, fill-in-the-middle) and the exact shape
of what reaches llama-server: a real `llamagate serve` in front of tests/fake_llama_server.py,
driven by the official `ollama` client. Capabilities come from the GGUFs, as with real models."""

from __future__ import annotations

import base64
from pathlib import Path

import gguf
import httpx
import ollama
import pytest
from conftest import fake_upstream_server

from supervisor.models.gguf import read_gguf

THINKING_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
                     "{% if enable_thinking %}<think>{% endif %}{% if tools %}{{ tools | tojson }}{% endif %}")
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()


def _metadata_gguf(path: Path, arch: str, **kv) -> Path:
    """A GGUF with metadata only: the fake runner never loads weights."""
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(2048)
    for key, value in kv.items():
        w.add_key_value(key, value, gguf.GGUFValueType.STRING if isinstance(value, str) else gguf.GGUFValueType.UINT32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fake")
    # OLLAMA_NO_CLOUD: /api/status's source (the shared server's, without it, is test_newer_fields').
    srv = fake_upstream_server(tmp, env={"OLLAMA_NO_CLOUD": "1"})
    client = ollama.Client(host=srv.url)
    try:
        srv.create("thinker", _metadata_gguf(tmp / "thinker.gguf", "qwen3", **{"tokenizer.chat_template": THINKING_TEMPLATE}))
        srv.create("fim", _metadata_gguf(tmp / "fim.gguf", "llama", **{"tokenizer.ggml.fim_pre_token_id": 1,
                                                                        "tokenizer.ggml.fim_suf_token_id": 2,
                                                                        "tokenizer.ggml.fim_mid_token_id": 3}))
        files = {}
        for name, arch in (("vision.gguf", "llama"), ("mmproj.gguf", "clip")):
            files[name] = client.create_blob(_metadata_gguf(tmp / name, arch))
        client.create(model="vision", files=files)
        srv.client = client
        yield srv
    finally:
        srv.stop()


def _last(fake, path: str) -> dict:
    return [r for r in fake.requests() if r.get("path") == path][-1]["body"]


def test_show_capabilities_from_the_gguf(fake):
    caps = {m: fake.client.show(m).capabilities for m in ("thinker", "fim", "vision")}
    assert caps["thinker"] == ["completion", "tools", "thinking"]
    assert caps["fim"] == ["completion", "insert"]
    assert caps["vision"] == ["completion", "vision"]
    shown = httpx.post(f"{fake.url}/api/show", json={"model": "vision"}).json()
    assert shown["projector_info"]["general.architecture"] == "clip"
    # What LiteLLM and Continue look for in a template to turn tools and FIM on.
    assert ".Tools" in fake.client.show("thinker").template and ".Suffix" not in fake.client.show("thinker").template
    assert ".Suffix" in fake.client.show("fim").template


def test_thinking_streams_separately_from_content(fake):
    chunks = list(fake.client.chat(model="thinker", messages=[{"role": "user", "content": "hi"}], think=True, stream=True))
    thinking = "".join(c.message.thinking or "" for c in chunks)
    content = "".join(c.message.content for c in chunks)
    assert thinking == "Let me think." and content == "Hi there"
    assert all(not (c.message.thinking and c.message.content) for c in chunks)
    assert _last(fake, "/v1/chat/completions")["chat_template_kwargs"] == {"enable_thinking": True}
    r = fake.client.chat(model="thinker", messages=[{"role": "user", "content": "hi"}], think="high")
    assert r.message.thinking == "Let me think." and r.message.content == "Hi there"
    assert _last(fake, "/v1/chat/completions")["chat_template_kwargs"] == {"enable_thinking": True, "reasoning_effort": "high"}


def test_think_false_turns_thinking_off(fake):
    r = fake.client.chat(model="thinker", messages=[{"role": "user", "content": "hi"}], think=False)
    assert not r.message.thinking and r.message.content == "Hi there"
    assert _last(fake, "/v1/chat/completions")["chat_template_kwargs"] == {"enable_thinking": False}
    r = fake.client.generate(model="thinker", prompt="hi", think=False)
    assert not r.thinking and r.response == "Hi there"


def test_images_reach_llama_server_as_the_projector_expects(fake):
    r = fake.client.chat(model="vision", messages=[{"role": "user", "content": "What is this?", "images": [PNG]}])
    assert r.message.content == "Hi there"
    (message,) = _last(fake, "/v1/chat/completions")["messages"]
    assert message["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    argv = next(r["argv"] for r in reversed(fake.requests()) if "argv" in r)
    assert read_gguf(Path(argv[argv.index("--mmproj") + 1])).architecture == "clip"
    fake.client.generate(model="vision", prompt="Describe", images=[PNG])
    content = _last(fake, "/v1/chat/completions")["messages"][-1]["content"]
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_images_need_a_vision_model(fake):
    with pytest.raises(ollama.ResponseError) as e:
        fake.client.chat(model="thinker", messages=[{"role": "user", "content": "x", "images": [PNG]}])
    assert e.value.status_code == 400 and "does not support images" in e.value.error
    r = httpx.post(f"{fake.url}/api/chat", json={"model": "vision", "stream": False, "messages": [
        {"role": "user", "content": "x", "images": ["data:image/png;base64," + PNG]}]})
    assert r.status_code == 400 and "data:" in r.json()["error"]
    r = httpx.post(f"{fake.url}/api/chat", json={"model": "vision", "stream": False, "messages": [
        {"role": "user", "content": "x", "images": ["not base64!"]}]})
    assert r.status_code == 400 and "base64" in r.json()["error"]


def test_suffix_goes_to_infill(fake):
    r = fake.client.generate(model="fim", prompt="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))")
    assert r.response == "MIDDLE" and r.done_reason == "stop" and r.eval_count == 3
    body = _last(fake, "/infill")
    assert body["input_prefix"] == "def add(a, b):\n    return " and body["input_suffix"] == "\n\nprint(add(1, 2))"
    with pytest.raises(ollama.ResponseError) as e:
        fake.client.generate(model="thinker", prompt="a", suffix="b")
    assert e.value.status_code == 400 and e.value.error == '"thinker" does not support insert'


def test_tool_messages_are_translated_for_llama_server(fake):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "22 C", "tool_name": "get_weather", "tool_call_id": "call_1"},
    ]
    # Raw HTTP: the ollama client drops tool_call_id before sending.
    r = httpx.post(f"{fake.url}/api/chat", json={"model": "thinker", "messages": messages, "tools": tools,
                                                 "think": False, "stream": False})
    assert r.status_code == 200, r.text
    sent = _last(fake, "/v1/chat/completions")
    assert sent["tools"] == tools
    assert sent["messages"][1]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    assert sent["messages"][2] == {"role": "tool", "content": "22 C", "tool_call_id": "call_1", "name": "get_weather"}


def test_logprobs(fake):
    r = fake.client.chat(model="thinker", messages=[{"role": "user", "content": "hi"}], think=False,
                         logprobs=True, top_logprobs=2)
    assert [(lp.token, lp.logprob) for lp in r.logprobs] == [("Hi", -0.1)]
    assert [t.token for t in r.logprobs[0].top_logprobs] == ["Hi", "Yo"]
    sent = _last(fake, "/v1/chat/completions")
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    r = httpx.post(f"{fake.url}/api/chat", json={"model": "thinker", "messages": [{"role": "user", "content": "x"}],
                                                 "logprobs": True, "top_logprobs": 21})
    assert r.status_code == 400 and r.json()["error"] == "top_logprobs must be between 0 and 20"


def test_draft_num_predict_reaches_llama_server_as_speculative_n_max(fake):
    fake.client.chat(model="thinker", messages=[{"role": "user", "content": "hi"}],
                     options={"draft_num_predict": 5})
    assert _last(fake, "/v1/chat/completions")["speculative.n_max"] == 5
    fake.client.chat(model="thinker", messages=[{"role": "user", "content": "hi"}])
    assert "speculative.n_max" not in _last(fake, "/v1/chat/completions")


def test_status_source_with_ollama_no_cloud(fake):
    """llamagate's cloud is always off, as a config file turns Ollama's off; the variable too is "both"."""
    assert httpx.get(f"{fake.url}/api/status").json() == {"cloud": {"disabled": True, "source": "both"}}


def test_a_created_draft_model_is_llama_servers_model_draft(fake, tmp_path):
    """draft_files becomes the model's draft layer, started as --model-draft and kept by a model
    made FROM it; draft_quantize is refused."""
    files = {"main.gguf": fake.client.create_blob(_metadata_gguf(tmp_path / "main.gguf", "llama"))}
    draft = {"small.gguf": fake.client.create_blob(_metadata_gguf(tmp_path / "small.gguf", "llama", **{"x": "d"}))}
    body = {"model": "drafted", "files": files, "draft_files": draft, "stream": False}
    r = httpx.post(f"{fake.url}/api/create", json={**body, "draft_quantize": "q8_0"})
    assert r.status_code == 400 and "draft_quantize is not supported" in r.json()["error"]
    # The ollama client has no draft_files (its `create` predates them).
    assert httpx.post(f"{fake.url}/api/create", json=body).json() == {"status": "success"}
    fake.client.create(model="drafted-too", from_="drafted", system="Be brief.")
    blob = fake.models / "blobs" / draft["small.gguf"].replace(":", "-")
    assert f"\nDRAFT {blob}\n" in fake.client.show("drafted-too").modelfile
    fake.client.chat(model="drafted-too", messages=[{"role": "user", "content": "hi"}])
    argv = next(r["argv"] for r in reversed(fake.requests()) if "argv" in r)
    assert argv[argv.index("--model-draft") + 1] == str(blob)
