"""Fitting num_ctx as Ollama does (`truncate`, `shift`) on /api/chat and /api/generate, with a
real llama-server and SmolLM2, and the exact cut shown by what reached a fake one; the options a
load-only request carries, integer options sent as floats, the inference routes' body limit and
generate's `context`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import ollama
import pytest
from conftest import Server, fake_upstream_server
from tinymodel import write_tiny_model

from proxy import truncation
from proxy.llama import wire
from proxy.ollama import translate
from proxy.semantics import Options
from proxy.truncation import chat_cutter
from supervisor.runners.launch import LaunchSpec

MODEL = "smol"
GREEDY = {"temperature": 0, "num_predict": 8}
# About 100 tokens a message: 120 of them are some 12 000 tokens, twelve times num_ctx 1024.
FILLER = " ".join(f"word{i}" for i in range(40))


def _long_chat(n: int = 120) -> list[dict]:
    messages = [{"role": "system", "content": "You are a terse assistant."}]
    for i in range(n - 2):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"Turn {i}: {FILLER}"})
    messages.append({"role": "user", "content": "Say hello."})
    return messages


@pytest.fixture(scope="module")
def smol(tmp_path_factory, smollm2, tiny_gguf, llama_server_binary):
    srv = Server(tmp_path_factory.mktemp("context"))
    try:
        srv.create(MODEL, smollm2)
        srv.create("tiny", tiny_gguf)
        srv.client = ollama.Client(host=srv.url)
        yield srv
    finally:
        srv.stop()


def _runner_args(srv: Server) -> list[str]:
    (pid,) = srv.runner_pids()
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


# Chat -----------------------------------------------------------------------------------------


def test_long_chat_is_cut_to_fit_num_ctx(smol):
    r = smol.client.chat(model=MODEL, messages=_long_chat(), options={**GREEDY, "num_ctx": 1024})
    assert r.message.content and r.done_reason in ("stop", "length")
    # What was kept fills the context as far as whole messages go.
    assert 512 < r.prompt_eval_count < 1024


def test_truncate_false_keeps_the_refusal(smol):
    r = httpx.post(f"{smol.url}/api/chat", timeout=60, json={
        "model": MODEL, "messages": _long_chat(), "options": {**GREEDY, "num_ctx": 1024},
        "truncate": False, "stream": False})
    assert r.status_code == 400
    assert "exceeds the available context size" in r.json()["error"]


def test_a_last_message_too_long_alone_is_refused(smol):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": FILLER * 30}]
    with pytest.raises(ollama.ResponseError) as e:
        smol.client.chat(model=MODEL, messages=messages, options={**GREEDY, "num_ctx": 1024})
    assert e.value.status_code == 400 and "exceeds the available context size" in e.value.error


# Generate -------------------------------------------------------------------------------------


def test_long_prompt_keeps_its_start_and_end(smol):
    """Ollama keeps num_keep tokens and the end, leaving half of the rest free for the answer."""
    prompt = " ".join(f"item{i}" for i in range(800))
    r = smol.client.generate(model=MODEL, prompt=prompt, options={**GREEDY, "num_ctx": 1024})
    assert r.done
    # 1024 - (1024 - 4) // 2 = 514 tokens kept.
    assert r.prompt_eval_count == 514
    raw = smol.client.generate(model=MODEL, prompt=prompt, raw=True, options={**GREEDY, "num_ctx": 1024, "num_keep": 10})
    assert raw.prompt_eval_count == 1024 - (1024 - 10) // 2


def test_long_prompt_without_truncate_or_shift_is_refused(smol):
    body = {"model": MODEL, "prompt": " ".join(f"item{i}" for i in range(800)), "stream": False,
            "options": {**GREEDY, "num_ctx": 1024}}
    r = httpx.post(f"{smol.url}/api/generate", json={**body, "truncate": False}, timeout=60)
    assert r.status_code == 400 and "exceeds the available context size" in r.json()["error"]
    r = httpx.post(f"{smol.url}/api/generate", json={**body, "shift": False}, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"].startswith("the prompt is longer than the context length currently available")


# Shift ----------------------------------------------------------------------------------------


def test_shift_lets_generation_run_past_the_context(smol):
    # 256 is the smallest context llama-server gives a slot (it rounds up to 256).
    counting = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "raw": True, "stream": False,
                "options": {"temperature": 0, "num_predict": 300, "num_ctx": 256}}
    shifted = httpx.post(f"{smol.url}/api/generate", json=counting, timeout=120).json()
    assert "--context-shift" in _runner_args(smol)
    assert shifted["eval_count"] == 300 and shifted["done_reason"] == "length"
    # shift: false restarts the runner without it, and the answer stops at the context's end.
    stopped = httpx.post(f"{smol.url}/api/generate", json={**counting, "shift": False}, timeout=120).json()
    assert "--context-shift" not in _runner_args(smol)
    assert stopped["done_reason"] == "length"
    assert stopped["prompt_eval_count"] + stopped["eval_count"] <= 256


def test_launch_spec_context_shift_flag():
    spec = LaunchSpec(binary=Path("/bin/llama-server"), model_path=Path("/m.gguf"), num_ctx=512, threads=1, parallel=1)
    assert "--context-shift" not in spec.args()
    shifting = LaunchSpec(binary=Path("/bin/llama-server"), model_path=Path("/m.gguf"), num_ctx=512, threads=1,
                          parallel=1, context_shift=True)
    assert "--context-shift" in shifting.args() and shifting != spec


# The exact cut, from what reached a fake llama-server -------------------------------------------


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fake-context")
    srv = fake_upstream_server(tmp)
    try:
        srv.create("plain", write_tiny_model(tmp / "plain.gguf", context_length=4096))
        yield srv
    finally:
        srv.stop()


def _sent(fake, path: str) -> list[dict]:
    return [r["body"] for r in fake.requests() if r.get("path") == path]


def _render(messages: list[dict]) -> str:
    """The fake's template and tokenizer: `<role>content`, a token per character."""
    return "".join(f"<{m['role']}>{m['content']}" for m in messages)


