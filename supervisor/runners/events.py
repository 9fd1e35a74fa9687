"""What happens to runners, told to whoever counts it (the proxy's /metrics): loads, failed loads,
evictions, crashes and restarts. An interface only, so that supervisor/ never imports proxy/."""

from __future__ import annotations

from typing import Protocol


class RunnerEvents(Protocol):
    """Each call names the runner's model (`name:tag`) and whether it is its embedding runner."""

    def loaded(self, model: str, embedding: bool, seconds: float) -> None:
        """A process became ready, `seconds` after it was spawned."""

    def load_failed(self, model: str, embedding: bool) -> None:
        """A start failed (exited, stuck, refused), not one its clients abandoned."""

    def evicted(self, model: str, embedding: bool) -> None:
        """Stopped to make room for another model."""

    def crashed(self, model: str, embedding: bool) -> None:
        """A ready process exited (or was killed as hung) without being asked to."""

    def restarted(self, model: str, embedding: bool) -> None:
        """A start that replaces a process: one still running with another spec, or one that
        crashed or failed to start."""


class Unheard:
    """Nobody counts: runners built outside a server (tests, tools)."""

    def loaded(self, model: str, embedding: bool, seconds: float) -> None:
        pass

    def load_failed(self, model: str, embedding: bool) -> None:
        pass

    def evicted(self, model: str, embedding: bool) -> None:
        pass

    def crashed(self, model: str, embedding: bool) -> None:
        pass

    def restarted(self, model: str, embedding: bool) -> None:
        pass
