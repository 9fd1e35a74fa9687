"""The GPUs a llama-server build can use, as that build lists them (`llama-server --list-devices`:
name, card, total and free memory), the way Ollama discovers them since it runs llama-server.
Listed once per build (path, size, mtime) and again before each load where the build has any,
since free memory moves; a CPU build's empty list never changes."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from supervisor.runtime.environment import clean_env

log = logging.getLogger("llamagate.devices")

MIB = 1 << 20
GIB = 1 << 30

# "  CUDA0: NVIDIA GeForce RTX 4090 (24564 MiB, 23012 MiB free)", printed by common/arg.cpp;
# "  (none)" when there is no device.
_DEVICE = re.compile(r"^\s+(\S+?):\s+(.+?)\s+\((\d+) MiB, (\d+) MiB free\)\s*$")
# Backends by the prefix of ggml's device names (CUDA0, ROCm1, Vulkan0, MTL0, SYCL0, CANN0…).
_BACKENDS = {"CUDA": "CUDA", "ROCm": "ROCm", "HIP": "ROCm", "Vulkan": "Vulkan", "MTL": "Metal", "Metal": "Metal",
             "SYCL": "SYCL", "CANN": "CANN", "MUSA": "MUSA", "OpenCL": "OpenCL", "RPC": "RPC"}


@dataclass(frozen=True)
class Device:
    name: str  # ggml's name, the one its buffer log lines carry: CUDA0, Vulkan1, MTL0
    description: str  # the card: "NVIDIA GeForce RTX 4090"
    total: int  # bytes
    free: int  # bytes, when it was listed

    @property
    def backend(self) -> str:
        prefix = re.sub(r"\d+$", "", self.name)
        return _BACKENDS.get(prefix, prefix)

    def describe(self) -> str:
        return f"{self.name} {self.description} ({self.total // MIB} MiB, {self.free // MIB} MiB free)"


def parse_device_list(text: str) -> list[Device]:
    """The devices of `--list-devices` output. Devices with no memory of their own (BLAS and the
    like, which some builds list) are no GPUs: Ollama skips them too."""
    devices = []
    for line in text.splitlines():
        if (m := _DEVICE.match(line)) and int(m[3]) > 0:
            devices.append(Device(m[1], m[2], int(m[3]) * MIB, int(m[4]) * MIB))
    return devices


def list_devices(binary: Path) -> list[Device]:
    """Run `binary --list-devices` as a runner runs (its folder, clean environment). A build that
    can't list them is treated as having none, with a warning: it may still run on the CPU."""
    try:
        out = subprocess.run([str(binary), "--list-devices"], cwd=binary.parent, env=clean_env(),
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("cannot list the devices of %s: %s", binary, e)
        return []
    if out.returncode != 0:
        tail = (out.stdout + out.stderr).strip().splitlines()[-3:]
        log.warning("`%s --list-devices` exited with %d: %s", binary, out.returncode, " / ".join(tail))
        return []
    return parse_device_list(out.stdout)


def default_context_length(devices: list[Device], overhead: int) -> int:
    """The num_ctx Ollama picks when OLLAMA_CONTEXT_LENGTH is unset, by total VRAM less
    OLLAMA_GPU_OVERHEAD per GPU: 256k from 47 GiB, 32k from 23 GiB, else 4k (its thresholds sit a
    GiB under 48 and 24 so that a 24 GB card counts as one)."""
    vram = sum(max(d.total - overhead, 0) for d in devices)
    if vram >= 47 * GIB:
        return 262144
    if vram >= 23 * GIB:
        return 32768
    return 4096


def _stamp(binary: Path) -> tuple[str, int, int]:
    """A build's key: its path as found (a downloaded one is already resolved through `current`,
    and every request's launch spec asks this, so it is not resolved again here), size and mtime."""
    try:
        st = binary.stat()
    except OSError:
        return str(binary), 0, 0
    return str(binary), st.st_size, st.st_mtime_ns


class Devices:
    """The device lists of the builds in use, cached per build."""

    def __init__(self) -> None:
        self._builds: dict[tuple[str, int, int], list[Device]] = {}
        self._lock = asyncio.Lock()
        # The list of the build last asked about: what /api/ps, /metrics and the status page show.
        self.current: list[Device] = []

    async def of(self, binary: Path, *, fresh: bool = False) -> list[Device]:
        """`binary`'s devices: from the cache, or listed again when `fresh` and it has any."""
        key = _stamp(binary)
        async with self._lock:
            cached = self._builds.get(key)
            if cached is None:
                cached = self._builds[key] = await asyncio.to_thread(_first_listing, binary)
            elif fresh and cached:
                cached = self._builds[key] = await asyncio.to_thread(list_devices, binary)
            self.current = cached
            return cached


def _first_listing(binary: Path) -> list[Device]:
    """A build's first listing, logged (at startup, or at the first load): what it can use. Where
    it lists no GPU, `nvidia-smi` and the PCI bus cross-check: a GPU there means a CPU build, or a
    GPU build that can't load its backend, which is worth a warning."""
    from supervisor.runtime import host  # runs nvidia-smi: only where no GPU was listed

    devices = list_devices(binary)
    if devices:
        log.info("GPUs found by %s: %s", binary, "; ".join(d.describe() for d in devices))
    elif gpu := host.detect().gpu:
        log.warning("no GPU found by %s although this machine has one (%s): its build has no backend for it, or "
                    "can't load it; models run on the CPU (`llamagate runtime install` picks a build for the GPU)",
                    binary, gpu)
    else:
        log.info("no GPU found by %s: models run on the CPU", binary)
    return devices


def processor(size: int, vram: int) -> str:
    """Where a model runs, as `ollama ps` prints it in PROCESSOR: `100% CPU`, `100% GPU`, or the
    split, `48%/52% CPU/GPU`."""
    if vram == 0:
        return "100% CPU"
    if vram == size:
        return "100% GPU"
    if vram > size or size == 0:
        return "Unknown"
    cpu = round(100 * (size - vram) / size)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"
