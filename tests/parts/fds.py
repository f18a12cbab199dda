"""High descriptor numbers: what a daemon with many connections open hands its next sockets."""
from __future__ import annotations

import contextlib
import os
import resource
from typing import Iterator


@contextlib.contextmanager
def above_1024(count: int = 1100) -> Iterator[None]:
    """Hold ``count`` descriptors open (the soft limit raised for them, as the unit's LimitNOFILE is), so that
    every socket opened meanwhile is numbered above 1024, where select() refuses it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    held = []
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        held.append(null)
        while len(held) < count:
            held.append(os.dup(null))
        assert max(held) >= 1024, "the descriptor limit does not reach past 1024"
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
