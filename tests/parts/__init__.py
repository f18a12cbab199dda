"""Shared helpers for tests that use real system components.

Each component's fixtures live in their own module (tests/parts/<component>.py) and call
``require()``: with CI=true a missing component FAILS the test, otherwise it skips.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import time
from typing import Callable

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, what: str, how: str = "install with packaging/install-test-deps.sh") -> None:
    """Fail (in CI) or skip (elsewhere) when a real component is missing."""
    if ok:
        return
    msg = f"needs {what} ({how})"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg + " [not CI]")


def require_tool(*names: str) -> None:
    for n in names:
        require(shutil.which(n) is not None or os.path.exists(n), f"the '{n}' command")


def require_root() -> None:
    require(os.geteuid() == 0, "root")


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses): [0] is
    proc(5)'s field 3 (state), [1] the parent's pid, [11:15] the CPU ticks (own and waited-for children's user,
    system), [19] the start in clock ticks since boot. OSError when there is no such process."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def wait_for(cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> object:
    """Bounded poll: return cond()'s first truthy value or fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def until(cond: Callable[[], object], what: str = "condition", timeout: float = 20.0,
                interval: float = 0.05, in_thread: bool = True) -> object:
    """wait_for inside an event loop: cond() runs in a thread (it may block on I/O) unless in_thread=False;
    a coroutine function as cond is awaited on the loop."""
    import asyncio
    import inspect
    deadline = time.monotonic() + timeout
    while True:
        if inspect.iscoroutinefunction(cond):
            value = await cond()
        else:
            value = await asyncio.to_thread(cond) if in_thread else cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def sha256sum_check(folder) -> str:
    """`sha256sum -c --quiet SHA256SUMS` in folder, as a person checks an export: "" when every file
    matches, else what it complained about."""
    import subprocess
    r = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    return "" if r.returncode == 0 else (r.stdout + r.stderr).strip() or f"sha256sum exited with {r.returncode}"


def in_thread(cm):
    """A blocking context manager entered and left in a thread, for async tests (which must not block
    their loop): ``async with in_thread(other_host(name)):``."""
    import asyncio
    import contextlib

    @contextlib.asynccontextmanager
    async def entered():
        value = await asyncio.to_thread(cm.__enter__)
        try:
            yield value
        except BaseException as e:
            if not await asyncio.to_thread(cm.__exit__, type(e), e, e.__traceback__):
                raise
        else:
            await asyncio.to_thread(cm.__exit__, None, None, None)
    return entered()


def stop_process(proc, timeout: float = 10.0) -> None:
    """SIGTERM a child and wait for it; SIGKILL it if it takes longer than ``timeout``."""
    import subprocess
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def nest_folders(top, depth: int) -> None:
    """top/a/a/a/... ``depth`` folders deep (made through folder descriptors: no path grows past PATH_MAX)."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("a", dir_fd=fd)
            nfd = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


class LoopLag:
    """The longest time the event loop was late for a 10 ms tick (what every other caller waited at most)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, loop.time() - t - 0.01)

    def __enter__(self) -> "LoopLag":
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def persons_partial(folder):
    """A person's own folder 'Notes.partial' in ``folder`` (on a stick, a NAS, a store), their file in it."""
    theirs = folder / "Notes.partial"
    theirs.mkdir(parents=True)
    (theirs / "todo.txt").write_text("call the caterer\n")
    return theirs


def runs_leave_theirs_alone(run: Callable[[], list], theirs, caplog, sessions: int) -> None:
    """Two runs of ``run()`` (an export or a push): every session lands in the first and is skipped in the second,
    and the person's folder ``theirs`` (persons_partial) stays as it was, each run saying so in one line."""
    import logging
    for n in (1, 2):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="steno_exportd"):
            res = run()
        assert [(r.ok, r.skipped) for r in res] == [(True, n == 2)] * sessions, [r.error for r in res]
        assert theirs.is_dir() and sorted(os.listdir(theirs)) == ["todo.txt"], "their folder was removed"
        assert (theirs / "todo.txt").read_text() == "call the caterer\n"
        said = [r.getMessage() for r in caplog.records if theirs.name in r.getMessage()]
        assert len(said) == 1 and "left alone" in said[0], said
