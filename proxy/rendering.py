"""`_debug_render_only`, in both dialects: the prompt a request would run, as llama-server renders it
with the model's template, answered instead of running it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from proxy.llama import wire
from supervisor.errors import bad_request

if TYPE_CHECKING:  # the schemas import DebugInfo: keep the server's parts out of the CLI's imports
    from proxy.llama.lease import Inference
    from supervisor.models.model import Model
    from supervisor.runners.scheduler import LoadOptions

Body = wire.ChatRequest | wire.CompletionRequest | wire.InfillRequest


class DebugInfo(msgspec.Struct, omit_defaults=True):
    """Ollama's `_debug_info`: the rendered prompt, and how many images go with it."""

    rendered_template: str
    image_count: int = 0


async def rendered(
    inference: Inference, model: Model, load: LoadOptions, body: Body, context: list[int] | None = None,
) -> str:
    """The prompt the request would run, as llama-server renders it with the model's template
    (the model is loaded for that, as in Ollama); token ids (a generate `context`) as their text."""
    if isinstance(body, wire.InfillRequest):
        raise bad_request("_debug_render_only does not render fill-in-the-middle (suffix) prompts: llama-server "
                          "builds them from the model's FIM tokens")
    async with inference.lease(model, load) as lease:
        if isinstance(body, wire.ChatRequest):
            request = wire.ApplyTemplateRequest(body.messages, body.chat_template_kwargs, body.tools)
            applied = await lease.post("/apply-template", request, wire.ApplyTemplateResponse)
            parts = [*(context or []), applied.prompt]
        else:
            parts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        text, ids = [], []
        for part in [*parts, ""]:
            if isinstance(part, int):
                ids.append(part)
                continue
            if ids:
                detokenized = await lease.post("/detokenize", wire.DetokenizeRequest(ids), wire.DetokenizeResponse)
                text.append(detokenized.content)
                ids = []
            text.append(part)
        return "".join(text)