def test_the_cut_keeps_system_messages_and_the_latest_turns(fake):
    system = {"role": "system", "content": "Always answer in French."}
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i:02d}" + "x" * 98} for i in range(30)]
    late_system = {"role": "system", "content": "Be brief."}
    messages = [system, *turns[:10], late_system, *turns[10:]]
    r = httpx.post(f"{fake.url}/api/chat", timeout=30, json={
        "model": "plain", "messages": messages, "options": {"num_ctx": 1024}, "stream": False})
    assert r.status_code == 200 and r.json()["message"]["content"] == "Hi there"
    refused, kept = _sent(fake, "/v1/chat/completions")[-2:]
    assert len(refused["messages"]) == len(messages)
    sent = [{"role": m["role"], "content": m["content"]} for m in kept["messages"]]
    # Both system messages, then the newest turns: as many as leave a token of 1024 free.
    n = len(sent) - 2
    assert sent == [system, late_system, *turns[30 - n:]]
    assert len(_render(sent)) < 1024 <= len(_render([system, late_system, *turns[30 - n - 1:]]))


def test_the_cut_never_orphans_a_tool_result(fake):
    call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}
    result = {"role": "tool", "content": "r" * 300}
    messages = [{"role": "user", "content": "u" * 700}, call, result, {"role": "user", "content": "again"}]
    r = httpx.post(f"{fake.url}/api/chat", timeout=30, json={
        "model": "plain", "messages": messages, "options": {"num_ctx": 512}, "stream": False})
    assert r.status_code == 200
    kept = _sent(fake, "/v1/chat/completions")[-1]["messages"]
    assert [m["role"] for m in kept] == ["assistant", "tool", "user"]


def test_generate_context_is_the_generated_tokens(fake):
    r = httpx.post(f"{fake.url}/api/generate", timeout=30, json={"model": "plain", "prompt": "Hello", "stream": False})
    assert r.status_code == 200 and r.json()["response"] == "MIDDLE"
    sent = _sent(fake, "/completion")[-1]
    assert sent["return_tokens"] is True
    # The rendered prompt as the fake tokenizes it, then the ids the fake generated.
    assert r.json()["context"] == [ord(c) for c in sent["prompt"]] + [901, 902, 903]
    again = httpx.post(f"{fake.url}/api/generate", timeout=30, json={
        "model": "plain", "prompt": "More", "context": r.json()["context"], "stream": False}).json()
    assert again["context"][: len(r.json()["context"])] == r.json()["context"]


@pytest.mark.parametrize(
    ("roles", "i", "expected"),
    [
        (["user", "assistant", "user"], 1, 1),
        (["user", "assistant*", "tool", "tool", "user"], 2, 1),
        (["user", "assistant*", "tool", "tool", "user"], 3, 1),
        (["user", "assistant*", "tool", "tool", "user"], 4, 4),
        # A tool answer with no call before it has nothing to keep it with.
        (["user", "tool", "user"], 1, 1),
        (["user", "assistant", "tool"], 2, 2),
    ],
)
def test_tool_block_start(roles, i, expected):
    messages = [wire.ChatMessage(r.rstrip("*"), "", tool_calls=[{}] if r.endswith("*") else None) for r in roles]
    assert truncation.tool_block_start(messages, i) == expected


@pytest.mark.parametrize(
    ("n", "num_ctx", "num_keep", "bos", "expected"),
    [
        (10, 20, 4, 0, list(range(10))),  # fits: untouched
        # limit = 20 - (20 - 4) // 2 = 12: 4 kept, then the last 8.
        (30, 20, 4, 0, [0, 1, 2, 3, *range(22, 30)]),
        (30, 20, 4, 1, [0, 1, 2, 3, 4, *range(22, 30)]),  # limit 13: the BOS is kept too
        (30, 20, 0, 0, list(range(20, 30))),
        # num_keep -1 keeps everything it can: num_ctx - 1 tokens, no room left to cut.
        (30, 20, -1, 0, list(range(19))),
    ],
)
def test_shifted_prompt(n, num_ctx, num_keep, bos, expected):
    assert translate.shifted_prompt(list(range(n)), num_ctx, num_keep, bos) == expected


