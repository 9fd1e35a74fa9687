"""Where a runner's memory really went, read from llama-server's load log (at `--log-verbosity
4`): the buffers it allocated per device and how many layers it offloaded. The lines, printed by
src/llama-model.cpp, llama-kv-cache.cpp and llama-context.cpp:

    load_tensors: offloaded 31/31 layers to GPU
    load_tensors:        CUDA0 model buffer size =   852.89 MiB
    load_tensors:   CPU_Mapped model buffer size =    92.10 MiB
    llama_kv_cache:      CUDA0 KV buffer size =  1920.00 MiB
    sched_reserve:       CUDA0 compute buffer size =   378.04 MiB
    sched_reserve:   CUDA_Host compute buffer size =    16.64 MiB
    llama_context:   CUDA_Host  output buffer size =     0.75 MiB
"""

from __future__ import annotations

import re

from supervisor.runners.memory import Estimate

_BUFFER = re.compile(r"(\w+):\s+(\S+)\s+(model|KV|compute|output|RS) buffer size\s*=\s*([\d.]+) MiB")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
# Names of buffers in device memory carry the device's name, with these suffixes for its kinds.
_SUFFIXES = ("_Mapped", "_REPACK", "_Private")


def _device(buffer: str) -> str | None:
    """The GPU a buffer is on, by its name (CUDA0, MTL0_Mapped, ROCm1); None for host memory:
    CPU, CPU_Mapped, CPU_REPACK, BLAS and pinned host buffers (CUDA_Host)."""
    if buffer in ("CPU", "BLAS") or buffer.startswith("CPU_") or buffer.endswith("_Host"):
        return None
    for suffix in _SUFFIXES:
        buffer = buffer.removesuffix(suffix)
    return buffer


class LoadLog:
    """Fed every line a runner prints; `placement` is what its load allocated, once a buffer line
    was seen. Buffers are keyed by the step that printed them, so that --fit's trial run is
    replaced by the real load's figures rather than added to them."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, str, str], int] = {}
        self._offloaded: tuple[int, int] = (0, 0)

    def feed(self, line: str) -> None:
        if "buffer size" in line and (m := _BUFFER.search(line)):
            self._buffers[(m[1], m[2], m[3])] = int(float(m[4]) * (1 << 20))
        elif "layers to GPU" in line and (m := _OFFLOADED.search(line)):
            self._offloaded = (int(m[1]), int(m[2]))

    def placement(self, file_size: int) -> Estimate | None:
        """The buffers as an Estimate (None before any was printed). Mapped weights in RAM are
        page cache of the file, and never more of it than the GPUs don't hold."""
        if not self._buffers:
            return None
        vram: dict[str, int] = {}
        mapped = other = on_gpu_weights = 0
        for (_, buffer, kind), size in self._buffers.items():
            device = _device(buffer)
            if device is not None:
                vram[device] = vram.get(device, 0) + size
                on_gpu_weights += size if kind == "model" else 0
            elif kind == "model" and buffer.endswith("_Mapped"):
                mapped += size
            else:
                other += size
        if file_size:
            mapped = min(mapped, max(file_size - on_gpu_weights, 0))
        gpu_layers, layers = self._offloaded
        if not vram:
            # A build with the RPC backend counts it as a GPU and prints "offloaded 3/3 layers to
            # GPU" with no worker given; no buffer on a device means they all stayed in RAM.
            gpu_layers = 0
        return Estimate(mapped, other, vram, gpu_layers, layers)
