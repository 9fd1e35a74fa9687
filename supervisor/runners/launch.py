"""What a llama-server is started with: its command line (`LaunchSpec`) and its environment.
Pure code, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from supervisor.runtime.environment import clean_env


@dataclass(frozen=True)
class LaunchSpec:
    """Everything that needs a new process when it changes."""

    binary: Path
    model_path: Path
    num_ctx: int
    threads: int
    parallel: int
    # Ollama's num_gpu and num_batch; None leaves llama-server's own default.
    gpu_layers: int | None = None
    batch: int | None = None
    # llama.cpp RPC workers (`host:port`) to split the model over; empty runs it all here.
    rpc: tuple[str, ...] = ()
    # An embedding runner is its own process (llama-server serves either embeddings or
    # completions); `pooling` is "" to keep the GGUF's own pooling type, "rank" for a reranker's.
    embedding: bool = False
    pooling: str = ""
    projector: Path | None = None  # --mmproj: a vision model's image encoder
    adapters: tuple[Path, ...] = ()  # --lora
    # Ollama's `shift`: a generation that fills the context drops old tokens (all but the
    # request's n_keep) and goes on, instead of stopping. llama-server has it only as a flag, and
    # turns it off itself where the model can't shift (vision, some KV-cache kinds).
    context_shift: bool = False
    # Ollama's main_gpu, use_mmap and use_mlock (None = llama-server's default).
    main_gpu: int | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    # From the model's config table and OLLAMA_FLASH_ATTENTION / OLLAMA_KV_CACHE_TYPE.
    flash_attention: bool | None = None
    cache_type_k: str = ""
    cache_type_v: str = ""
    draft: Path | None = None  # --model-draft: speculative decoding's draft model
    draft_max: int | None = None
    draft_min: int | None = None
    # The table's extra_args, checked against model_tables.EXTRA_ARGS; last, so they win.
    extra_args: tuple[str, ...] = ()
    # The GPU chosen for it alone (`--device`; OLLAMA_SCHED_SPREAD off, several GPUs), or none:
    # all. Chosen by the scheduler as it loads, by free memory at that moment, so not part of
    # what a request asks for: a running process serves requests whatever it chose.
    device: str = field(default="", compare=False)

    @property
    def ctx_total(self) -> int:
        return self.num_ctx * self.parallel

    def args(self) -> list[str]:
        extra = ["--mmproj", str(self.projector)] if self.projector else []
        for adapter in self.adapters:
            extra += ["--lora", str(adapter)]
        # Load options before the embedding flags: an embedding runner's batch size must win.
        return [*self._base_args(), *self._load_args(), *self._embedding_args(), *extra, *self.extra_args]

    def _load_args(self) -> list[str]:
        args = []
        if self.gpu_layers is not None:
            args += ["--n-gpu-layers", str(self.gpu_layers)]
        if self.batch is not None:
            args += ["--batch-size", str(self.batch)]
        if self.rpc:
            args += ["--rpc", ",".join(self.rpc)]
        if self.context_shift:
            args.append("--context-shift")
        if self.main_gpu is not None:
            args += ["--main-gpu", str(self.main_gpu)]
        if self.device:
            args += ["--device", self.device]
        if mode := self._load_mode():
            args += ["--load-mode", mode]
        if self.flash_attention is not None:
            args += ["--flash-attn", "on" if self.flash_attention else "off"]
        if self.cache_type_k:
            args += ["--cache-type-k", self.cache_type_k]
        if self.cache_type_v:
            args += ["--cache-type-v", self.cache_type_v]
        if self.draft:
            args += ["--model-draft", str(self.draft)]
        if self.draft_max is not None:
            args += ["--spec-draft-n-max", str(self.draft_max)]
        if self.draft_min is not None:
            args += ["--spec-draft-n-min", str(self.draft_min)]
        return args

    def _load_mode(self) -> str:
        """use_mmap/use_mlock as llama-server's --load-mode (its --no-mmap and --mlock are gone)."""
        if self.use_mlock:
            return "mlock" if self.use_mmap is False else "mmap+mlock"
        return "none" if self.use_mmap is False else ""

    def _embedding_args(self) -> list[str]:
        if not self.embedding:
            return []
        # A whole input must fit one physical batch: non-causal models can't split it.
        batch = str(self.num_ctx)
        if self.pooling == "rank":  # llama-server's /v1/rerank: embeddings with rank pooling
            return ["--reranking", "--batch-size", batch, "--ubatch-size", batch]
        pooling = ["--pooling", self.pooling] if self.pooling else []
        return ["--embeddings", *pooling, "--batch-size", batch, "--ubatch-size", batch]

    def _base_args(self) -> list[str]:
        return [
            str(self.binary),
            "--model", str(self.model_path),
            "--host", "127.0.0.1",
            # Port 0 and reading the bound port from the log avoids the race of picking a free
            # port ourselves (and llama.cpp's old SO_REUSEPORT double-bind, issue #20963).
            "--port", "0",
            # The KV cache is split over the slots: each slot gets the num_ctx it was asked for.
            "--ctx-size", str(self.ctx_total),
            "--parallel", str(self.parallel),
            "--threads", str(self.threads),
            "--jinja",
            "--no-webui",
            "--offline",
            "--log-colors", "off",
            # Its load's buffer sizes per device and offloaded layers are logged at 4 (debug)
            # only: they are where a runner's memory really went (runners/placement.py).
            "--log-verbosity", "4",
            # Its Prometheus endpoint, re-exported by our /metrics (behind the runner's API key).
            "--metrics",
        ]


def child_env(api_key: str) -> dict[str, str]:
    """A runner's environment: clean, plus its API key, where other users can't read it as they
    can read a command line."""
    return {**clean_env(), "LLAMA_API_KEY": api_key}
