"""What a model can do, decided from its GGUF (chat template, architecture, tokens) and layers."""

from __future__ import annotations

from supervisor.models.gguf import GGUFInfo, pooling

# Encoder-only architectures: they embed, they cannot generate.
_ENCODERS = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "neo-bert", "modern-bert", "t5encoder"}
# Markers of a chat template that renders reasoning (Qwen3, DeepSeek-R1, SmolLM3, gpt-oss ...).
_THINKING_MARKERS = ("<think>", "enable_thinking", "reasoning_content", "<|channel|>analysis")


def capabilities(info: GGUFInfo, *, projector: bool) -> list[str]:
    """Ollama's capability names, in Ollama's order: completion, tools, insert, vision,
    embedding, thinking; and ours, `rerank`, in embedding's place for a reranker (rank pooling:
    it scores a query against documents, it gives no embeddings)."""
    arch = info.architecture
    template = info.chat_template
    caps = []
    generates = arch not in _ENCODERS
    if generates:
        caps.append("completion")
        if "tools" in template:
            caps.append("tools")
        if any(k in info.metadata for k in ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id")):
            caps.append("insert")
        if projector:
            caps.append("vision")
    if pooling(info) == "rank":
        caps.append("rerank")
    elif f"{arch}.pooling_type" in info.metadata or not generates:
        caps.append("embedding")
    if generates and any(m in template for m in _THINKING_MARKERS):
        caps.append("thinking")
    return caps
