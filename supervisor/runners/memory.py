"""How much memory a runner takes, on which device (file + KV cache + compute buffers, split
between GPUs and RAM as llama-server will place them), how much is free, and the fit check."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.errors import LlamagateError
from supervisor.models.gguf import cached_info
from supervisor.runtime.devices import MIB, Device

# llama.cpp's compute buffers: a few hundred MB for small models, growing with the batch and
# vocabulary; a flat allowance (per device used) is within the error of everything else here.
_COMPUTE_OVERHEAD = 256 << 20
_KV_BYTES = 2  # f16, llama-server's default cache type
# What llama-server's --fit leaves free on each device (its --fit-target default).
FIT_MARGIN = 1024 * MIB
# Ollama puts a model on one GPU (unless OLLAMA_SCHED_SPREAD) where it takes at most this share of it.
_SINGLE_GPU_SHARE = 0.8


@dataclass(frozen=True)
class Estimate:
    weights: int  # in RAM, mmapped from the file: counted as "available" by the kernel while resident
    kv_and_buffers: int  # in RAM, allocated: already missing from MemAvailable once loaded
    vram: dict[str, int] = field(default_factory=dict)  # bytes by device name (CUDA0…)
    gpu_layers: int = 0
    layers: int = 0  # offloadable layers: the blocks and the output layer

    @property
    def ram(self) -> int:
        return self.weights + self.kv_and_buffers

    @property
    def vram_total(self) -> int:
        return sum(self.vram.values())

    @property
    def total(self) -> int:
        return self.ram + self.vram_total

    @property
    def size(self) -> int:
        """The size /api/ps reports, as Ollama does: a model whose every layer is on a GPU counts
        its VRAM alone (the token embeddings llama.cpp keeps in RAM would make it read "99% GPU")."""
        return self.vram_total if self.layers and self.gpu_layers >= self.layers else self.total


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


def _shape(model_path: Path, n_ctx_total: int) -> tuple[int, int, int]:
    """(file size, KV cache bytes, block count) of a GGUF; an unreadable one counts its file alone."""
    try:
        weights = model_path.stat().st_size
    except OSError:
        weights = 0
    try:
        metadata = cached_info(model_path).metadata
    except LlamagateError:
        return weights, 0, 0
    arch = metadata.get("general.architecture", "")
    return weights, kv_cache_bytes(metadata, n_ctx_total), _per_layer_max(metadata.get(f"{arch}.block_count"))


def estimate(model_path: Path, n_ctx_total: int, free: dict[str, int] | None = None,
             gpu_layers: int | None = None) -> Estimate:
    """The memory a llama-server for this file and total context (num_ctx × slots) will use, split
    as it will place it over the GPUs in `free` (device → bytes it may take): `gpu_layers` layers
    (Ollama's num_gpu, `-ngl`) or, unset or negative, as many as fit leaving `FIT_MARGIN` on each
    (llama-server's --fit), spread over the devices in proportion to their free memory (its
    default split). A layer is the file's and the KV cache's share; the output layer carries no KV."""
    weights, kv, blocks = _shape(model_path, n_ctx_total)
    free = free or {}
    if not free or not blocks or gpu_layers == 0:
        return Estimate(weights, kv + _COMPUTE_OVERHEAD, layers=blocks + 1 if blocks else 0)
    layers = blocks + 1
    layer_weights, layer_kv = weights / layers, kv / blocks
    room = {d: max(f - _COMPUTE_OVERHEAD - (FIT_MARGIN if gpu_layers is None or gpu_layers < 0 else 0), 0)
            for d, f in free.items()}
    if gpu_layers is None or gpu_layers < 0:
        n = min(layers, int(sum(room.values()) // (layer_weights + layer_kv)))
    else:
        n = min(gpu_layers, layers)
    if n == 0:
        return Estimate(weights, kv + _COMPUTE_OVERHEAD, layers=layers)
    share = {d: r / sum(room.values()) if sum(room.values()) else 1 / len(room) for d, r in room.items()}
    on_gpu_kv = layer_kv * min(n, blocks)
    vram = {d: int(s * (n * layer_weights + on_gpu_kv)) + _COMPUTE_OVERHEAD for d, s in share.items() if s > 0}
    ram_weights = int(weights - n * layer_weights)
    ram_other = int(kv - on_gpu_kv) + (_COMPUTE_OVERHEAD if n < layers else 0)
    return Estimate(ram_weights, ram_other, vram, n, layers)


def gpu_free(devices: Sequence[Device], overhead: int, loaded: Iterable[Estimate] = (),
             starting: Iterable[Estimate] = ()) -> dict[str, int]:
    """What each GPU has for one more runner. The free memory listed was measured before runners
    still starting allocated theirs, so those come off it; and no device has more than its total
    less what our runners hold (Ollama's rule too). OLLAMA_GPU_OVERHEAD stays free on each."""
    loaded, starting = list(loaded), list(starting)
    out = {}
    for d in devices:
        ours = sum(e.vram.get(d.name, 0) for e in loaded + starting)
        coming = sum(e.vram.get(d.name, 0) for e in starting)
        out[d.name] = max(min(d.free - coming, d.total - ours) - overhead, 0)
    return out


def single_gpu(model_path: Path, n_ctx_total: int, free: dict[str, int]) -> str | None:
    """The GPU a model goes to alone when OLLAMA_SCHED_SPREAD is off and there are several: the
    one with the most free memory among those where it all takes at most 80 % (Ollama's rule);
    None when it fits none of them that way, and is split over all."""
    if len(free) < 2:
        return None
    weights, kv, _ = _shape(model_path, n_ctx_total)
    need = weights + kv + _COMPUTE_OVERHEAD
    fitting = [d for d, f in free.items() if need <= _SINGLE_GPU_SHARE * f]
    return max(fitting, key=lambda d: free[d]) if fitting else None


def vram_fits(need: Estimate, best: Estimate, free: dict[str, int]) -> bool:
    """Whether a runner fits the GPUs as they are: each device has room for its part, and no
    fewer layers go to them than would with none of our other runners loaded (else unloading
    idle ones first gives a faster model, as Ollama prefers)."""
    return need.gpu_layers >= best.gpu_layers and all(v <= free.get(d, 0) for d, v in need.vram.items())


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
    """Whether a new runner's RAM part fits next to the runners loaded and starting.

    Against free RAM: a loaded runner's mmapped weights still count as "available" page cache,
    and a starting one has not allocated yet, so both are taken off what the kernel reports.
    Against the budget (LLAMAGATE_MAX_MEMORY): every runner's RAM counts in full.
    """
    if budget and need.ram + sum(e.ram for e in loaded + starting) > budget:
        return False
    if available is None:
        return True
    free = available - sum(e.weights for e in loaded) - sum(e.ram for e in starting)
    return need.ram <= free
