"""Write a tiny random-weight llama GGUF model that llama-server loads in a blink.

The output is garbage text, but the file exercises the real load/tokenize/generate path.
"""

from __future__ import annotations

import pathlib

import gguf
import numpy as np

N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
SEED = 1234

# Spelled in GPT-2's byte-to-unicode alphabet (Ġ is a space), as llama.cpp's BPE expects.
MERGES = [
    "Ġ t", "h e", "i n", "e r", "a n", "o n", "r e", "Ġ a", "e n", "a t",
    "o u", "e d", "i s", "Ġ s", "o r", "Ġ w", "Ġ o", "i t", "Ġ c", "e s",
    "Ġt he", "Ġ b", "Ġ f", "in g", "Ġ h", "a r", "Ġ m", "Ġ i", "l l", "Ġ p",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte->printable-char map; llama.cpp looks byte tokens up by these chars.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _vocab(extra: tuple[str, ...] = ()) -> tuple[list[str], list[int]]:
    tokens = list(_bytes_to_unicode().values())
    tokens += ["".join(m.split(" ")) for m in MERGES]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    tokens += SPECIALS
    types += [gguf.TokenType.CONTROL] * len(SPECIALS)
    # Markers such as <tool_call> are single user-defined tokens, as in real tool-calling models.
    tokens += list(extra)
    types += [gguf.TokenType.USER_DEFINED] * len(extra)
    assert len(set(tokens)) == len(tokens)
    return tokens, [int(t) for t in types]


def write_tiny_model(
    path: pathlib.Path,
    *,
    context_length: int = 512,
    chat_template: str = CHAT_TEMPLATE,
    extra_tokens: tuple[str, ...] = (),
    favour: str | None = None,
    f16: bool = False,
    padding: int = 0,
) -> pathlib.Path:
    """`extra_tokens` are added to the vocabulary; `favour` (one of them) is made the greedy
    choice wherever it is allowed, so a test can steer the model into, say, a tool call. `f16`
    stores the matrices as F16 (norms stay F32, as converters write them): a model to quantize.
    `padding` strings in an extra metadata array make the header as slow to read as a big
    vocabulary's, without the big vocabulary's slow load."""
    path = pathlib.Path(path)
    tokens, token_types = _vocab(extra_tokens)
    n_vocab = len(tokens)
    bos_id = tokens.index("<|endoftext|>")
    eos_id = tokens.index("<|im_end|>")
    special_ids = [tokens.index(s) for s in SPECIALS]
    head_dim = N_EMBD // N_HEAD
    rng = np.random.default_rng(SEED)

    def rand(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    # Dimension 0 of every embedding is a large constant and the layers are weak, so it
    # stays positive after the final RMS norm; output rows for the special tokens weigh it
    # negatively, so sampling never picks EOS/EOG and generations run to max_tokens.
    token_embd = rand(n_vocab, N_EMBD, std=1.0)
    token_embd[:, 0] = 8.0
    output = rand(n_vocab, N_EMBD, std=0.3)
    output[:, 0] = 0.0
    output[special_ids, :] = 0.0
    output[special_ids, 0] = -4.0
    if favour is not None:
        output[tokens.index(favour), :] = 0.0
        output[tokens.index(favour), 0] = 4.0

    # numpy shapes are ggml's ne[] reversed: (out_features, in_features).
    tensors: dict[str, np.ndarray] = {
        "token_embd.weight": token_embd,
        "output_norm.weight": np.ones(N_EMBD, dtype=np.float32),
        "output.weight": output,
    }
    for i in range(N_LAYER):
        blk = f"blk.{i}"
        tensors[f"{blk}.attn_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
        tensors[f"{blk}.attn_q.weight"] = rand(N_HEAD * head_dim, N_EMBD)
        tensors[f"{blk}.attn_k.weight"] = rand(N_HEAD_KV * head_dim, N_EMBD)
        tensors[f"{blk}.attn_v.weight"] = rand(N_HEAD_KV * head_dim, N_EMBD)
        tensors[f"{blk}.attn_output.weight"] = rand(N_EMBD, N_HEAD * head_dim)
        tensors[f"{blk}.ffn_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
        tensors[f"{blk}.ffn_gate.weight"] = rand(N_FF, N_EMBD)
        tensors[f"{blk}.ffn_up.weight"] = rand(N_FF, N_EMBD)
        tensors[f"{blk}.ffn_down.weight"] = rand(N_EMBD, N_FF)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("llamagate-tiny")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(context_length)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)

    writer.add_tokenizer_model("gpt2")
    # An explicit "default" avoids llama.cpp's loud missing-pre-tokenizer warning.
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(bos_id)
    writer.add_eos_token_id(eos_id)
    writer.add_pad_token_id(bos_id)
    # ChatML prompts carry their own markers; a BOS in front would just be noise.
    writer.add_add_bos_token(False)
    writer.add_chat_template(chat_template)
    if padding:
        writer.add_array("llamagate.test.padding", [f"pad{i}" for i in range(padding)])

    for name, data in tensors.items():
        writer.add_tensor(name, data.astype(np.float16) if f16 and data.ndim == 2 else data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# A WordPiece vocabulary as llama.cpp's BERT tokenizer reads it: a word's first piece starts with
# "▁" (U+2581), continuations are bare (the converter's spelling of "##").
_RERANK_WORDS = ["the", "cat", "dog", "sat", "mat", "paris", "france", "capital", "of", "is", "what"]
_RERANK_VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                 + ["\u2581" + c for c in "abcdefghijklmnopqrstuvwxyz?.,"]
                 + list("abcdefghijklmnopqrstuvwxyz") + ["\u2581" + w for w in _RERANK_WORDS])


def write_tiny_reranker(path: pathlib.Path, *, context_length: int = 512) -> pathlib.Path:
    """A random-weight BERT cross-encoder with rank pooling and a classifier head (`cls`,
    `cls.output`), as converted bge-rerankers are: llama-server --reranking loads it and scores
    query/document pairs (meaninglessly, but differently for different texts)."""
    path = pathlib.Path(path)
    rng = np.random.default_rng(SEED)

    def rand(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    ones, zeros = (lambda n: np.ones(n, np.float32)), (lambda n: np.zeros(n, np.float32))
    n_vocab = len(_RERANK_VOCAB)
    tensors = {
        "token_embd.weight": rand(n_vocab, N_EMBD, std=1.0), "token_types.weight": rand(2, N_EMBD),
        "position_embd.weight": rand(context_length, N_EMBD),
        "token_embd_norm.weight": ones(N_EMBD), "token_embd_norm.bias": zeros(N_EMBD),
    }
    for i in range(N_LAYER):
        blk = f"blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensors[f"{blk}.{name}.weight"] = rand(N_EMBD, N_EMBD, std=0.3)
            tensors[f"{blk}.{name}.bias"] = zeros(N_EMBD)
        for name in ("attn_output_norm", "layer_output_norm"):
            tensors[f"{blk}.{name}.weight"], tensors[f"{blk}.{name}.bias"] = ones(N_EMBD), zeros(N_EMBD)
        tensors[f"{blk}.ffn_up.weight"], tensors[f"{blk}.ffn_up.bias"] = rand(N_FF, N_EMBD), zeros(N_FF)
        tensors[f"{blk}.ffn_down.weight"], tensors[f"{blk}.ffn_down.bias"] = rand(N_EMBD, N_FF), zeros(N_EMBD)
    tensors["cls.weight"], tensors["cls.bias"] = rand(N_EMBD, N_EMBD, std=0.3), zeros(N_EMBD)
    tensors["cls.output.weight"], tensors["cls.output.bias"] = rand(1, N_EMBD, std=1.0), zeros(1)

    writer = gguf.GGUFWriter(path, "bert")
    writer.add_name("llamagate-tiny-reranker")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(context_length)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.RANK)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(_RERANK_VOCAB)
    writer.add_token_types([int(gguf.TokenType.CONTROL)] * 5 + [int(gguf.TokenType.NORMAL)] * (n_vocab - 5))
    writer.add_token_type_count(2)
    writer.add_unk_token_id(1)
    writer.add_pad_token_id(0)
    writer.add_bos_token_id(2)  # [CLS]
    writer.add_eos_token_id(3)  # [SEP]
    writer.add_sep_token_id(3)
    writer.add_mask_token_id(4)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
