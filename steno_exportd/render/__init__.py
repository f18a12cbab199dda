"""Renderer registry: format name -> Renderer; never imports reportlab, python-docx or openpyxl (nor asyncio or
multiprocessing, which only the daemon's renders and the worker process need: an offline export starts without them).

Each format lives in its own module, imported on first ``get(name)``; PDF and DOCX import
their heavy libraries only when they render, and are run in a worker process by
``render_in_process`` because reportlab holds the GIL.
"""
from __future__ import annotations

import collections
import concurrent.futures
import importlib
import logging
import threading
from typing import Any, Callable, Sequence, TypeVar

from steno_exportd.errors import CancelledJob, NotFoundError, RenderError
from steno_exportd.formats import DOCUMENT_TEMPLATES, FORMATS
from steno_exportd.model import Session
from steno_exportd.render.base import Rendered, Renderer, RenderOptions

__all__ = ["names", "get", "template_names", "RenderOptions", "Renderer", "Rendered", "render_in_process",
           "render_result_in_process", "async_render", "waiting_for_worker", "shutdown"]
T = TypeVar("T")

_MODULES = {"txt": "txt", "md": "md", "html": "html", "json": "json_", "srt": "srt", "vtt": "vtt",
            "csv": "csv_", "xlsx": "xlsx", "pdf": "pdf", "docx": "docx_", "ics": "ics", "audio": "audio"}
_cache: dict[str, Renderer] = {}
log = logging.getLogger(__name__)


def names() -> list[str]:
    """Every format name, in formats.FORMATS order."""
    return list(FORMATS)


def template_names() -> list[str]:
    """Every document template name."""
    return list(DOCUMENT_TEMPLATES)


def get(name: str) -> Renderer:
    """The renderer of a format, or NotFoundError listing the valid names."""
    r = _cache.get(name)
    if r is None:
        if name not in _MODULES:
            raise NotFoundError(f"unknown format {name!r}; valid formats: {', '.join(FORMATS)}")
        r = _cache[name] = importlib.import_module(f"{__name__}.{_MODULES[name]}").RENDERER
    return r


def _work(name: str, what: Session | Sequence[Session], options: RenderOptions | None) -> Rendered:
    r = get(name)
    if isinstance(what, Session):
        return r.render_result(what, options)
    return r.render_merged_result(list(what), options)


_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()   # a pool's life has one owner at a time: create, submit, take out of use, kill


class _Turns:
    """One render in the worker at a time, first come first served: a render waiting its turn is withdrawn by
    leaving the queue, and the worker a cancel kills holds no other caller's render. (Never future.cancel() with
    renders queued in the pool: Python 3.11's executor, its worker killed, sets an exception on that cancelled
    future, its manager thread dies of InvalidStateError and every other render in it waits forever.)"""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[object] = collections.deque()    # the waiting callers' tickets, in order
        self._held = False

    def take(self, stop: Callable[[], bool]) -> None:
        """Wait for the turn after every caller that asked before; CancelledJob when ``stop()`` turns true first
        (looked at every POLL seconds, and at once on wake())."""
        me = object()
        with self._cond:
            self._queue.append(me)
        try:
            while True:
                with self._cond:
                    if not self._held and self._queue[0] is me:
                        self._queue.popleft()
                        self._held = True
                        return
                    self._cond.wait(POLL)
                if stop():              # (the caller's own flag: never looked at under the queue's lock)
                    raise CancelledJob("cancelled")         # withdrawn before it reached the worker
        except BaseException:
            with self._cond:
                self._queue.remove(me)
                self._cond.notify_all()         # it may have been first: the next one goes
            raise

    def give(self) -> None:
        """End the turn: the longest waiting caller takes it."""
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def wake(self) -> None:
        """Every waiting caller looks at its stop at once (the daemon stopping)."""
        with self._cond:
            self._cond.notify_all()


_turns = _Turns()
_stops = 0      # render.shutdown()s so far: a render begun before one is stopped by it, never retried in a new worker
POLL = 0.05     # seconds between looks at a caller's cancel flag while it waits its turn and while the worker renders
STOP_WAIT = 3.0     # seconds a stop waits for the threads that waited for the worker to end


