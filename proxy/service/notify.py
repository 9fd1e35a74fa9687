"""systemd's notify protocol (sd_notify(3)) without libsystemd: datagrams to NOTIFY_SOCKET saying
ready, reloading, stopping, a status line and watchdog pings. Without a socket it does nothing."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("llamagate.service")


class Notifier:
    """The service manager's ear, if there is one. `watchdog_interval` is how often it wants a
    WATCHDOG=1 (half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises), or None."""

    def __init__(self, address: str = "", watchdog_interval: float | None = None) -> None:
        # "@name" is a socket in the abstract namespace, spelt with a leading NUL.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = watchdog_interval
        self._socket: socket.socket | None = None
        self._status = ""
        if self.address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # A manager that stops reading must never block our event loop: a lost datagram is better.
            self._socket.setblocking(False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Notifier:
        address = env.get("NOTIFY_SOCKET", "")
        interval = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process the watchdog is for: a child that inherited it is not.
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            interval = int(usec) / 2e6
        return cls(address if address.startswith(("/", "@")) else "", interval)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *fields: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError as e:
            log.debug("notify %s: %s", fields[0], e)

    def ready(self) -> None:
        self.send("READY=1")

    def reloading(self) -> None:
        # Since systemd 253 a reload is only believed with the monotonic time it began.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        """STATUS=, sent only when it changed (`systemctl status` shows the latest)."""
        if text != self._status:
            self._status = text
            self.send(f"STATUS={text}")
