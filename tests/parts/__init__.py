"""Shared helpers for tests that use real system components.

Each component's fixtures live in their own module (tests/real_<component>.py) and call
``require()``: with CI=true a missing component FAILS the test, otherwise it skips.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Callable

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, what: str) -> None:
    """Fail (in CI) or skip (elsewhere) when a real component is missing."""
    if ok:
        return
    msg = f"needs {what} (install with packaging/install-test-deps.sh)"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg + " [not CI]")


def require_tool(*names: str) -> None:
    for n in names:
        require(shutil.which(n) is not None or os.path.exists(n), f"the '{n}' command")


def require_root() -> None:
    require(os.geteuid() == 0, "root")


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
