"""Which asset of a llama.cpp release fits a machine: the releases-API shapes and pure selection.

Asset names follow ggml-org/llama.cpp's `.github/workflows/release.yml`:
`llama-<tag>-bin-<flavor>.<tar.gz|zip>`, flavor e.g. `ubuntu-x64`, `ubuntu-vulkan-arm64`,
`ubuntu-cuda-13.3-x64`, `macos-arm64`, `win-cuda-12.4-x64`, `win-hip-radeon-x64`; CUDA builds
come with a separate runtime archive, `cudart-llama-[<tag>-]bin-<flavor>.<zip|tar.gz>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from supervisor.errors import LlamagateError


class Asset(msgspec.Struct):
    """One file of a release, as GitHub's releases API describes it."""

    name: str
    size: int
    browser_download_url: str
    # "sha256:<hex>"; null for assets uploaded before GitHub started computing digests (2025).
    digest: str | None = None


class Release(msgspec.Struct):
    tag_name: str
    draft: bool = False
    prerelease: bool = False
    assets: list[Asset] = msgspec.field(default_factory=list)


@dataclass(frozen=True)
class Host:
    """What asset selection needs to know about a machine."""

    os: str  # linux | darwin | windows
    arch: str  # x64 | arm64 | s390x | …
    gpu: str | None = None  # nvidia | amd | apple
    cuda: int | None = None  # the newest CUDA major version the NVIDIA driver supports
    rocm: bool = False  # AMD's ROCm/HIP runtime is installed (the ROCm builds link against it)


@dataclass(frozen=True)
class Pick:
    backend: str
    archive: Asset
    runtime: Asset | None  # CUDA runtime libraries to unpack beside llama-server

    @property
    def build_name(self) -> str:
        """`<tag>-<flavor>`, e.g. `b11434-ubuntu-vulkan-x64`: the build's folder in the cache."""
        m = _ARCHIVE.match(self.archive.name)
        assert m is not None
        return f"{m['tag']}-{m['flavor']}"

    @property
    def assets(self) -> list[Asset]:
        return [self.archive, *([self.runtime] if self.runtime else [])]


_ARCHIVE = re.compile(r"llama-(?P<tag>b\d+)-bin-(?P<flavor>.+?)\.(?P<ext>tar\.gz|zip)")
_PLATFORM = {"linux": "ubuntu", "darwin": "macos", "windows": "win"}
_V = r"(?:cu)?(?P<v>\d+(?:\.\d+)*)"  # a CUDA/ROCm version; Windows names were `cu12.4` until 2025
# Flavor patterns per backend and OS ({p} platform word, {a} architecture).
_FLAVORS: dict[str, dict[str, str]] = {
    "cpu": {"linux": "{p}-{a}", "darwin": "{p}-{a}", "windows": "{p}-cpu-{a}"},
    "vulkan": {"linux": "{p}-vulkan-{a}", "windows": "{p}-vulkan-{a}"},
    "cuda": {"linux": "{p}-cuda-" + _V + "-{a}", "windows": "{p}-cuda-" + _V + "-{a}"},
    "rocm": {"linux": "{p}-rocm-" + _V + "-{a}", "windows": "{p}-(?:rocm-" + _V + "|hip-radeon)-{a}"},
    # The Apple Silicon build has Metal built in; Intel Macs' build has none.
    "metal": {"darwin": "{p}-arm64"},
}


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".")) if text else ()


