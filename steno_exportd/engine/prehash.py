"""Recordings hashed ahead of need: in the background, at idle priority, into the hash cache.

When a session becomes exportable (the library's ``changed_since``, as the search index follows it),
its recording's CRC-32 and SHA-256 are computed by one worker thread at the lowest CPU and I/O
priority and remembered, so the first ZIP (sendfile, checksums up front), the first push and the
first stick export (nothing hashed again, the read-back checks against it) find them ready. The
worker waits while a job or a download runs (it would compete for the same disk and CPU) and starts
a file only after the daemon has been idle for a moment.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from isal.isal_zlib import crc32

from steno_exportd.engine import writer
from steno_exportd.engine.hashcache import HashCache
from steno_exportd.errors import SourceError, StenoError
from steno_exportd.library import ChangeToken, Library
from steno_exportd.pools import in_pool
from steno_exportd.recordings import SourceRef

log = logging.getLogger(__name__)

CHUNK = 1 << 20           # bytes hashed between two looks at the pause switch
IDLE_SECONDS = 2.0        # the daemon idle this long before a recording is started
POLL_SECONDS = 0.2        # how often a running job is looked for while a recording is hashed
IOPRIO_CLASS_IDLE, IOPRIO_CLASS_SHIFT, IOPRIO_WHO_PROCESS = 3, 13, 1
IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "armv7l": 314, "armv6l": 314, "i686": 289}   # syscall numbers


def idle_priority() -> None:
    """Lower the calling thread (only it: Linux priorities are per thread) to nice 19 and the idle I/O class."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    except OSError as e:
        log.debug("nice 19 for the hasher thread: %s", e)
    nr = IOPRIO_SET.get(os.uname().machine)
    if nr is None:
        return
    import ctypes                   # only here: ~5 ms, never at start-up
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(nr, IOPRIO_WHO_PROCESS, tid, IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT) != 0:
        log.debug("idle I/O class for the hasher thread: %s", os.strerror(ctypes.get_errno()))


