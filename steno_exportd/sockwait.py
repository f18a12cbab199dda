"""Waiting for a socket with poll(), not select(): select() refuses a descriptor numbered 1024 or more ("filedescriptor
out of range in select()"), and the daemon hands those out (LimitNOFILE is far above 1024: many web connections
open, a push's parallel requests), so a push that waited with select() failed at random under load."""
from __future__ import annotations

import select
import socket


def ready(sock: socket.socket, timeout: float, *, write: bool = False) -> bool:
    """The socket can be read (``write``: written) within ``timeout`` seconds, or is closed or failed (the next
    read or write says how)."""
    p = select.poll()
    p.register(sock, select.POLLOUT if write else select.POLLIN)
    return bool(p.poll(max(0.0, timeout) * 1000))
