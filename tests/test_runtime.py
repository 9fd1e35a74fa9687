"""Prebuilt llama-server builds: asset selection per platform (pure tables), then installs from a
loopback releases API serving archives built here from the installed llama-server."""

from __future__ import annotations

import pytest

from supervisor.errors import LlamagateError
from supervisor.runtime.assets import Asset, Host, Release, pick


def _release(tag: str, *flavors: str, extra: tuple[str, ...] = ()) -> Release:
    names = [f"llama-{tag}-bin-{f}" for f in flavors] + list(extra)
    return Release(tag, prerelease=True, assets=[
        Asset(n, 1, f"https://example.invalid/{tag}/{n}", "sha256:" + "0" * 64) for n in names])


# Asset lists as published (llama.cpp's release.yml): late 2026 with Linux CUDA builds and their
# runtime archives, mid 2026 (b9553, no Linux CUDA), the zip era (before Nov 2025), and the weeks
# both formats were published.
LATE_2026 = _release(
    "b11434",
    "ubuntu-x64.tar.gz", "ubuntu-arm64.tar.gz", "ubuntu-s390x.tar.gz", "ubuntu-vulkan-x64.tar.gz",
    "ubuntu-vulkan-arm64.tar.gz", "ubuntu-rocm-7.2-x64.tar.gz", "ubuntu-cuda-12.8-x64.tar.gz",
    "ubuntu-cuda-13.3-x64.tar.gz", "ubuntu-cuda-13.3-arm64.tar.gz", "ubuntu-openvino-2026.0-x64.tar.gz",
    "macos-arm64.tar.gz", "macos-x64.tar.gz", "android-arm64.tar.gz", "win-cpu-x64.zip", "win-cpu-arm64.zip",
    "win-cuda-12.4-x64.zip", "win-cuda-13.3-x64.zip", "win-vulkan-x64.zip", "win-rocm-7.2-x64.zip",
    "win-opencl-adreno-arm64.zip",
    extra=("cudart-llama-b11434-bin-ubuntu-cuda-12.8-x64.tar.gz", "cudart-llama-b11434-bin-ubuntu-cuda-13.3-x64.tar.gz",
           "cudart-llama-bin-win-cuda-12.4-x64.zip", "cudart-llama-bin-win-cuda-13.3-x64.zip",
           "llama-b11434-xcframework.zip", "llama-b11434-ui.tar.gz"),
)
MID_2026 = _release(
    "b9553",
    "ubuntu-x64.tar.gz", "ubuntu-arm64.tar.gz", "ubuntu-vulkan-x64.tar.gz", "ubuntu-rocm-7.2-x64.tar.gz",
    "macos-arm64.tar.gz", "win-cpu-x64.zip", "win-cuda-12.4-x64.zip", "win-vulkan-x64.zip",
    "win-hip-radeon-x64.zip",
    extra=("cudart-llama-bin-win-cuda-12.4-x64.zip",),
)
ZIP_ERA = _release(
    "b5000",
    "ubuntu-x64.zip", "ubuntu-vulkan-x64.zip", "macos-arm64.zip", "win-cuda-cu12.4-x64.zip", "win-vulkan-x64.zip",
    extra=("cudart-llama-bin-win-cu12.4-x64.zip",),
)
TRANSITION = _release("b7300", "ubuntu-x64.zip", "ubuntu-x64.tar.gz", "ubuntu-vulkan-x64.zip")

LINUX = Host("linux", "x64")


