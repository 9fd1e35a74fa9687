"""This machine as asset selection sees it: OS, CPU architecture, GPU vendor and its runtimes."""

from __future__ import annotations

import ctypes.util
import glob
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from supervisor.runtime.assets import Host

_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}
_PCI_VENDOR = {"0x10de": "nvidia", "0x1002": "amd"}


def _nvidia_cuda() -> tuple[bool, int | None]:
    """(an NVIDIA driver answers, the newest CUDA major it supports), from `nvidia-smi`'s header
    ("CUDA Version: 12.4"), which is the driver's limit, not an installed toolkit."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False, None
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False, None
    if out.returncode != 0:
        return False, None
    m = re.search(r"CUDA Version:\s*(\d+)\.", out.stdout)
    return True, int(m.group(1)) if m else None


def _linux_gpu_vendors() -> set[str]:
    """Display controllers' PCI vendors, which are there without any driver userland."""
    vendors = set()
    for path in glob.glob("/sys/class/drm/card[0-9]*/device/vendor"):
        try:
            vendors.add(_PCI_VENDOR.get(Path(path).read_text().strip(), ""))
        except OSError:
            continue
    return vendors - {""}


def _rocm_installed() -> bool:
    """The HIP runtime the ROCm builds link against (they don't bundle it)."""
    if sys.platform == "win32":
        system32 = Path(os.environ.get("SystemRoot", r"C:\Windows")) / "System32"
        return bool(glob.glob(str(system32 / "amdhip64*.dll")))
    return bool(glob.glob("/opt/rocm*/lib/libamdhip64.so*")) or ctypes.util.find_library("amdhip64") is not None


def detect() -> Host:
    os_name = {"linux": "linux", "darwin": "darwin", "win32": "windows"}.get(sys.platform, sys.platform)
    machine = platform.machine().lower()
    arch = _ARCH.get(machine, machine)
    if os_name == "darwin":
        return Host(os_name, arch, "apple" if arch == "arm64" else None)
    nvidia, cuda = _nvidia_cuda()
    vendors = _linux_gpu_vendors() if os_name == "linux" else set()
    if nvidia or "nvidia" in vendors:
        return Host(os_name, arch, "nvidia", cuda)
    rocm = _rocm_installed()
    if "amd" in vendors or (os_name == "windows" and rocm):
        return Host(os_name, arch, "amd", rocm=rocm)
    return Host(os_name, arch)
