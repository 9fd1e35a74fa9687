"""What Ollama added after 0.12.11 that llamagate answers now: /api/version's number, /api/status,
/api/show's `thinking` and (verbose) `tensors`, and `_debug_render_only` on chat and generate."""

from __future__ import annotations

from pathlib import Path

import httpx
import ollama
import pytest

from conftest import Server
from proxy.ollama import translate
from tinymodel import CHAT_TEMPLATE, write_tiny_model

# ChatML that thinks unless told not to (Qwen3's way), and one that takes gpt-oss's effort levels.
THINKING_TEMPLATE = CHAT_TEMPLATE.replace(
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}")
EFFORT_TEMPLATE = "{% set effort = reasoning_effort | default('low') %}<think>" + CHAT_TEMPLATE


@pytest.fixture(scope="module")
def thinkers(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Server:
    client = ollama.Client(server.url)
    tmp = tmp_path_factory.mktemp("thinkers")
    for name, template in (("think-bool", THINKING_TEMPLATE), ("think-levels", EFFORT_TEMPLATE)):
        gguf = write_tiny_model(tmp / f"{name}.gguf", chat_template=template)
        client.create(model=name, files={f"{name}.gguf": client.create_blob(gguf)})
    return server


def test_version_and_status(server: Server):
    assert httpx.get(f"{server.url}/api/version").json() == {"version": "0.34.2"}
    r = httpx.get(f"{server.url}/api/status")
    assert r.status_code == 200 and r.json() == {"cloud": {"disabled": True, "source": "config"}}


@pytest.mark.parametrize(
    ("template", "capabilities", "expected"),
    [
        (CHAT_TEMPLATE, ["completion"], None),
        (THINKING_TEMPLATE, ["completion", "thinking"], ([True, False], True)),
        ("{% if enable_thinking is defined and enable_thinking is true %}<think>{% endif %}", ["thinking"],
         ([True, False], False)),
        ("{{ enable_thinking | default(false) }}", ["thinking"], ([True, False], False)),
        (EFFORT_TEMPLATE, ["thinking"], (["low", "medium", "high"], "low")),
        ("Reasoning: {{ reasoning_effort }}", ["thinking"], (["low", "medium", "high"], "medium")),
    ],
)
def test_thinking_from_the_template(template, capabilities, expected):
    got = translate.thinking(template, capabilities)
    assert (got.values, got.default) == expected if expected else got is None


def test_show_thinking(thinkers: Server):
    def show(name: str) -> dict:
        return httpx.post(f"{thinkers.url}/api/show", json={"model": name}).json()

    assert show("think-bool")["thinking"] == {"values": [True, False], "default": True}
    assert show("think-levels")["thinking"] == {"values": ["low", "medium", "high"], "default": "low"}
    assert "thinking" not in show("tiny")


def test_show_verbose_lists_tensors(server: Server, tiny_gguf: Path):
    r = httpx.post(f"{server.url}/api/show", json={"model": "tiny", "verbose": True}).json()
    tensors = {t["name"]: t for t in r["tensors"]}
    assert len(tensors) == 21  # 3 + 9 per layer, 2 layers
    n_vocab = r["model_info"]["llama.vocab_size"]
    assert tensors["token_embd.weight"] == {"name": "token_embd.weight", "type": "F32", "shape": [64, n_vocab]}
    assert tensors["blk.1.ffn_up.weight"]["shape"] == [64, 128]
    assert "tensors" not in httpx.post(f"{server.url}/api/show", json={"model": "tiny"}).json()


def test_debug_render_only_chat(thinkers: Server):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    r = httpx.post(f"{thinkers.url}/api/chat", json={"model": "tiny", "messages": messages, "_debug_render_only": True},
                   timeout=60)
    body = r.json()
    assert r.status_code == 200 and body["done"] is False and "eval_count" not in body
    assert body["message"] == {"role": "", "content": ""}
    assert body["_debug_info"] == {"rendered_template": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")}
    # `think` reaches the template as it would for the real request.
    r = httpx.post(f"{thinkers.url}/api/chat", json={"model": "think-bool", "messages": messages[1:], "think": False,
                                                     "_debug_render_only": True}, timeout=60)
    assert r.json()["_debug_info"]["rendered_template"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_debug_render_only_generate(server: Server):
    def render(**body) -> httpx.Response:
        return httpx.post(f"{server.url}/api/generate", json={"model": "tiny", "_debug_render_only": True, **body},
                          timeout=60)

    r = render(prompt="hi", system="Be brief.")
    assert r.status_code == 200 and r.json()["response"] == "" and r.json()["done"] is False
    assert r.json()["_debug_info"]["rendered_template"] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert render(prompt="verbatim <|im_start|>", raw=True).json()["_debug_info"]["rendered_template"] == (
        "verbatim <|im_start|>")
    # A `context` from an earlier answer is shown as text, before the new turn.
    first = {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    context = httpx.post(f"{server.url}/api/generate", json=first, timeout=60).json()["context"]
    rendered = render(prompt="again", context=context).json()["_debug_info"]["rendered_template"]
    assert rendered.startswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert rendered.endswith("<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n")


def test_debug_render_only_v1(thinkers: Server):
    """Ollama's /v1/chat/completions takes it too: a completion with an empty message and `_debug_info`."""
    r = httpx.post(f"{thinkers.url}/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "_debug_render_only": True}, timeout=60)
    body = r.json()
    assert r.status_code == 200 and body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == 0
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None}]
    assert body["_debug_info"] == {"rendered_template": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"}