@pytest.mark.parametrize(
    ("host", "release", "backend", "archive", "runtime"),
    [
        (LINUX, LATE_2026, None, "llama-b11434-bin-ubuntu-x64.tar.gz", None),
        (Host("linux", "arm64"), LATE_2026, None, "llama-b11434-bin-ubuntu-arm64.tar.gz", None),
        (Host("linux", "s390x"), LATE_2026, None, "llama-b11434-bin-ubuntu-s390x.tar.gz", None),
        # NVIDIA: the newest CUDA build the driver runs, with its runtime libraries...
        (Host("linux", "x64", "nvidia", 13), LATE_2026, None, "llama-b11434-bin-ubuntu-cuda-13.3-x64.tar.gz",
         "cudart-llama-b11434-bin-ubuntu-cuda-13.3-x64.tar.gz"),
        (Host("linux", "x64", "nvidia", 12), LATE_2026, None, "llama-b11434-bin-ubuntu-cuda-12.8-x64.tar.gz",
         "cudart-llama-b11434-bin-ubuntu-cuda-12.8-x64.tar.gz"),
        (Host("linux", "x64", "nvidia", None), LATE_2026, None, "llama-b11434-bin-ubuntu-cuda-12.8-x64.tar.gz",
         "cudart-llama-b11434-bin-ubuntu-cuda-12.8-x64.tar.gz"),
        (Host("linux", "arm64", "nvidia", 13), LATE_2026, None, "llama-b11434-bin-ubuntu-cuda-13.3-arm64.tar.gz",
         None),
        # ...Vulkan where the OS has no CUDA build or the driver is too old for all of them.
        (Host("linux", "x64", "nvidia", 12), MID_2026, None, "llama-b9553-bin-ubuntu-vulkan-x64.tar.gz", None),
        (Host("linux", "x64", "nvidia", 11), LATE_2026, None, "llama-b11434-bin-ubuntu-vulkan-x64.tar.gz", None),
        (Host("linux", "x64", "nvidia", 12), LATE_2026, "vulkan", "llama-b11434-bin-ubuntu-vulkan-x64.tar.gz",
         None),
        # AMD: ROCm where its runtime is installed, else Vulkan; no ROCm build for arm64.
        (Host("linux", "x64", "amd", rocm=True), LATE_2026, None, "llama-b11434-bin-ubuntu-rocm-7.2-x64.tar.gz",
         None),
        (Host("linux", "x64", "amd"), LATE_2026, None, "llama-b11434-bin-ubuntu-vulkan-x64.tar.gz", None),
        (Host("linux", "x64", "amd"), LATE_2026, "rocm", "llama-b11434-bin-ubuntu-rocm-7.2-x64.tar.gz", None),
        (Host("linux", "arm64", "amd", rocm=True), LATE_2026, None, "llama-b11434-bin-ubuntu-vulkan-arm64.tar.gz",
         None),
        (LINUX, LATE_2026, "vulkan", "llama-b11434-bin-ubuntu-vulkan-x64.tar.gz", None),
        # Apple Silicon → the Metal build; Intel Macs → the CPU build.
        (Host("darwin", "arm64", "apple"), LATE_2026, None, "llama-b11434-bin-macos-arm64.tar.gz", None),
        (Host("darwin", "arm64", "apple"), LATE_2026, "cpu", "llama-b11434-bin-macos-arm64.tar.gz", None),
        (Host("darwin", "x64"), LATE_2026, None, "llama-b11434-bin-macos-x64.tar.gz", None),
        # Windows: CUDA with its runtime zip (named without the tag), HIP/ROCm, arm64 CPU.
        (Host("windows", "x64", "nvidia", 13), LATE_2026, None, "llama-b11434-bin-win-cuda-13.3-x64.zip",
         "cudart-llama-bin-win-cuda-13.3-x64.zip"),
        (Host("windows", "x64", "nvidia", 12), MID_2026, None, "llama-b9553-bin-win-cuda-12.4-x64.zip",
         "cudart-llama-bin-win-cuda-12.4-x64.zip"),
        (Host("windows", "x64", "amd", rocm=True), LATE_2026, None, "llama-b11434-bin-win-rocm-7.2-x64.zip", None),
        (Host("windows", "x64", "amd", rocm=True), MID_2026, None, "llama-b9553-bin-win-hip-radeon-x64.zip", None),
        (Host("windows", "x64", "amd"), LATE_2026, None, "llama-b11434-bin-win-vulkan-x64.zip", None),
        (Host("windows", "x64"), LATE_2026, None, "llama-b11434-bin-win-cpu-x64.zip", None),
        (Host("windows", "arm64"), LATE_2026, None, "llama-b11434-bin-win-cpu-arm64.zip", None),
        # Older layouts: zips, `cu12.4` names, and both formats at once (the .tar.gz wins).
        (LINUX, ZIP_ERA, None, "llama-b5000-bin-ubuntu-x64.zip", None),
        (Host("windows", "x64", "nvidia", 12), ZIP_ERA, None, "llama-b5000-bin-win-cuda-cu12.4-x64.zip",
         "cudart-llama-bin-win-cu12.4-x64.zip"),
        (LINUX, TRANSITION, None, "llama-b7300-bin-ubuntu-x64.tar.gz", None),
        (LINUX, TRANSITION, "vulkan", "llama-b7300-bin-ubuntu-vulkan-x64.zip", None),
    ],
)
def test_asset_selection(host, release, backend, archive, runtime):
    chosen = pick(host, release, backend)
    assert chosen.archive.name == archive
    assert (chosen.runtime.name if chosen.runtime else None) == runtime


def test_build_names_carry_tag_and_flavor():
    assert pick(Host("linux", "x64", "nvidia", 13), LATE_2026).build_name == "b11434-ubuntu-cuda-13.3-x64"
    assert pick(LINUX, ZIP_ERA).build_name == "b5000-ubuntu-x64"


@pytest.mark.parametrize(
    ("host", "release", "backend", "words"),
    [
        (LINUX, LATE_2026, "metal", ["no metal build for linux/x64", "cpu, cuda, rocm, vulkan"]),
        (Host("darwin", "x64"), LATE_2026, "metal", ["no metal build for darwin/x64", "offers cpu"]),
        (Host("darwin", "arm64", "apple"), LATE_2026, "vulkan", ["no vulkan build"]),
        (LINUX, MID_2026, "cuda", ["no cuda build for linux/x64"]),
        (Host("linux", "x64", "nvidia", 11), LATE_2026, "cuda", ["driver supports CUDA 11", "12.8, 13.3"]),
        (Host("freebsd", "x64"), LATE_2026, None, ["no cpu build for freebsd/x64", "offers nothing"]),
        (Host("linux", "riscv64"), LATE_2026, None, ["no cpu build for linux/riscv64"]),
    ],
)
def test_no_fitting_asset_says_what_is_offered(host, release, backend, words):
    with pytest.raises(LlamagateError) as e:
        pick(host, release, backend)
    for word in words:
        assert word in e.value.message
