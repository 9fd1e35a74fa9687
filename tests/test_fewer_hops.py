"""What the hot path's shortcuts must not change: /api/embed sends inputs that surely fit as text
(one hop, no /tokenize) and counts them from llama-server's usage; those that may not fit are
tokenized first, cut or refused. The count is what llama-server's tokenizer makes of each input."""

from __future__ import annotations

import httpx
import pytest

from conftest import runners_of

MODEL = "smollm2:135m"


def test_embed_counts_what_llama_server_tokenizes_whichever_way_an_input_goes(server):
    short, long = "The sky is blue.", "word " * 100  # 16 bytes: sent as text; 500: tokenized, then cut to 64
    batch = httpx.post(f"{server.url}/api/embed", timeout=120, json={
        "model": MODEL, "input": [short, long], "options": {"num_ctx": 64}}).json()
    alone = httpx.post(f"{server.url}/api/embed", timeout=120, json={
        "model": MODEL, "input": short, "options": {"num_ctx": 64}}).json()
    (runner,) = [r for r in runners_of(server) if r.embedding and r.num_ctx == 64]
    counts = [len(httpx.post(f"{runner.url}/tokenize", headers=runner.headers, timeout=30,
                             json={"content": t, "add_special": True}).json()["tokens"]) for t in (short, long)]
    assert counts[1] > 64
    assert batch["prompt_eval_count"] == counts[0] + 64 and alone["prompt_eval_count"] == counts[0]
    assert batch["embeddings"][0] == pytest.approx(alone["embeddings"][0], abs=1e-5)
    refused = httpx.post(f"{server.url}/api/embed", timeout=120, json={
        "model": MODEL, "input": [short, long], "truncate": False, "options": {"num_ctx": 64}})
    assert refused.status_code == 400 and refused.json() == {"error": "the input length exceeds the context length"}
