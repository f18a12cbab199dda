"""High descriptor numbers: what a daemon with many connections open hands its next sockets."""
from __future__ import annotations

import contextlib
import os
import resource
from typing import Iterator

from tests import parts

ROOM = 256      # descriptors the test opens while the others are held (its sockets, a child's pipes, logs)


@contextlib.contextmanager
def above_1024(count: int = 1100) -> Iterator[None]:
    """Hold ``count`` descriptors open (the soft limit raised for them, as the unit's LimitNOFILE is), so that
    every socket opened meanwhile is numbered above 1024, where select() refuses it. A hard limit too low for that
    fails the test (skips it outside CI), naming the limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = len(os.listdir("/proc/self/fd")) + count + ROOM
    enough = hard == resource.RLIM_INFINITY or hard >= need
    parts.require(enough, f"an open-file limit of at least {need} ({count} descriptors held to number sockets "
                          f"above 1024, {ROOM} for the test, those open now), but RLIMIT_NOFILE is soft {soft}, hard "
                          f"{hard}", how=f"raise the hard limit: ulimit -Hn {need}, or LimitNOFILE= of the service "
                                     f"that runs the tests")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    held = []
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        held.append(null)
        while len(held) < count:
            held.append(os.dup(null))
        assert max(held) >= 1024, f"{count} descriptors held, numbered up to {max(held)} only"
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
