"""Model names in Ollama's grammar: `[host/][namespace/]model[:tag]`, parsed, checked and displayed."""

from __future__ import annotations

import re
from dataclasses import dataclass

from supervisor.errors import bad_request

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL_OR_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = "https"

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """Parse and validate a name, filling in Ollama's defaults; a bad name is a 400."""
        scheme, sep, rest = text.partition("://")
        if not sep:
            scheme, rest = "https", text
        tag = DEFAULT_TAG
        colon, slash = rest.rfind(":"), rest.rfind("/")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
        parts = rest.split("/")
        model = parts.pop()
        namespace = parts.pop() if parts else DEFAULT_NAMESPACE
        host = "/".join(parts) if parts else DEFAULT_HOST
        valid = (
            scheme in ("http", "https")
            and _HOST.fullmatch(host)
            and _NAMESPACE.fullmatch(namespace)
            and _MODEL_OR_TAG.fullmatch(model)
            and _MODEL_OR_TAG.fullmatch(tag)
        )
        if not valid:
            # Quoted to a point: a 10 MB name would come back whole in every answer.
            shown = repr(text) if len(text) <= 200 else repr(text[:200]) + f" (and {len(text) - 200} more characters)"
            raise bad_request(f"invalid model name {shown}: expected [host/][namespace/]model[:tag]")
        return cls(host, namespace, model, tag, scheme)

    @property
    def display(self) -> str:
        """Ollama's shortest form: default host and namespace omitted, tag always shown."""
        prefix = ""
        if self.host.lower() != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def parts(self) -> tuple[str, str, str, str]:
        """The four path components of the manifest under `manifests/`."""
        return (self.host, self.namespace, self.model, self.tag)
