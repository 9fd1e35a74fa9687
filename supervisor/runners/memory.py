"""How much memory a runner will take (file + KV cache + compute buffers) and how much is free."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from supervisor.errors import LlamagateError
from supervisor.models.gguf import cached_info

# llama.cpp's compute buffers: a few hundred MB for small models, growing with the batch and
# vocabulary; a flat allowance is within the error of everything else here.
_COMPUTE_OVERHEAD = 256 << 20
_KV_BYTES = 2  # f16, llama-server's default cache type


@dataclass(frozen=True)
class Estimate:
    weights: int  # mmapped from the file: counted as "available" by the kernel while resident
    kv_and_buffers: int  # allocated: already missing from MemAvailable once loaded

    @property
    def total(self) -> int:
        return self.weights + self.kv_and_buffers


def _per_layer_max(value: object) -> int:
    """Some architectures store per-layer arrays (e.g. head counts); the largest bounds the cache."""
    if isinstance(value, list):
        return max((int(v) for v in value), default=0)
    return int(value) if isinstance(value, (int, float)) else 0


def kv_cache_bytes(metadata: dict, n_ctx: int) -> int:
    """K and V for every layer and cached token: n_ctx × layers × kv_heads × (k_len + v_len) × f16."""
    arch = metadata.get("general.architecture", "")
    layers = _per_layer_max(metadata.get(f"{arch}.block_count"))
    heads = _per_layer_max(metadata.get(f"{arch}.attention.head_count"))
    kv_heads = _per_layer_max(metadata.get(f"{arch}.attention.head_count_kv")) or heads
    embd = _per_layer_max(metadata.get(f"{arch}.embedding_length"))
    head_dim = embd // heads if heads else 0
    k_len = _per_layer_max(metadata.get(f"{arch}.attention.key_length")) or head_dim
    v_len = _per_layer_max(metadata.get(f"{arch}.attention.value_length")) or head_dim
    return n_ctx * layers * kv_heads * (k_len + v_len) * _KV_BYTES


def estimate(model_path: Path, n_ctx_total: int) -> Estimate:
    """The memory a llama-server for this file and total context (num_ctx × slots) will use."""
    try:
        weights = model_path.stat().st_size
    except OSError:
        weights = 0
    try:
        kv = kv_cache_bytes(cached_info(model_path).metadata, n_ctx_total)
    except LlamagateError:  # unreadable as GGUF: count the file alone
        kv = 0
    return Estimate(weights, kv + _COMPUTE_OVERHEAD)


def available_bytes() -> int | None:
    """The kernel's estimate of memory available without swapping; None where we can't tell."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def resident_bytes(pid: int) -> int:
    """What a process holds in memory (weights touched, KV cache, buffers), from /proc; 0 where
    we can't tell."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def fits(need: Estimate, *, loaded: list[Estimate], starting: list[Estimate], available: int | None,
         budget: int) -> bool:
    """Whether a new runner fits next to the ones loaded and starting.

    Against free RAM: a loaded runner's mmapped weights still count as "available" page cache,
    and a starting one has not allocated yet, so both are taken off what the kernel reports.
    Against the budget (LLAMAGATE_MAX_MEMORY): every runner counts in full.
    """
    if budget and need.total + sum(e.total for e in loaded + starting) > budget:
        return False
    if available is None:
        return True
    free = available - sum(e.weights for e in loaded) - sum(e.total for e in starting)
    return need.total <= free
