"""in_pool: a function run in an executor of one's own, the way asyncio.to_thread runs it in the loop's default one."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def in_pool(executor: concurrent.futures.Executor, fn: Callable[..., T], *args: Any, **kw: Any) -> asyncio.Future[T]:
    """fn(*args, **kw) in ``executor``, in a copy of the caller's context (its contextvars), as asyncio.to_thread
    does: an asyncio future of its result (await it, or wait on it). Call it on the running loop."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kw)
    return asyncio.get_running_loop().run_in_executor(executor, call)
