"""Name → one resolved Model: the `--upstream` pools first, then the store, each stored model
read from disk once and kept while one `stat` of its manifest says it is unchanged."""

from __future__ import annotations

import hashlib
import os

from supervisor.errors import LlamagateError, bad_request, not_found
from supervisor.models.model import LocalFiles, Model
from supervisor.models.remote import Pool, Upstreams
from supervisor.models.store import Store, StoredModel
from supervisor.names import ModelName

# What identifies one version of a manifest file: a rewrite is a rename onto it (a new inode).
_Signature = tuple[int, int, int]


def _signature(stat: os.stat_result) -> _Signature:
    return stat.st_mtime_ns, stat.st_ino, stat.st_size


class Catalog:
    def __init__(self, store: Store, upstreams: Upstreams) -> None:
        self.store = store
        self.upstreams = upstreams
        # name (lowercased, as names match) → (manifest path, its signature, store generation, Model)
        self._cache: dict[str, tuple[str, _Signature, int, Model]] = {}

    def get(self, name: ModelName) -> Model | None:
        if pool := self.upstreams.get(name):
            return self._remote(name, pool)
        if model := self._fresh(name):
            return model
        stored = self.store.get(name)
        return self._stored(stored) if stored else None

    def _stored(self, stored: StoredModel) -> Model:
        if stored.config.remote_host:
            return self._hosted(stored)
        return self._local(stored)

    def _fresh(self, name: ModelName) -> Model | None:
        """The cached Model of `name` while its manifest is unchanged; a stale one is dropped."""
        key = name.display.lower()
        if cached := self._cache.get(key):
            path, signature, generation, model = cached
            try:
                if generation == self.store.generation and _signature(os.stat(path)) == signature:
                    return model
            except OSError:
                pass
            self._cache.pop(key, None)  # /api/tags lists in a thread: the loop may drop it too
        return None

    def require(self, text: str) -> Model:
        """Resolve a model name sent by a client: 400 if malformed, 404 if absent."""
        model = self.get(ModelName.parse(text))
        if model is None:
            raise not_found(f"model '{text}' not found")
        return model

    async def resolve(self, text: str) -> Model:
        """`require`, with the GGUF's header read off the event loop (what a request reads first)."""
        model = self.require(text)
        await model.read_info()
        return model

    def list(self) -> list[Model]:
        """Every model as /api/tags lists them: upstream ones first, in the order configured,
        then the store's, newest first."""
        remote = [self._remote(name, pool) for name, pool in self.upstreams.pools.values()]
        local = []
        for stored in self.store.stored():
            try:
                # What is cached is reused: a listing reads only the manifests that changed.
                local.append(self._fresh(stored.name) or self._stored(stored))
            except LlamagateError:
                continue  # no GGUF layer: nothing llama-server could serve
        return remote + local

    def stored(self, name: ModelName) -> StoredModel | None:
        """The store's own entry, for what changes the store (copy, delete, create FROM): a
        name served by `--upstream` has none, and saying so beats a silent 404."""
        if pool := self.upstreams.get(name):
            urls = ", ".join(e.base_url for e in pool.endpoints)
            raise bad_request(f"{name.display} is served by an existing llama-server ({urls}) and has no file here")
        return self.store.get(name)

    def _local(self, stored: StoredModel) -> Model:
        signature = _signature(stored.manifest_path.stat())
        generation = self.store.generation
        model = Model(
            name=stored.name,
            digest=stored.digest,
            modified_at=stored.modified_at,
            size=stored.size,
            details=stored.config,
            target=LocalFiles(stored.model_path, stored.projector_path, stored.adapter_paths, stored.draft_path),
            template=stored.template,
            system=stored.system,
            params=stored.params,
            messages=tuple(stored.messages),
            licenses=tuple(stored.licenses),
        )
        self._cache[stored.name.display.lower()] = (str(stored.manifest_path), signature, generation, model)
        return model

    def _hosted(self, stored: StoredModel) -> Model:
        """A stored model that another Ollama-API server serves: its manifest's texts (template,
        system, parameters) are kept for /api/show, the answers come from there. Not cached: the
        pool's probe fills in its details."""
        pool = self.upstreams.hosted(stored.config)
        return Model(name=stored.name, digest=stored.digest, modified_at=stored.modified_at,
                     size=pool.size or stored.size, details=pool.details() if pool.listed else stored.config,
                     target=pool, template=stored.template, system=stored.system, params=stored.params,
                     messages=tuple(stored.messages), licenses=tuple(stored.licenses))

    def _remote(self, name: ModelName, pool: Pool) -> Model:
        return Model(
            name=name,
            # Stable while the configuration is: the name and its servers.
            digest=hashlib.sha256(" ".join([name.display, *(e.base_url for e in pool.endpoints)]).encode()).hexdigest(),
            modified_at=self.upstreams.started,
            size=pool.size,
            details=pool.details(),
            target=pool,
        )