def _worker_init() -> None:
    import signal
    # the daemon stops its worker itself (a job's cancel, shutdown()): systemd's SIGTERM to the whole cgroup
    # or a Ctrl-C to the process group must not kill a render under a job and fail the job
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _submit(name: str, what: Session | Sequence[Session], options: RenderOptions | None
            ) -> tuple[concurrent.futures.ProcessPoolExecutor, concurrent.futures.Future]:
    """A render queued in the worker process: started on first use, again after it was stopped or died while idle
    (a death the render never reached, which does not take its one retry: render_result_in_process)."""
    global _pool
    with _pool_lock:
        idle = _pool
    if idle is not None and (idle._broken or _dead_workers(idle)):
        log.warning("the render worker died while idle: a new one is started")
        _drop(idle, kill=False)
    with _pool_lock:        # the worker is spawned here: a kill (under this lock too) finds it fully started
        if _pool is None:
            # spawn: never a fork of this threaded process, and the worker is our own child (not a fork
            # server's, which systemd's SIGTERM to the cgroup ends first): a stop or cancel can always kill it
            import multiprocessing      # (here: an export of text and recordings never starts a worker)
            ctx = multiprocessing.get_context("spawn")
            _pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_worker_init)
        try:
            return _pool, _pool.submit(_work, name, what, options)
        except concurrent.futures.process.BrokenProcessPool as e:
            # its worker died in the instant since it was looked at: failed like a render it died under (the
            # caller's retry drops the pool)
            failed: concurrent.futures.Future = concurrent.futures.Future()
            failed.set_exception(e)
            return _pool, failed


def _kill_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    # Python 3.14 has ProcessPoolExecutor.kill_workers(); on 3.11 its processes are reached the way that
    # method does. Process.kill() never signals a pid that was already reaped.
    for proc in list((pool._processes or {}).values()):
        proc.kill()


def _dead_workers(pool: concurrent.futures.ProcessPoolExecutor) -> list[multiprocessing.process.BaseProcess]:
    """The pool's workers that ended (the kernel's OOM killer), seen by their sentinels: never reaped here (the
    pool's manager thread reaps them; a second reaper could let a kill signal a reused pid)."""
    from multiprocessing import connection       # (imported with the pool's own module: never at start-up)
    procs = list((pool._processes or {}).values())
    ended = connection.wait([p.sentinel for p in procs], timeout=0) if procs else []
    return [p for p in procs if p.sentinel in ended]


def _drop(pool: concurrent.futures.ProcessPoolExecutor, kill: bool) -> None:
    """Take a pool out of use (the next render starts a new worker), killing its worker if asked.

    Only the caller that takes it out shuts it down: two shutdowns at once close its queues' descriptors twice,
    the second time a descriptor a new worker being spawned had just been given (OSError EBADF there)."""
    global _pool
    with _pool_lock:
        if _pool is not pool:
            return
        _pool = None
        if kill:
            _kill_workers(pool)
        # A worker killed or dead while it wrote a result (a render done just as its cancel came; the OOM killer)
        # leaves the pool's manager thread reading the rest of it, which never comes while this process holds the
        # pipe's write end too: the pool's shutdown then waits for that thread forever, holding the turn (every
        # render hung, the worker left unreaped). Closed here, the read ends (EOF) once the worker is gone, and the
        # pool sees itself broken. Only workers write there: closing it never loses a result.
        if pool._result_queue is not None:
            pool._result_queue._writer.close()
    pool.shutdown(wait=True, cancel_futures=True)


def shutdown() -> None:
    """Stop the worker process, killing a render still running in it (idempotent): the daemon's way out.

    Every render begun before it ends with CancelledJob: the one running (its worker killed) and those waiting their
    turn, none retried in a new worker (which would outlive the stop). A pool left to the interpreter's exit
    handlers prints "Exception ignored ... weakref_cb" there."""
    global _stops, _waiting
    with _pool_lock:
        _stops += 1
        pool = _pool
        waiting, _waiting = _waiting, None
    _turns.wake()                   # the renders waiting their turn see the stop at once
    if pool is not None:
        _drop(pool, kill=True)
    if waiting is not None:         # its callers see the stop within POLL; none is waited for past STOP_WAIT
        stop = threading.Thread(target=waiting.shutdown, kwargs={"cancel_futures": True},
                                name="steno-render-stop", daemon=True)
        stop.start()
        stop.join(STOP_WAIT)


