"""A 100-message chat in each dialect over the default context (4,096 tokens): the server drops
the oldest turns to answer the newest. contrib/e2e.sh runs it (about three minutes of prompt
processing on one thread); tests/e2e/test_clients.py has the same over a 512-token context."""

from __future__ import annotations

import ollama
import openai
from conftest import Server
from test_clients import MODEL, OPTIONS, gate, long_chat, oai  # noqa: F401 (the fixtures)

NUM_CTX = 4096  # llamagate's default context (OLLAMA_CONTEXT_LENGTH unset)


def test_ollama_100_message_chat(gate: Server) -> None:  # noqa: F811
    r = ollama.Client(host=gate.url).chat(model=MODEL, messages=long_chat(100), options=OPTIONS)
    assert r.done and r.message.content.strip()
    assert 0 < r.prompt_eval_count <= NUM_CTX


def test_openai_100_message_chat(oai: openai.OpenAI) -> None:  # noqa: F811
    r = oai.chat.completions.create(model=MODEL, messages=long_chat(100), temperature=0, seed=1, max_tokens=48)
    assert r.choices[0].message.content.strip()
    assert 0 < r.usage.prompt_tokens <= NUM_CTX
