"""GET /metrics: our own registry (proxy/metrics.py), then each ready runner's own metrics
(llama-server's `--metrics`), fetched now and re-exported under their llama.cpp names with
`model` and `runner` labels added, so that llama.cpp dashboards work across models (as Lemonade
does)."""

from __future__ import annotations

import asyncio
import logging

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from proxy.gateway import gate_of
from proxy.llama import http11
from proxy.llama.client import Hop
from supervisor.errors import LlamagateError
from supervisor.runners.runner import Runner, State

log = logging.getLogger("llamagate.metrics")

# A scrape waits this long for a runner; one busy or dying is left out of this scrape.
TIMEOUT = 2.0


async def _fetch(hop: Hop, runner: Runner) -> str | None:
    try:
        return (await hop.get(runner, "/metrics", TIMEOUT)).decode()
    except (http11.HTTPError, TimeoutError, LlamagateError) as e:
        log.debug("[%s] no metrics this time: %s", runner.name, e)
        return None


class _Families:
    """A collector of families already built, for `generate_latest` to write."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


async def _runners(hop: Hop, runners: list[Runner]) -> bytes:
    """The runners' samples in one exposition: a family's HELP and TYPE once, its samples from
    every runner that answered."""
    texts = await asyncio.gather(*(_fetch(hop, r) for r in runners))
    families: dict[str, Metric] = {}
    for runner, text in zip(runners, texts):
        if text is None:
            continue
        labels = {"model": runner.model, "runner": "embedding" if runner.embedding else "completion"}
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError as e:
            log.warning("[%s] unreadable metrics: %s", runner.name, e)
            continue
        for family in parsed:
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            merged.samples += [s._replace(labels={**s.labels, **labels}) for s in family.samples]
    if not families:
        return b""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


@get("/metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(request: Request) -> Response[bytes]:
    gate = gate_of(request)
    ready = [r for r in gate.scheduler.runners() if r.state is State.READY]
    ours = generate_latest(gate.metrics.registry)
    return Response(ours + await _runners(gate.hop, ready), media_type=CONTENT_TYPE_LATEST)