def _wait(pool: concurrent.futures.ProcessPoolExecutor, fut: concurrent.futures.Future,
          cancelled: Callable[[], bool]) -> Rendered:
    """The future's result; when ``cancelled()`` turns true first, CancelledJob within POLL seconds: the
    render is stopped by killing the worker (reportlab cannot be interrupted; it renders nobody else's: _Turns),
    and the next render gets a new worker. A worker that dies under it (the OOM killer), even while it sends the
    result, ends it within POLL seconds too: BrokenProcessPool, the result if it was all sent."""
    while True:
        try:
            return fut.result(timeout=POLL)
        except concurrent.futures.TimeoutError:
            if not cancelled():
                if _dead_workers(pool):
                    _drop(pool, kill=False)     # the pool fails the future (BrokenProcessPool) as it ends
                continue
        # killed even when not started yet: never fut.cancel() (see _Turns); the worker holds no other render
        log.info("cancelled while rendering: stopping the render worker")
        _drop(pool, kill=True)
        raise CancelledJob("cancelled")


def render_result_in_process(name: str, what: Session | Sequence[Session], options: RenderOptions | None = None,
                             cancelled: Callable[[], bool] | None = None) -> Rendered:
    """Render (merged when given a list); heavy formats run in the worker process.

    ``cancelled``: polled while the worker renders; true stops the render (CancelledJob) within 0.05 s."""
    if not get(name).heavy:
        return _work(name, what, options)
    begun = _stops

    def stop() -> bool:         # the caller's cancel, or the daemon stopping since this render began
        return _stops != begun or (cancelled is not None and cancelled())
    _turns.take(stop)
    try:
        for attempt in (1, 2):
            if stop():
                raise CancelledJob("cancelled")
            pool, fut = _submit(name, what, options)
            try:
                return _wait(pool, fut, stop)
            except (concurrent.futures.process.BrokenProcessPool, concurrent.futures.CancelledError) as e:
                # the worker died under it (out of memory): once more with a new one, in the same turn (not behind
                # the renders that asked after it); not when it was stopped
                _drop(pool, kill=False)
                if stop():
                    raise CancelledJob("cancelled") from None
                if attempt == 2:
                    log.error("the render worker died under a %s render, and again under its retry: given up", name)
                    raise RenderError(f"the {name.upper()} renderer stopped unexpectedly (out of memory?); "
                                      "try again") from e
                log.warning("the render worker died under a render: once more in a new one")
    finally:
        _turns.give()
    raise AssertionError("unreachable")


def render_in_process(name: str, what: Session | Sequence[Session], options: RenderOptions | None = None,
                      cancelled: Callable[[], bool] | None = None) -> bytes:
    """Bytes of render_result_in_process."""
    return render_result_in_process(name, what, options, cancelled).data


_waiting: concurrent.futures.ThreadPoolExecutor | None = None
WAITERS = 32    # threads that may wait for the worker at once (beyond: queued, as requests are)


async def waiting_for_worker(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """fn(*args, **kw) in a thread of the callers that wait for the render worker: not one of the loop's default
    threads, which the page's reads, the logins and the jobs' bookkeeping need (a guest asking for eight long PDFs
    at once held them all while the worker rendered them one after the other, and the page stood still)."""
    from steno_exportd.pools import in_pool
    global _waiting
    with _pool_lock:
        if _waiting is None:
            _waiting = concurrent.futures.ThreadPoolExecutor(WAITERS, thread_name_prefix="steno-render-wait")
    return await in_pool(_waiting, fn, *args, **kw)


async def async_render(name: str, what: Session | Sequence[Session], options: RenderOptions | None = None,
                       cancelled: Callable[[], bool] | None = None) -> Rendered:
    """Render without blocking the loop: heavy in the worker process, light in a thread. ``cancelled``: polled
    while the worker renders a heavy one (render_result_in_process); a light one is short and runs to its end."""
    if get(name).heavy:
        return await waiting_for_worker(render_result_in_process, name, what, options, cancelled)
    import asyncio
    return await asyncio.to_thread(_work, name, what, options)