def offered(host: Host, release: Release) -> dict[str, list[tuple[tuple[int, ...], Asset]]]:
    """The archives of `release` for this OS and architecture, per backend, each with the
    CUDA/ROCm version in its name. A flavor published both as `.tar.gz` and as the older `.zip`
    (the Nov-2025 transition) counts once, as `.tar.gz`."""
    platform = _PLATFORM.get(host.os)
    found: dict[str, list[tuple[tuple[int, ...], Asset]]] = {}
    if platform is None:
        return found
    names = {a.name for a in release.assets}
    for backend, per_os in _FLAVORS.items():
        template = per_os.get(host.os)
        if template is None:
            continue
        flavor = re.compile(template.format(p=platform, a=re.escape(host.arch)))
        for asset in release.assets:
            m = _ARCHIVE.fullmatch(asset.name)
            if not m or not (f := flavor.fullmatch(m["flavor"])):
                continue
            if m["ext"] == "zip" and asset.name[: -len(".zip")] + ".tar.gz" in names:
                continue
            found.setdefault(backend, []).append((_version(f.groupdict().get("v")), asset))
    if host.arch != "arm64":
        found.pop("metal", None)
    return found


def _cuda_build(builds: list[tuple[tuple[int, ...], Asset]], driver: int | None) -> Asset | None:
    """The newest CUDA build the driver can run (a build for CUDA X.y needs a driver for CUDA X);
    with the driver's version unknown, the oldest, which the most drivers run."""
    builds = sorted(builds, key=lambda b: b[0])
    if driver is None:
        return builds[0][1]
    fitting = [asset for version, asset in builds if version and version[0] <= driver]
    return fitting[-1] if fitting else None


def auto_backend(host: Host, backends: set[str]) -> str:
    """NVIDIA → CUDA where the release has a CUDA build for this OS, else Vulkan; AMD → ROCm when
    its runtime is installed, else Vulkan; Apple Silicon → Metal; anything else → CPU."""
    order = {
        "nvidia": ["cuda", "vulkan"],
        "amd": ["rocm", "vulkan"] if host.rocm else ["vulkan"],
        "apple": ["metal"],
    }.get(host.gpu or "", [])
    return next((b for b in order if b in backends), "cpu")


def pick(host: Host, release: Release, backend: str | None = None) -> Pick:
    """The archive (and CUDA runtime) to install from `release`; `backend` None = choose."""
    builds = offered(host, release)
    cuda = _cuda_build(builds["cuda"], host.cuda) if "cuda" in builds else None
    # Chosen for the user only when the driver answered and runs one: an NVIDIA card without the
    # proprietary driver can still have Vulkan (Mesa's NVK), never CUDA.
    cuda_usable = cuda is not None and host.cuda is not None
    chosen = backend or auto_backend(host, set(builds) - (set() if cuda_usable else {"cuda"}))
    if chosen not in builds:
        listed = ", ".join(sorted(builds)) or "nothing"
        raise LlamagateError(
            500, f"llama.cpp {release.tag_name} has no {chosen} build for {host.os}/{host.arch} "
                 f"(it offers {listed} there); choose another --backend or --version")
    if chosen == "cuda":
        if cuda is None:
            versions = ", ".join(".".join(map(str, v)) for v, _ in builds["cuda"])
            raise LlamagateError(
                500, f"the NVIDIA driver supports CUDA {host.cuda}, llama.cpp {release.tag_name} is "
                     f"built for CUDA {versions}: update the driver or choose --backend vulkan")
        return Pick("cuda", cuda, _cuda_runtime(release, cuda))
    return Pick(chosen, max(builds[chosen], key=lambda b: b[0])[1], None)


def _cuda_runtime(release: Release, archive: Asset) -> Asset | None:
    """The CUDA runtime archive published for the same flavor: Windows names it without the tag
    (`cudart-llama-bin-win-cuda-12.4-x64.zip`, earlier `cudart-llama-bin-win-cu12.4-x64.zip`),
    Linux with it (`cudart-llama-b11160-bin-ubuntu-cuda-12.8-x64.tar.gz`)."""
    m = _ARCHIVE.fullmatch(archive.name)
    assert m is not None
    flavor = m["flavor"]
    short = flavor.replace("-cuda-cu", "-cu")
    candidates = {f"cudart-llama-bin-{f}" for f in (flavor, short)} | {f"cudart-llama-{m['tag']}-bin-{flavor}"}
    for asset in release.assets:
        stem = re.sub(r"\.(tar\.gz|zip)$", "", asset.name)
        if stem in candidates:
            return asset
    return None
