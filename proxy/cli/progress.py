"""`llamagate pull`'s and `push`'s display: one line per step and a bar per layer with size, speed and ETA,
drawn as `ollama pull` draws them; pure text, so the CLI only decides where it goes."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from proxy.ollama.schemas import ProgressResponse

WINDOW = 5.0  # seconds of history behind the speed shown
BAR = 25


def human_bytes(n: float) -> str:
    """Decimal units, as `ollama` shows sizes."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def human_duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass
class Layer:
    digest: str
    total: int
    completed: int = 0
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def record(self, now: float, completed: int) -> None:
        self.completed = completed
        self.samples.append((now, completed))
        while len(self.samples) > 2 and now - self.samples[0][0] > WINDOW:
            self.samples.popleft()

    @property
    def speed(self) -> float:
        """Bytes per second over the last few seconds; 0 until there are two samples."""
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    def render(self, label: str) -> str:
        done = self.total > 0 and self.completed >= self.total
        fraction = self.completed / self.total if self.total else 1.0
        filled = int(fraction * BAR)
        bar = "▕" + "█" * filled + " " * (BAR - filled) + "▏"
        head = f"{label} {int(fraction * 100):3d}% {bar}"
        if done:
            return f"{head} {human_bytes(self.total)}"
        text = f"{head} {human_bytes(self.completed)}/{human_bytes(self.total)}"
        if speed := self.speed:
            text += f"  {human_bytes(speed)}/s  {human_duration((self.total - self.completed) / speed)}"
        return text


class PullDisplay:
    """The state of a pull's (or a push's) display, fed the server's progress objects in order."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, verb: str = "pulling") -> None:
        self.clock = clock
        self.verb = verb
        self.lines: list[str | Layer] = []
        self._layers: dict[str, Layer] = {}

    def update(self, obj: dict) -> None:
        event = msgspec.convert(obj, ProgressResponse)
        if not event.digest:
            if not self.lines or self.lines[-1] != event.status:
                self.lines.append(event.status)
            return
        layer = self._layers.get(event.digest)
        if layer is None:
            layer = self._layers[event.digest] = Layer(event.digest, event.total)
            self.lines.append(layer)
        layer.total = event.total
        layer.record(self.clock(), event.completed)

    def render(self) -> list[str]:
        return [line if isinstance(line, str) else line.render(self.label(line)) for line in self.lines]

    def label(self, layer: Layer) -> str:
        return f"{self.verb} {layer.digest.removeprefix('sha256:')[:12]}..."

    def finished_layers(self) -> list[Layer]:
        return [layer for layer in self._layers.values() if layer.total and layer.completed >= layer.total]
