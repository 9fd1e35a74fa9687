"""A small GGUF header reader: metadata and tensor shapes, never tensor data."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache
from math import prod
from pathlib import Path
from typing import Any, BinaryIO

from supervisor.errors import bad_request

_MAGIC = b"GGUF"
_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9

# llama.cpp's `llama_ftype` values, as `general.file_type` stores them.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
    30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}


# ggml's tensor type names, by the id a GGUF's tensor info stores (`ggml_type`).
TENSOR_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K",
    12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str
    shape: tuple[int, ...]  # ggml's order: ne[0] (a row's length) first


@dataclass(frozen=True)
class SkippedArray:
    """An array too long to keep (a tokenizer vocabulary): its element type and length only."""

    item_type: int
    length: int


@dataclass
class GGUFInfo:
    metadata: dict[str, Any] = field(default_factory=dict)
    parameter_count: int = 0
    tensors: list[TensorInfo] = field(default_factory=list)  # read only when asked for

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def context_length(self) -> int:
        return int(self.metadata.get(f"{self.architecture}.context_length", 0))

    @property
    def embedding_length(self) -> int:
        return int(self.metadata.get(f"{self.architecture}.embedding_length", 0))

    @property
    def file_type(self) -> str:
        return FILE_TYPES.get(self.metadata.get("general.file_type", -1), "")

    @property
    def chat_template(self) -> str:
        return str(self.metadata.get("tokenizer.chat_template", ""))


class _Reader:
    def __init__(self, f: BinaryIO, max_array: int) -> None:
        self.f = f
        self.max_array = max_array

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise EOFError
        return struct.unpack(fmt, data)[0]

    def string(self) -> str:
        length = self.scalar("<Q")
        data = self.f.read(length)
        if len(data) != length:
            raise EOFError
        return data.decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_type, length = self.scalar("<I"), self.scalar("<Q")
            if length > self.max_array:
                self.skip_array(item_type, length)
                return SkippedArray(item_type, length)
            return [self.value(item_type) for _ in range(length)]
        if kind not in _SCALARS:
            raise ValueError(f"unknown GGUF value type {kind}")
        return self.scalar(_SCALARS[kind])

    def skip_array(self, item_type: int, length: int) -> None:
        if item_type in _SCALARS:
            self.f.seek(struct.calcsize(_SCALARS[item_type]) * length, 1)
        elif item_type == _STRING:
            for _ in range(length):
                self.f.seek(self.scalar("<Q"), 1)
        else:
            for _ in range(length):
                self.value(item_type)


def read_gguf(path: Path, *, max_array: int = 64, tensors: bool = False) -> GGUFInfo:
    """Read a GGUF file's metadata; arrays longer than `max_array` are kept as `SkippedArray`;
    with `tensors`, each tensor's name, type and shape too.

    A file that is not GGUF is a 400: it always comes from a user's import.
    """
    try:
        # A big buffer, so that a header is read in few system calls. Each call lets go of
        # the interpreter's lock and takes it straight back, and a waiting thread never forces
        # a switch while the lock keeps changing hands: with the default 8 KiB buffer, a
        # verbose read of a 300k-string vocabulary in a worker thread starved the event loop
        # for up to 0.35 s.
        with open(path, "rb", buffering=1 << 20) as f:
            if f.read(4) != _MAGIC:
                raise ValueError("bad magic")
            r = _Reader(f, max_array)
            version = r.scalar("<I")
            if version < 2:
                raise ValueError(f"GGUF version {version} is too old")
            n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
            info = GGUFInfo()
            for _ in range(n_kv):
                key = r.string()
                info.metadata[key] = r.value(r.scalar("<I"))
            for _ in range(n_tensors):
                name = r.string()
                dims = [r.scalar("<Q") for _ in range(r.scalar("<I"))]
                kind = r.scalar("<I")
                r.scalar("<Q")
                info.parameter_count += prod(dims)
                if tensors:
                    info.tensors.append(TensorInfo(name, TENSOR_TYPES.get(kind, str(kind)), tuple(dims)))
    except (OSError, EOFError, ValueError, struct.error) as e:
        raise bad_request(f"{path.name}: supplied file was not in GGUF format ({e or 'truncated'})") from e
    if isinstance(info.metadata.get("general.parameter_count"), int):
        info.parameter_count = info.metadata["general.parameter_count"]
    return info


# llama.cpp's `llama_pooling_type` values, as `<arch>.pooling_type` stores them.
POOLING_TYPES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


@lru_cache(maxsize=64)
def cached_info(path: Path) -> GGUFInfo:
    """`read_gguf` once per blob: blobs are named by their digest, so they never change."""
    return read_gguf(path)


def pooling(info: GGUFInfo) -> str:
    """The pooling type the GGUF names ("none" when it names none, as chat models don't)."""
    return POOLING_TYPES.get(info.metadata.get(f"{info.architecture}.pooling_type"), "none")


def embedding_pooling(path: Path) -> str:
    """The `--pooling` for an embedding runner: "" when the GGUF names its own (embedding
    models do), "rank" for a reranker (its runner is started with --reranking), else mean
    pooling, since a chat model's default ("none") gives no sentence vector."""
    kind = pooling(cached_info(path))
    return kind if kind == "rank" else "" if kind != "none" else "mean"


def human_number(n: int) -> str:
    """Ollama's parameter-size spelling: 135M → "134.52M", 3.2e9 → "3.2B"."""
    for scale, suffix, decimals in ((1e9, "B", 1), (1e6, "M", 2)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{suffix}" if value == int(value) else f"{value:.{decimals}f}{suffix}"
    if n >= 1e3:
        return f"{n / 1e3:.0f}K"
    return str(n)
