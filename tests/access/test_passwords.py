"""The password checker: a flood of checks costs two threads' worth of scrypt, the rest are turned away."""
from __future__ import annotations

import asyncio
import threading

from steno_exportd.access.passwords import WAITING, WORKERS, PasswordChecker, hash_password
from steno_exportd.errors import Throttled


async def test_a_flood_of_checks_runs_at_most_two_at_a_time_and_turns_the_rest_away(monkeypatch):
    import steno_exportd.access.passwords as pw
    stored = hash_password("right one")
    checker = PasswordChecker()
    peak, running, lock = [0], [0], threading.Lock()
    real = pw.verify_password

    def counting(p: str, s: str) -> bool:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return real(p, s)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(pw, "verify_password", counting)

    async def one(p: str) -> object:
        try:
            return await checker.verify(p, stored)
        except Throttled:
            return "busy"
    try:
        got = await asyncio.gather(*(one("wrong") for _ in range(100)))
        assert await checker.verify("right one", stored) is True          # the flood over, checks go on
    finally:
        checker.close()
    assert peak[0] <= WORKERS
    assert got.count(False) == WORKERS + WAITING and got.count("busy") == 100 - WORKERS - WAITING, got
    names = [t.name for t in threading.enumerate() if t.name.startswith("steno-scrypt")]
    assert len(names) <= WORKERS
