"""Measure GGUF metadata reading: llamagate's reader (supervisor/gguf.py) against the `gguf`
package's GGUFReader, on a large file this script writes (a 256k-token vocabulary, like
Gemma's or Qwen's, and 2 GB of tensors). Each reader runs in a fresh process, for honest memory.

Usage: python contrib/bench_gguf.py [FILE]   (the file is written once, then reused)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

N_VOCAB = 262_144
N_TENSORS = 400
TENSOR_FLOATS = 1_310_720  # 5 MiB each: 2 GiB in all

PROBE = r"""
import resource, sys, time
path = sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if sys.argv[1] == "llamagate":
    from pathlib import Path
    from supervisor.models.gguf import read_gguf
    info = read_gguf(Path(path))
    arch = info.metadata["general.architecture"]
else:
    import gguf
    r = gguf.GGUFReader(path)
    arch = r.fields["general.architecture"].contents()
elapsed = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{sys.argv[1]:10s} {elapsed * 1000:8.0f} ms  peak RSS {peak / 1024:6.0f} MiB (+{(peak - before) / 1024:.1f} MiB while reading)  ({arch})")
"""


def write(path: Path) -> None:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(131072)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"tok{i}" for i in range(N_VOCAB)])
    w.add_token_types([1] * N_VOCAB)
    w.add_token_scores([0.0] * N_VOCAB)
    w.add_token_merges([f"t{i} k{i}" for i in range(N_VOCAB)])
    w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    data = np.zeros(TENSOR_FLOATS, dtype=np.float32)
    for i in range(N_TENSORS):
        w.add_tensor(f"blk.{i}.weight", data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/llamagate-bench.gguf")
    if not path.exists():
        write(path)
    print(f"{path}: {path.stat().st_size / 2**30:.2f} GiB")
    for reader in ("llamagate", "gguf", "llamagate", "gguf"):
        subprocess.run([sys.executable, "-c", PROBE, reader, str(path)], check=True,
                       cwd=Path(__file__).resolve().parent.parent)


if __name__ == "__main__":
    main()
