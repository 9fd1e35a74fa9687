"""Prometheus metrics: what llamagate counts (requests at their end, tokens, runner loads and
crashes) and the scheduler's queue read at scrape time; proxy/scrape.py serves them. Names follow
Ollama's metrics PR (#16998) where it has one (README, Metrics)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from proxy.exchange import Exchange
from supervisor.runners.runner import State
from supervisor.runners.scheduler import Scheduler

# Seconds: from a cached answer's milliseconds to a CPU load's minutes.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _SchedulerGauges:
    """The queue and the loaded models, read from the scheduler when scraped (never stale)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def collect(self) -> list[GaugeMetricFamily]:
        s = self._scheduler
        loaded = {r.model for r in s.runners() if r.state is State.READY}
        return [
            GaugeMetricFamily("ollama_requests_queued", "Number of requests waiting for a model runner.",
                              value=s.queued()),
            GaugeMetricFamily("ollama_queue_capacity",
                              "Maximum number of requests that can be queued (OLLAMA_MAX_QUEUE).",
                              value=s.config.max_queue),
            GaugeMetricFamily("ollama_models_loaded", "Number of models currently loaded in memory.",
                              value=len(loaded)),
            *self._devices(),
        ]

    def _devices(self) -> list[GaugeMetricFamily]:
        """Per GPU of the build in use: its memory as last listed, and what our runners hold on it."""
        labels = ["device", "description"]
        total = GaugeMetricFamily("llamagate_gpu_memory_total_bytes", "A GPU's memory.", labels=labels)
        free = GaugeMetricFamily("llamagate_gpu_memory_free_bytes",
                                 "A GPU's free memory when last listed (before each load).", labels=labels)
        ours = GaugeMetricFamily("llamagate_gpu_memory_used_by_models_bytes",
                                 "What the loaded models hold on a GPU (their load logs' buffers).", labels=labels)
        for d, used in self._scheduler.gpus():
            total.add_metric([d.name, d.description], d.total)
            free.add_metric([d.name, d.description], d.free)
            ours.add_metric([d.name, d.description], used)
        return [total, free, ours]


class Metrics:
    """Our registry (not prometheus_client's global one: each server, and each test, its own)
    and the families counted in it. It hears of runner events (supervisor's RunnerEvents) and of
    finished requests (proxy/exchange.py)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("llamagate_requests", "HTTP requests by route template and status.",
                                ["method", "route", "status"], registry=r)
        self.duration = Histogram("llamagate_request_duration_seconds",
                                  "Time from a request's arrival to the end of its answer.",
                                  ["method", "route"], buckets=_REQUEST_BUCKETS, registry=r)
        self.first_token = Histogram("llamagate_time_to_first_token_seconds",
                                     "Time from a streamed request's arrival to its first answer byte.",
                                     ["route", "model"], buckets=_FIRST_TOKEN_BUCKETS, registry=r)
        self.prompt_tokens = Counter("ollama_prompt_eval", "The number of prompt token evaluated.",
                                     ["model"], registry=r)
        self.generated_tokens = Counter("ollama_eval", "The number of token evaluated.", ["model"], registry=r)
        self.loads = Counter("llamagate_runner_loads", "Runner processes that became ready.", ["model"], registry=r)
        self.load_failures = Counter("llamagate_runner_load_failures", "Runner starts that failed.",
                                     ["model"], registry=r)
        self.evictions = Counter("llamagate_runner_evictions", "Runners stopped to make room for another model.",
                                 ["model"], registry=r)
        self.crashes = Counter("llamagate_runner_crashes", "Ready runners that exited unasked (or hung).",
                               ["model"], registry=r)
        self.restarts = Counter("llamagate_runner_restarts",
                                "Starts replacing a process: another spec, or after a crash or failed start.",
                                ["model"], registry=r)
        self.load_duration = Histogram("llamagate_runner_load_duration_seconds",
                                       "Time from a runner's spawn to its first healthy answer.",
                                       ["model"], buckets=_LOAD_BUCKETS, registry=r)
        self._by_route: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._by_model: dict[str, tuple[Any, Any]] = {}

    def watch(self, scheduler: Scheduler) -> None:
        self.registry.register(_SchedulerGauges(scheduler))

    def finished(self, x: Exchange) -> None:
        route = x.route or "unmatched"  # no route matched (404, 405): one label, not the raw path
        # The labelled children looked up once per label set (a third of the cost of a request's end).
        if (by_route := self._by_route.get((x.method, route, x.status))) is None:
            by_route = self._by_route[(x.method, route, x.status)] = (
                self.requests.labels(x.method, route, str(x.status)), self.duration.labels(x.method, route))
        by_route[0].inc()
        by_route[1].observe(x.seconds)
        if not x.model:
            return
        if (by_model := self._by_model.get(x.model)) is None:
            by_model = self._by_model[x.model] = (
                self.prompt_tokens.labels(x.model), self.generated_tokens.labels(x.model))
        if x.first_byte is not None:  # looked up here: a label set never observed would show as zeros
            self.first_token.labels(route, x.model).observe(x.first_byte - x.started)
        if x.prompt_tokens:
            by_model[0].inc(x.prompt_tokens)
        if x.generated_tokens:
            by_model[1].inc(x.generated_tokens)

    # RunnerEvents -------------------------------------------------------------------------------

    def loaded(self, model: str, embedding: bool, seconds: float) -> None:
        self.loads.labels(model).inc()
        self.load_duration.labels(model).observe(seconds)

    def load_failed(self, model: str, embedding: bool) -> None:
        self.load_failures.labels(model).inc()

    def evicted(self, model: str, embedding: bool) -> None:
        self.evictions.labels(model).inc()

    def crashed(self, model: str, embedding: bool) -> None:
        self.crashes.labels(model).inc()

    def restarted(self, model: str, embedding: bool) -> None:
        self.restarts.labels(model).inc()