class Prehasher:
    """Follows the library and hashes each exportable session's recording once; ``pause()`` while serving."""

    def __init__(self, cache_path: str | Path, max_entries: int, busy: Callable[[], bool],
                 idle_seconds: float = IDLE_SECONDS) -> None:
        self.cache_path, self.max_entries = Path(cache_path), max_entries
        self.idle_seconds = idle_seconds
        self.hashed = 0                     # recordings hashed since start (known ones are not counted)
        self.bytes = 0                      # bytes hashed since start
        self.worker_tid = 0                 # the worker thread's id (its priority is lowered)
        self._busy = busy                   # a job queued or running (asked on the event loop)
        self._holds = 0                     # downloads under way (pause())
        self._go = threading.Event()        # set: the worker may hash its next chunk
        self._stopping = threading.Event()
        self._token: ChangeToken | None = None
        self._todo: list[SourceRef] = []
        self._cache: HashCache | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._looker: concurrent.futures.ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._settled: asyncio.Event | None = None
        self._failing = False
        self._last_busy = 0.0               # when a job or a download was last seen (monotonic)

    # -- on the event loop ----------------------------------------------------------------
    async def start(self, library: Callable[[], Library]) -> None:
        """Open the cache and follow the library in the background (a first look right away)."""
        if self._task is not None:
            return
        self._stopping.clear()
        self._last_busy = time.monotonic()  # the daemon starting counts as busy
        self._cache = await asyncio.to_thread(HashCache, self.cache_path, self.max_entries)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="steno-prehash",
                                                           initializer=self._lower)
        # the look at the library at normal priority: it holds the library's lock, which a download or a
        # listing waits for (at idle priority on busy cores it would keep them waiting)
        self._looker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="steno-prehash-look")
        self._wake, self._settled = asyncio.Event(), asyncio.Event()
        self._task = asyncio.create_task(self._follow(library, self._wake), name="prehash")
        self.kick()

    def kick(self) -> None:
        """Look at the library again soon (it may have changed); cheap, never blocks."""
        if self._wake is not None and self._settled is not None:
            self._settled.clear()
            self._wake.set()

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """No hashing while the block runs (a download); the worker stops at its next chunk."""
        self._holds += 1
        self._go.clear()
        try:
            yield
        finally:
            self._holds -= 1
            self._last_busy = time.monotonic()

    async def settled(self, timeout: float | None = None) -> None:
        """Wait until every recording known so far is hashed (or could not be)."""
        if self._settled is None:
            raise RuntimeError("the hasher is not running")
        async with asyncio.timeout(timeout):
            await self._settled.wait()

    async def stop(self) -> None:
        """Stop at the next chunk and close the cache; idempotent."""
        task, self._task = self._task, None
        self._stopping.set()
        self._go.set()                      # a paused worker sees the stop
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                t = asyncio.current_task()
                if t is not None and t.cancelling():
                    raise
        for pool in (self._pool, self._looker):
            if pool is not None:
                await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
        self._pool = self._looker = None
        cache, self._cache = self._cache, None
        if cache is not None:
            await asyncio.to_thread(cache.close)

    def _idle(self) -> bool:
        return self._holds == 0 and not self._busy()

    async def _follow(self, library: Callable[[], Library], wake: asyncio.Event) -> None:
        assert self._settled is not None
        while True:
            await wake.wait()
            wake.clear()
            try:
                # in a pool of the hasher's own (not the loop's): stop() waits for it before it closes the cache
                self._todo += await in_pool(self._looker, self._changed, library())
            except Exception as e:   # noqa: BLE001 - an error boundary: hashing ahead never stops the daemon
                # the recorder DB missing or locked: once at WARNING, then quietly until it works
                (log.debug if self._failing else log.warning)("recordings not hashed ahead: %s", e,
                                                              exc_info=not isinstance(e, (StenoError, sqlite3.Error,
                                                                                          OSError)))
                self._failing = True
                self._todo.clear()
                if not wake.is_set():
                    self._settled.set()
                continue
            self._failing = False
            while self._todo and not wake.is_set():
                await self._wait_idle()
                ref = self._todo.pop(0)
                self._go.set()
                fut = in_pool(self._pool, self._hash, ref)
                while not fut.done():               # pause at the next chunk while a job or a download runs
                    if self._idle():
                        self._go.set()
                    else:
                        self._go.clear()
                        self._last_busy = time.monotonic()
                    await asyncio.wait([fut], timeout=POLL_SECONDS)
                try:
                    fut.result()
                except (StenoError, sqlite3.Error, OSError) as e:
                    log.info("recording of %s not hashed ahead: %s", ref.path.name, e)
                except Exception:   # noqa: BLE001 - an error boundary, as above
                    log.exception("recording of %s not hashed ahead", ref.path.name)
            if self._todo:
                wake.set()                  # kicked meanwhile: look again, then go on with the rest
            elif not wake.is_set():
                self._settled.set()

    async def _wait_idle(self) -> None:
        """Until neither a job nor a download has run for idle_seconds (no wait between two files)."""
        while True:
            now = time.monotonic()
            if not self._idle():
                self._last_busy = now
            elif now - self._last_busy >= self.idle_seconds:
                return
            await asyncio.sleep(POLL_SECONDS)

    # -- in threads -------------------------------------------------------------------------
    def _lower(self) -> None:
        self.worker_tid = threading.get_native_id()
        idle_priority()

    def _changed(self, lib: Library) -> list[SourceRef]:
        """The recordings of sessions added or changed since the last look whose checksums are not known."""
        delta, token = lib.changed_since(self._token)
        out = []
        for s in (*delta.added, *delta.changed):
            if self._stopping.is_set():     # a first look at a big library is long (~2 ms a session)
                return []                   # (the token kept: the next start looks again)
            if not s.exportable:
                continue
            try:
                audio = lib.recording(s.id)
            except StenoError:
                continue                    # removed meanwhile
            if audio is None or audio.path is None:
                continue
            ref = SourceRef(audio.path, lib.data_dir, audio.dev, audio.ino)
            if self._cache is not None and self._cache.get(audio.path) is None:
                out.append(ref)
        self._token = token                 # only once read: a failure looks again next time
        return out

    def _hash(self, ref: SourceRef) -> None:
        """CRC-32 and SHA-256 of one recording into the cache, pausing between chunks when asked."""
        cache = self._cache
        if cache is None:
            return
        try:
            f = ref.open()                  # no symlink followed; the file the library checked
        except SourceError as e:
            log.debug("not hashed ahead: %s", e)
            return
        with f:
            st = f.st
            pinned = SourceRef(ref.path, ref.data_dir, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if cache.get(ref.path, pinned) is not None:
                return
            digest, crc, pos = hashlib.sha256(), 0, 0
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while True:
                self._go.wait()
                if self._stopping.is_set():
                    return
                n = os.preadv(f.fd, [buf], pos)
                if n == 0:
                    break
                writer.vector_state_clean()     # (the CRC-32 of the chunk before: writer.vector_state_clean)
                digest.update(view[:n])     # hashlib and isal drop the GIL on large buffers
                crc = crc32(view[:n], crc)
                pos += n
                self.bytes += n
            now = os.fstat(f.fd)
            if pos != st.st_size or (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                log.debug("%s changed while hashed ahead; left for later", ref.path.name)
                return
            cache.put(ref.path, crc, digest.hexdigest(), source=pinned)
            self.hashed += 1
