"""Ollama's model semantics both dialects use: Modelfile defaults, options → sampling (the
`options` map and `keep_alive` as requests carry them, and how they become llama-server fields),
and `think` → the chat template's thinking switches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec

from proxy.llama import wire
from supervisor.errors import bad_request
from supervisor.models.model import Model

KeepAlive = str | int | float | None
# Ollama's `think`: a bool, or a level ("low", "medium", "high", "max"), checked in
# think_kwargs; /v1's reasoning efforts map onto it.
Think = bool | str | None


# An integer option: Ollama takes any JSON number and truncates it (`num_ctx: 8192.0` is 8192).
Int = int | float | None


def _load_int(low: int, high: int) -> Any:
    """A load-time Int as llama-server's flag takes it. Beyond its bounds llama-server dies while
    loading, and the crash backoff that follows would refuse every other client of the model too."""
    return Annotated[int, msgspec.Meta(ge=low, le=high)] | Annotated[float, msgspec.Meta(ge=low, le=high)] | None


_INT32 = 2**31 - 1
CInt = _load_int(-_INT32, _INT32)  # a C int, as llama-server reads its flags' numbers
Batch = _load_int(1, _INT32)  # a token at least
Threads = _load_int(-_INT32, 512)  # at most ggml's GGML_MAX_N_THREADS


class Options(msgspec.Struct, omit_defaults=True):
    """The `options` map; null means unset. Integer options hold ints once decoded."""

    num_predict: Int = None
    num_keep: Int = None
    seed: Int = None
    temperature: float | None = None
    top_k: Int = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_last_n: Int = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] | None = None
    mirostat: Int = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    # The most tokens a draft model proposes per step (Ollama lists it with the load-time options;
    # llama-server takes it per request).
    draft_num_predict: Int = None
    # Load-time options: they shape the llama-server process.
    num_ctx: CInt = None
    num_batch: Batch = None
    num_gpu: CInt = None
    num_thread: Threads = None
    main_gpu: CInt = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None

    def __post_init__(self) -> None:
        for name in _INT_OPTIONS:
            value = getattr(self, name)
            if isinstance(value, float):
                setattr(self, name, int(value))


_INT_OPTIONS = tuple(name for name, kind in Options.__annotations__.items()
                     if kind in ("Int", "CInt", "Batch", "Threads"))


# Ollama's option defaults, sent explicitly because llama-server's differ (top_p 0.95, min_p 0.05).
DEFAULT_OPTIONS: dict[str, Any] = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "repeat_last_n": 64,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": -1,
    # The tokens a context shift keeps (llama-server keeps none, which loses the template's start).
    "num_keep": 4,
}
SAMPLING_FIELDS = set(wire.Sampling.__struct_fields__)


@dataclass(frozen=True)
class ModelDefaults:
    """What a model's Modelfile layers contribute to a request."""

    system: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    messages: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, model: Model) -> ModelDefaults:
        """SYSTEM, PARAMETER and MESSAGE of the model's Modelfile (none for an `--upstream` one)."""
        return cls(model.system, model.params, tuple((m.role, m.content) for m in model.messages))


def sampling(defaults: ModelDefaults, options: Options | None, num_ctx: int) -> dict[str, Any]:
    """Ollama's defaults ← the model's PARAMETERs ← the request's options, as llama-server fields.

    An unbounded or oversized num_predict is bounded to 10 × num_ctx, as Ollama does, so that a
    runaway generation cannot hold a slot forever.
    """
    merged = dict(DEFAULT_OPTIONS)
    merged.update(defaults.params)
    if options is not None:
        merged.update((k, v) for k, v in msgspec.structs.asdict(options).items() if v is not None)
    out = {k: v for k, v in merged.items() if v is not None and k in SAMPLING_FIELDS}
    num_predict = merged.get("num_predict")
    if num_predict is None or num_predict < 0 or num_predict > 10 * num_ctx:
        num_predict = 10 * num_ctx
    out["n_predict"] = num_predict
    if merged.get("num_keep") is not None:
        out["n_keep"] = merged["num_keep"]
    if merged.get("draft_num_predict") is not None:
        out["speculative_n_max"] = merged["draft_num_predict"]
    return out


_THINK_LEVELS = ("low", "medium", "high", "max")


def think_kwargs(value: Think, name: str, capabilities: list[str]) -> dict[str, Any] | None:
    """`think` as llama-server's chat_template_kwargs: None (the template's default), or
    enable_thinking with a reasoning_effort for levels; asking a model that can't think is a 400,
    turning thinking off never is."""
    if value is None:
        return None
    if isinstance(value, str) and value not in _THINK_LEVELS:
        raise bad_request(f'invalid think value: "{value}" (must be "high", "medium", "low", "max", true, or false)')
    if value is False:
        return {"enable_thinking": False} if "thinking" in capabilities else None
    if "thinking" not in capabilities:
        raise bad_request(f'"{name}" does not support thinking')
    kwargs: dict[str, Any] = {"enable_thinking": True}
    if isinstance(value, str):
        kwargs["reasoning_effort"] = value
    return kwargs
