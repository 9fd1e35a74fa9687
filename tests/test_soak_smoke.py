"""The soak's bounded smoke in the default run: the same mixed load (tests/soak.py) with 6
clients for 6 seconds, so that the long soak (contrib/soak.sh) cannot rot."""

from __future__ import annotations

import asyncio

import soak


def test_soak_smoke(tmp_path, smollm2, tiny_gguf, llama_server_binary):
    with soak.soak_server(tmp_path, smollm2, tiny_gguf) as (srv, cached):
        figures = asyncio.run(soak.run(srv.url, srv.proc.pid, 6.0, 6, "smollm2:135m", cached, baseline_at=1.5))
    assert figures.errors == [], figures.errors[:10]
    assert set(figures.by_kind) == set(soak.KINDS), figures.by_kind
    assert len(figures.samples) >= 5 and all(s.fds > 0 and s.threads > 0 and s.rss > 0 for s in figures.samples)
