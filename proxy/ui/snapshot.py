"""What the status page shows, read from the scheduler, the pull registry and the recent requests:
one msgspec Struct sent as JSON over /ui/events and rendered on the first paint."""

from __future__ import annotations

import math
import time

import msgspec

from proxy.activity import Record
from proxy.gateway import Gateway
from supervisor.pull.inflight import PullStatus
from supervisor.runners.runner import Runner, State
from supervisor.runtime.devices import processor


class RunnerView(msgspec.Struct):
    """One runner (a model has two when it serves chat and embeddings)."""

    name: str  # the model's name, as /api/ps shows it and /ui/unload takes it
    kind: str  # "chat" or "embedding"
    state: str  # "loading" or "ready"
    rss: int  # bytes its process holds now, from /proc (not the scheduler's estimate)
    vram: int  # bytes it holds on GPUs, from its load log (or predicted while it loads)
    processor: str  # as `llamagate ps` says it: "100% GPU", "48%/52% CPU/GPU"
    context: int  # num_ctx of each slot
    busy: int  # slots serving a request
    slots: int
    waiting: int  # requests waiting for this runner's turn (a restart, or behind one)
    keep_alive: str  # "forever", "while busy", or "" while `expires_in` counts down
    expires_in: int | None  # whole seconds left
    log: list[str]  # its llama-server's last lines of output


class GpuView(msgspec.Struct):
    """A GPU of the llama-server build in use."""

    name: str  # CUDA0, Vulkan1…
    description: str
    total: int  # bytes
    free: int  # bytes, when last listed (before each load)
    used: int  # bytes our runners hold on it


class Snapshot(msgspec.Struct):
    gpus: list[GpuView]
    runners: list[RunnerView]
    pending: int  # requests queued for a load or a restart, all models together
    pulls: list[PullStatus]
    recent: list[Record]  # the last inference requests that finished, newest first


RECENT = 20  # of the activity ring's records: what fits on a screen


def _view(name: str, runner: Runner, now: float) -> RunnerView:
    spec = runner.spec
    footprint = runner.footprint
    keep_alive, expires_in = "", None
    if runner.keep_alive == math.inf:
        keep_alive = "forever"
    elif runner.expires_at == math.inf:  # busy, or loading: the countdown starts when it is idle
        keep_alive = "while busy"
    else:
        expires_in = max(0, round(runner.expires_at - now))
    return RunnerView(
        name=name,
        kind="embedding" if spec and spec.embedding else "chat",
        state="ready" if runner.state is State.READY else "loading",
        rss=runner.resident_bytes,
        vram=footprint.vram_total if footprint else 0,
        processor=processor(footprint.size, footprint.vram_total) if footprint else "",
        context=spec.num_ctx if spec else 0,
        busy=runner.active,
        slots=spec.parallel if spec else 0,
        waiting=runner.waiting,
        keep_alive=keep_alive,
        expires_in=expires_in,
        log=runner.output(),
    )


def snapshot(gate: Gateway) -> Snapshot:
    now = time.time()
    runners = [_view(model.name.display, r, now) for model, rs in gate.scheduler.loaded() for r in rs]
    gpus = [GpuView(d.name, d.description, d.total, d.free, used) for d, used in gate.scheduler.gpus()]
    return Snapshot(gpus, runners, gate.scheduler.queued(), gate.pulls.list(), gate.activity.records()[-RECENT:][::-1])
