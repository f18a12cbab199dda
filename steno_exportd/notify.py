"""sdnotify: READY=1, STATUS=, RELOADING=1, STOPPING=1 and WATCHDOG=1 to systemd."""
from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Talks to $NOTIFY_SOCKET; every method is a no-op when it is not set."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._addr = env.get("NOTIFY_SOCKET", "")
        if self._addr.startswith("@"):
            self._addr = "\0" + self._addr[1:]
        self._sock: socket.socket | None = None
        if self._addr:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            except OSError as e:
                log.warning("cannot create the notify socket: %s", e)
        self.watchdog_usec = 0
        pid = env.get("WATCHDOG_PID", "")
        if env.get("WATCHDOG_USEC", "").isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_usec = int(env["WATCHDOG_USEC"])
        self._last_status = ""
        # The unit's children must not inherit the notify socket (NotifyAccess=main anyway).
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(key, None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> None:
        """Send one datagram of KEY=value lines, from the event loop: never blocks it for long.

        The receiver's queue is short (net.unix.max_dgram_qlen, 10 by default): when it is full,
        WATCHDOG=1 and STATUS= alone are dropped at once (the next one supersedes them); READY=1,
        RELOADING=1 and STOPPING=1 wait up to a second for room.
        """
        if self._sock is None:
            return
        droppable = all(line.startswith(("WATCHDOG=", "STATUS=")) for line in lines)
        try:
            self._sock.settimeout(0 if droppable else 1.0)
            self._sock.sendto("\n".join(lines).encode(), self._addr)
        except (BlockingIOError, TimeoutError, socket.timeout):
            (log.debug if droppable else log.warning)("sd_notify: the notify socket is full; %s dropped",
                                                      lines[0].split("=", 1)[0])
        except OSError as e:
            log.debug("sd_notify failed: %s", e)

    def ready(self, status: str = "") -> None:
        self._last_status = status
        self.send("READY=1", *([f"STATUS={status}"] if status else []), f"MAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        """Send STATUS= when it changed."""
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    async def watchdog(self) -> None:
        """Ping WATCHDOG=1 from the event loop at half of WATCHDOG_USEC, so a blocked loop is caught."""
        if not self.watchdog_usec or self._sock is None:
            return
        interval = self.watchdog_usec / 2e6
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
