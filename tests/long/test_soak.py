"""The load-and-soak: 32 clients of the `ollama` library for 10 minutes against SmolLM2 (see
tests/soak.py). `contrib/soak.sh` runs it and writes its figures to soak-figures.json
(LLAMAGATE_SOAK_SECONDS and LLAMAGATE_SOAK_CLIENTS change its size)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import soak

SECONDS = float(os.environ.get("LLAMAGATE_SOAK_SECONDS", "600"))
CLIENTS = int(os.environ.get("LLAMAGATE_SOAK_CLIENTS", "32"))
OUT = Path(os.environ.get("LLAMAGATE_SOAK_OUT", "soak-figures.json"))


def test_soak(tmp_path, smollm2, tiny_gguf, llama_server_binary):
    with soak.soak_server(tmp_path, smollm2, tiny_gguf) as (srv, cached):
        figures = asyncio.run(soak.run(srv.url, srv.proc.pid, SECONDS, CLIENTS, "smollm2:135m", cached,
                                       baseline_at=min(120.0, SECONDS / 5)))
        figures.log_problems = soak.log_problems(srv.log())
    figures.write(OUT)
    assert figures.errors == [], figures.errors[:10]
    assert set(figures.by_kind) == set(soak.KINDS), figures.by_kind
    assert figures.flat(), f"grew by {figures.growth()} between minute 2 and the end"
