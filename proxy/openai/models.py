"""OpenAI's /v1/models and /v1/models/{model}, and the lookup every /v1 route starts with: the
request's model (OpenAI's 404 when unknown), its load options and the configured rewrites."""

from __future__ import annotations

import logging
import secrets
from typing import TypeVar

from litestar import Request, Response, get

from proxy.body import decode_body
from proxy.gateway import Gateway, gate_of
from proxy.openai import schemas, translate
from proxy.openai.sse import json_answer
from supervisor.durations import request_keep_alive
from supervisor.errors import LlamagateError, bad_request
from supervisor.models.model import Model
from supervisor.runners.scheduler import LoadOptions

log = logging.getLogger("llamagate.openai")

T = TypeVar("T")


def rewrites_of(gate: Gateway) -> translate.Rewrites:
    c = gate.config
    return translate.Rewrites(c.openai_seed_greedy, c.openai_finish_stop, c.openai_tool_calls_stop)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


async def require_model(gate: Gateway, name: str) -> Model:
    """The model a request names; an unknown one is OpenAI's 404 `model_not_found`."""
    if not name:
        raise bad_request("you must provide a model parameter")
    try:
        return await gate.catalog.resolve(name)
    except LlamagateError as e:
        if e.status == 404:
            raise LlamagateError(404, f"The model '{name}' does not exist", "model_not_found") from None
        raise


async def load_options(gate: Gateway, model: Model, req: schemas._Extensions, embedding: bool = False) -> LoadOptions:
    """The load-time options of the `options`, `num_ctx` and `keep_alive` extensions."""
    keep_alive = request_keep_alive(req.keep_alive)
    o = req.options
    return LoadOptions(
        num_ctx=await gate.num_ctx(model, translate.requested_num_ctx(req)),
        keep_alive=keep_alive,
        num_gpu=o.num_gpu if o else None,
        num_thread=o.num_thread if o else None,
        num_batch=o.num_batch if o else None,
        main_gpu=o.main_gpu if o else None,
        use_mmap=o.use_mmap if o else None,
        use_mlock=o.use_mlock if o else None,
        embedding=embedding,
    )


async def begin(request: Request, type_: type[T]) -> tuple[Gateway, T, Model]:
    req = await decode_body(request, type_)
    gate = gate_of(request)
    model = await require_model(gate, req.model)  # type: ignore[attr-defined]
    if req.user:  # type: ignore[attr-defined]
        log.info("%s for user %r", request.url.path, req.user)  # type: ignore[attr-defined]
    return gate, req, model


def _model_object(model: Model, name: str) -> schemas.Model:
    return schemas.Model(id=name, created=int(model.modified_at.timestamp()), owned_by=model.name.namespace)


@get("/v1/models")
async def list_models(request: Request) -> Response[bytes]:
    return json_answer(schemas.ModelList([_model_object(m, m.name.display) for m in gate_of(request).catalog.list()]))


@get("/v1/models/{model:path}")
async def retrieve_model(request: Request, model: str) -> Response[bytes]:
    """The path may hold slashes (`hf.co/user/repo:tag`); the id is the name as asked."""
    name = model.lstrip("/")
    return json_answer(_model_object(await require_model(gate_of(request), name), name))
