"""The environment every llama-server we start runs in (the smoke test of a new build, a runner)."""

from __future__ import annotations

import os


def clean_env() -> dict[str, str]:
    """Our environment minus llama.cpp's own variables: `LLAMA_ARG_*` set any flag we don't pass,
    `LLAMA_API_KEY` the key, `LLAMA_LOG_*` the log we read the port and error reports from
    (`LLAMA_LOG_VERBOSITY=0` cuts it to a dozen lines, without the model loader's).

    Plus GGML_NO_BACKTRACE: an abort (a failed assert, a lost RPC worker) then exits at once,
    where ggml would first spend seconds attaching gdb for a backtrace (4 s measured here), and
    the abort's own message stays at the end of the log tail that error messages quote."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}, "GGML_NO_BACKTRACE": "1"}
