"""A model serving chat and embeddings at once runs two llama-servers, but to a client it is one
model: one /api/ps entry, and one keep_alive and unload for both."""

from __future__ import annotations

from datetime import datetime, timedelta

import ollama
from conftest import Server, wait_until


def test_chat_and_embeddings_are_one_model(tmp_path, smollm2, llama_server_binary):
    srv = Server(tmp_path)
    try:
        srv.create("smollm2", smollm2)
        client = ollama.Client(host=srv.url)
        (listed,) = client.list().models
        client.embed(model="smollm2", input="a sentence to embed")  # the default keep_alive, 5 m
        client.chat(model="smollm2", messages=[{"role": "user", "content": "hi"}], keep_alive="1h",
                    options={"num_predict": 2})
        assert len(srv.runner_pids()) == 2

        (entry,) = client.ps().models
        assert entry.model == "smollm2:latest"
        assert entry.size >= 2 * listed.size  # both processes
        assert entry.context_length == 4096  # the chat runner's
        # The chat's keep_alive holds for the model, its embedding runner included.
        left = entry.expires_at - datetime.now().astimezone()
        assert timedelta(minutes=59) < left <= timedelta(hours=1)

        # A short keep_alive on a chat request lets the whole model go, not just its chat runner.
        client.chat(model="smollm2", messages=[{"role": "user", "content": "hi"}], keep_alive="2s",
                    options={"num_predict": 2})
        assert wait_until(lambda: srv.runner_pids() == [], timeout=15)
        assert client.ps().models == []

        # `llamagate stop` unloads both at once.
        client.embed(model="smollm2", input="again")
        client.chat(model="smollm2", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2})
        assert len(srv.runner_pids()) == 2
        srv.cli("stop", "smollm2")
        assert wait_until(lambda: srv.runner_pids() == [], timeout=15)
        assert client.ps().models == []
    finally:
        srv.stop()
