"""What ran in the event loop's default executor: the few threads (min(32, cores + 4): 6 on 2 cores, 8 on a Pi 5)
that asyncio.to_thread and run_in_executor(None, ...) share with the page's reads, the login checks and the jobs'
bookkeeping. A caller that waits there for something slow (the render worker, an SMTP server, a whole export, a
long indexing run) leaves them fewer, and the page stands still behind it.

``default_threads`` (a fixture) replaces the test's loop's default executor by a ``Recorder`` of the same size that
notes, for every callable submitted, its name, how long it waited for a thread and how long it ran. A test then
asserts on which callables ran there and for how long (``calls``, ``longest``, ``none_of``), not on how long its
own probe happened to wait on a loaded machine.

Not a guard over the whole suite: opt in per test, with a bound measured generously for that test.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
import os
import threading
import time
from typing import Any, Callable, Iterable

import pytest

# the size asyncio gives the loop's default executor (ThreadPoolExecutor's default)
DEFAULT_THREADS = min(32, (os.cpu_count() or 1) + 4)


# Callables that must never run in the default threads: each waits there for something slow (the render worker,
# a whole export) or works in the background for seconds, holding one of the few threads all the while.
HOLDERS = (
    "steno_exportd.render.render_in_process",               # a render, after the renders queued before it
    "steno_exportd.render.render_result_in_process",
    "steno_exportd.outbox.queue.Outbox._compose_sync",      # a mail's documents (its PDFs: renders)
    "steno_exportd.engine.archive.build_plan",              # a ZIP download's documents
    "steno_exportd.engine.jobs.default_runner",             # a whole export job
    "steno_exportd.search.SearchIndex.update",              # the background indexer (seconds to minutes)
    "steno_exportd.engine.prehash.",                        # the background hasher
)


def callable_name(fn: Callable[..., Any], args: tuple = ()) -> str:
    """module.qualname of what runs, through contextvars' Context.run (to_thread's and the jobs' wrapper) and
    functools.partial."""
    while True:
        if isinstance(getattr(fn, "__self__", None), contextvars.Context) and args:
            fn, args = args[0], args[1:]    # context.run(fn, *args)
        elif isinstance(fn, functools.partial):
            fn, args = fn.func, fn.args
        else:
            break
    module = getattr(fn, "__module__", None) or type(getattr(fn, "__self__", None)).__module__
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{qualname}"


@dataclasses.dataclass
class Call:
    name: str
    asked: float
    began: float | None = None
    ended: float | None = None
    cpu: float = 0.0            # CPU seconds its thread used for it (ran long with little CPU: it waited on something)

    @property
    def waited(self) -> float:
        """Seconds it waited for a thread (so far, when it has not begun)."""
        return (self.began if self.began is not None else time.monotonic()) - self.asked

    @property
    def ran(self) -> float:
        """Seconds it ran (so far, when it has not ended); 0 before it began."""
        if self.began is None:
            return 0.0
        return (self.ended if self.ended is not None else time.monotonic()) - self.began

    def __str__(self) -> str:
        state = "" if self.ended is not None else (" (still running)" if self.began is not None else " (waiting)")
        cpu = f" (CPU {self.cpu:.2f} s)" if self.ended is not None else ""
        return f"{self.name}: waited {self.waited:.2f} s, ran {self.ran:.2f} s{cpu}{state}"


class Recorder(concurrent.futures.ThreadPoolExecutor):
    """A ThreadPoolExecutor that notes every callable submitted (see Call)."""

    def __init__(self, max_workers: int = DEFAULT_THREADS) -> None:
        super().__init__(max_workers, thread_name_prefix="asyncio")
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        call = Call(callable_name(fn, args), time.monotonic())
        with self._lock:
            self.calls.append(call)

        def run() -> Any:
            call.began, cpu = time.monotonic(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                call.cpu = time.thread_time() - cpu
                call.ended = time.monotonic()
        return super().submit(run)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def longest(self, n: int = 5, exclude: Iterable[str] = ()) -> list[Call]:
        """The n calls that ran longest (running ones counted so far), except those named in ``exclude``."""
        skip = set(exclude)
        return sorted((c for c in self.snapshot() if c.name not in skip), key=lambda c: c.ran, reverse=True)[:n]

    def named(self, *fragments: str) -> list[Call]:
        """Calls whose name contains any of ``fragments``."""
        return [c for c in self.snapshot() if any(f in c.name for f in fragments)]

    def holders(self, names: Iterable[str] = HOLDERS) -> list[Call]:
        """Calls of the callables that must never run here (``names``: a full name, or a prefix ending in '.')."""
        names = tuple(names)
        return [c for c in self.snapshot()
                if any(c.name == n or (n.endswith(".") and c.name.startswith(n)) for n in names)]

    def during(self, start: float, end: float) -> list[Call]:
        """Calls that held a thread at some moment between ``start`` and ``end`` (time.monotonic())."""
        return [c for c in self.snapshot() if c.began is not None and c.began < end
                and (c.ended is None or c.ended > start)]

    def report(self, n: int = 8) -> str:
        return "; ".join(map(str, self.longest(n)))


@pytest.fixture
async def default_threads() -> Recorder:
    """The running loop's default executor, replaced by a Recorder of the same size for this test.

    Ask for it before any fixture that starts daemon code (it must be in place before the loop's first
    to_thread). The loop shuts it down when it closes, as it would its own."""
    loop = asyncio.get_running_loop()
    before = getattr(loop, "_default_executor", None)      # (asyncio's own attribute: no public getter)
    recorder = Recorder()
    loop.set_default_executor(recorder)
    if before is not None:
        before.shutdown(wait=False)
    yield recorder