def test_counted_leaves_images_out():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = [wire.ChatMessage("user", [{"type": "text", "text": "look"}, image, image]), wire.ChatMessage("user", "hi")]
    plain, images = truncation.counted(messages)
    assert [m.content for m in plain] == ["look", "hi"] and images == 2


# Load-only requests, options as floats, body size ---------------------------------------------


def test_a_load_only_request_loads_with_its_options(smol):
    r = httpx.post(f"{smol.url}/api/generate", json={"model": MODEL, "options": {"num_ctx": 1536}}, timeout=120)
    assert r.status_code == 200 and r.json()["done_reason"] == "load"
    (loaded,) = [m for m in smol.client.ps().models if m.model.startswith(MODEL)]
    assert loaded.context_length == 1536
    pids = smol.runner_pids()
    smol.client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], options={**GREEDY, "num_ctx": 1536})
    assert smol.runner_pids() == pids  # the real request found it ready: no second start
    r = httpx.post(f"{smol.url}/api/chat", json={"model": MODEL, "messages": [], "options": {"num_ctx": 1024}}, timeout=120)
    assert r.json()["done_reason"] == "load"
    assert [m.context_length for m in smol.client.ps().models if m.model.startswith(MODEL)] == [1024]


def test_integer_options_may_be_floats(smol):
    r = smol.client.generate(model=MODEL, prompt="Count: 1, 2, 3,", raw=True,
                             options={"temperature": 0, "num_predict": 5.0, "num_ctx": 1024.0, "top_k": 40.7})
    assert r.eval_count == 5
    assert Options(num_ctx=8192.9, seed=-1.0).num_ctx == 8192 and Options(seed=-1.0).seed == -1
    r = httpx.post(f"{smol.url}/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                 "options": {"num_ctx": "big"}})
    assert r.status_code == 400


INFERENCE_ROUTES = [
    ("/api/chat", {"messages": [{"role": "user", "content": "hi"}], "stream": False, "options": {"num_predict": 1}}),
    ("/api/generate", {"prompt": "hi", "stream": False, "options": {"num_predict": 1}}),
    ("/api/embed", {"input": "hi"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 1}),
    ("/v1/embeddings", {"input": "hi"}),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 1}),
    ("/v1/messages", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
]


@pytest.mark.parametrize(("path", "body"), INFERENCE_ROUTES, ids=[p for p, _ in INFERENCE_ROUTES])
def test_inference_routes_take_bodies_over_ten_megabytes(smol, path, body):
    """Two phone photos in base64 are more than Litestar's default 10 MB; an unknown field of
    that size stands in for them here."""
    padded = json.dumps({"model": "tiny", **body, "padding": "x" * (12 << 20)})
    r = httpx.post(f"{smol.url}{path}", content=padded, headers={"Content-Type": "application/json"}, timeout=120)
    assert r.status_code == 200, r.text[:300]


def test_the_body_limit_is_a_hundred_mebibytes(smol):
    padded = json.dumps({"model": "tiny", "prompt": "hi", "padding": "x" * (100 << 20)})
    r = httpx.post(f"{smol.url}/api/generate", content=padded, headers={"Content-Type": "application/json"}, timeout=120)
    assert r.status_code == 413


class _CountingLease:
    """The calls a cut makes, answered as the fake llama-server answers them."""

    async def post(self, path, body, result_type):
        if path == "/apply-template":
            return wire.ApplyTemplateResponse(_render([{"role": m.role, "content": m.content} for m in body.messages]))
        return wire.TokenizeResponse(list(range(len(body.content))))


@pytest.mark.parametrize(
    ("messages", "num_ctx", "expected"),
    [
        # Nothing to drop: the refusal stands (no request without its message, no same retry).
        ([("user", "x" * 100)], 10, None),
        ([("system", "s"), ("user", "x" * 100)], 10, None),
        ([("system", "s"), ("user", "a" * 50), ("assistant", "b" * 50), ("user", "c" * 20)], 40,
         [("system", "s"), ("user", "c" * 20)]),
        ([("system", "s"), ("user", "a" * 50), ("assistant", "b" * 10), ("user", "c" * 20)], 60,
         [("system", "s"), ("assistant", "b" * 10), ("user", "c" * 20)]),
    ],
)
def test_the_cut(messages, num_ctx, expected):
    body = wire.ChatRequest(messages=[wire.ChatMessage(r, c) for r, c in messages], stream=True, cache_prompt=True)
    cut = asyncio.run(chat_cutter(_CountingLease(), num_ctx)(body))
    assert (cut and [(m.role, m.content) for m in cut.messages]) == expected
