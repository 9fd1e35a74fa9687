"""A model name resolved once into one plain value: what routes and both dialects read of a
model (Modelfile defaults, details, capabilities), and its target, where it is served from."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from supervisor.models.capabilities import capabilities
from supervisor.models.gguf import GGUFInfo, cached_info, read_gguf
from supervisor.models.remote import Pool
from supervisor.models.store import Message, ModelConfig
from supervisor.names import ModelName


class Source(Protocol):
    """What a model's target tells of its weights, whether the files are here or a llama-server
    elsewhere serves them: both answer every question, so no reader asks which kind it is."""

    @property
    def location(self) -> str: ...  # what `FROM` names: a GGUF path, or the servers' URLs

    @property
    def projector(self) -> Path | None: ...

    @property
    def adapters(self) -> tuple[Path, ...]: ...

    @property
    def draft(self) -> Path | None: ...

    @property
    def vision(self) -> bool: ...

    def info(self, *, verbose: bool = False) -> GGUFInfo: ...


@dataclass(frozen=True)
class LocalFiles:
    """A model in the store: its GGUF and what llama-server loads beside it."""

    model: Path
    projector: Path | None = None
    adapters: tuple[Path, ...] = ()
    draft: Path | None = None  # --model-draft, unless the model's table names another

    @property
    def location(self) -> str:
        return str(self.model)

    @property
    def vision(self) -> bool:
        return self.projector is not None

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file a runner of the model opens."""
        return (self.model, *(p for p in (self.projector, self.draft) if p), *self.adapters)

    def info(self, *, verbose: bool = False) -> GGUFInfo:
        # Verbose reads every array (the vocabulary) and the tensors: too big to keep, so never cached.
        return read_gguf(self.model, max_array=1 << 62, tensors=True) if verbose else cached_info(self.model)


@dataclass(frozen=True, eq=False)
class Model:
    """A resolved model. Built by the catalog from a manifest (cached, so immutable) or from an
    `--upstream` pool's metadata (built per request: a probe may have just read it)."""

    name: ModelName
    digest: str
    modified_at: datetime
    size: int
    details: ModelConfig
    target: LocalFiles | Pool  # both are a Source
    template: str = ""
    system: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    messages: tuple[Message, ...] = ()
    licenses: tuple[str, ...] = ()

    @cached_property
    def info(self) -> GGUFInfo:
        """The GGUF's metadata, read on first need (/api/tags lists capabilities from it): once
        per resolved model, which the catalog keeps while its manifest is unchanged."""
        return self.target.info()

    async def read_info(self) -> GGUFInfo:
        """`info`, read in a thread the first time: a GGUF's header (a 262k-token vocabulary
        takes 0.2-0.4 s) must not stall every other stream on the event loop."""
        if "info" not in self.__dict__ and isinstance(self.target, LocalFiles):
            await asyncio.to_thread(lambda: self.info)
        return self.info

    @cached_property
    def capabilities(self) -> list[str]:
        return capabilities(self.info, projector=self.target.vision)

    @property
    def context_length(self) -> int:
        """The context the model was trained for; 0 when unknown. The config blob says it
        without opening the GGUF, unless an older Ollama wrote it: then the GGUF's header."""
        return self.details.context_length or self.info.context_length

    @property
    def embedding_length(self) -> int:
        """The width of the model's embeddings (`<arch>.embedding_length`); 0 when unknown."""
        return self.details.embedding_length or self.info.embedding_length
