"""Write one file: temp name, SHA-256 beside the I/O, fsync, rename, read-back verify."""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from steno_exportd.engine.targets import Target, WriteHandle
from steno_exportd.errors import CancelledJob, SourceError, VerifyError

log = logging.getLogger(__name__)

CHUNK = 4 << 20
RING_BYTES = 8 << 20   # read buffers of one copy: reused, no per-chunk allocation; at least RING_MIN of them
RING_MIN = 4
DEPTH = 4          # chunks in flight: bounds memory to ~(DEPTH + 2) * CHUNK whatever the file size
_END = object()

Tick = Callable[[int], None]          # called with bytes just written


def pipelined_reads(read: Callable[[], bytes], digest: Any = None, depth: int = DEPTH) -> Iterator[bytes]:
    """Chunks read by a thread (and hashed there into ``digest`` when given; hashlib drops the GIL)
    while the caller consumes the previous ones; at most ``depth`` chunks in flight."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                b = read()
                if not b:
                    break
                if digest is not None:
                    digest.update(b)
                q.put(b)
            q.put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    t = threading.Thread(target=reader, name="steno-read", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)


def finish(h: Any) -> None:
    """fsync, rename into place, fsync the folder; the temp file is removed on failure."""
    try:
        h.sync()
        h.commit()
    except BaseException:
        h.abort()
        raise


def finish_and_verify(h: Any, target: Target, rel: str, size: int, sha: str,
                      cancelled: Callable[[], bool] = lambda: False, hashed: bool = True) -> None:
    """finish(), then the read-back; skipped when the store's own hash checked the bytes written and
    ``sha`` was hashed from those same bytes (``hashed``; a remembered hash is checked by a read-back)."""
    finish(h)
    if not (h.verified and hashed):
        verify(target, rel, size, sha, cancelled)


class Buffers:
    """The read buffers of copies, reused from file to file: a fresh 8 MiB buffer costs ~2,000 page
    faults (zeroing, unmapping), more than reading into it. One set per exporting thread."""

    def __init__(self) -> None:
        self._ring: list[bytearray] = []

    def ring(self, size: int) -> list[bytearray]:
        """At least RING_MIN buffers of ``size`` bytes, RING_BYTES in all when they are small."""
        if not self._ring or len(self._ring[0]) != size:
            self._ring = [bytearray(size) for _ in range(max(RING_MIN, RING_BYTES // size))]
        return self._ring


def copy_into(src: Path, h: WriteHandle, *, tick: Tick = lambda n: None,
              cancelled: Callable[[], bool] = lambda: False, buffers: Buffers | None = None,
              known: str | None = None) -> tuple[int, str, WriteHandle]:
    """Copy src into an open write handle from its offset; (size, sha256 of the whole file, handle).

    A reader thread reads into a small ring of reused buffers of the handle's chunk size and hashes
    them (hashlib drops the GIL) while this thread writes: no per-chunk allocation, hashing beside
    the I/O. ``known``: the file's SHA-256 remembered from an earlier export (not hashed again; the
    read-back checks the copy against it). A resumed handle (offset > 0) already holds the first
    bytes: they are only read and hashed (skipped when the hash is known). The handle is aborted
    when anything fails.
    """
    try:
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        h.abort()
        raise SourceError(f"cannot read {src}: {e.strerror}") from e
    try:
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass
        free: queue.Queue = queue.Queue()
        for buf in (buffers or Buffers()).ring(h.chunk):
            free.put(buf)
        full: queue.Queue = queue.Queue()
        digest = None if known else hashlib.sha256()
        stop = threading.Event()

        def reader() -> None:
            skip = h.offset
            try:
                if skip and digest is None:
                    os.lseek(fd, skip, os.SEEK_SET)
                    skip = 0
                while not stop.is_set():
                    buf = free.get()
                    if buf is None:
                        break
                    n = os.readv(fd, [memoryview(buf)[:min(skip, len(buf))] if skip else buf])
                    if n == 0:
                        break
                    if digest is not None:
                        digest.update(memoryview(buf)[:n])
                    if skip:
                        skip -= n
                        free.put(buf)
                        continue
                    full.put((buf, n))
                full.put(_END)
            except BaseException as e:  # noqa: BLE001 - handed to the writer
                full.put(e)

        t = threading.Thread(target=reader, name="steno-read", daemon=True)
        t.start()
        size = h.offset
        try:
            if not h.offset:
                h.from_file(src, os.fstat(fd))
            while True:
                item = full.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise SourceError(f"cannot read {src}: {item}") from item
                if cancelled():
                    raise CancelledJob("cancelled")
                buf, n = item
                h.write(memoryview(buf)[:n])
                free.put(buf)
                size += n
                tick(n)
        except BaseException:
            h.abort()
            raise
        finally:
            stop.set()
            free.put(None)
            t.join()
        return size, known or digest.hexdigest(), h
    finally:
        os.close(fd)


def write_bytes(data: bytes, target: Target, rel: str, *, tick: Tick = lambda n: None) -> tuple[int, str, bool]:
    """Write ``data`` to ``rel``: (size, sha256, whether the store's own hash already verified it)."""
    h = target.open_write(rel)
    try:
        view = memoryview(data)
        for i in range(0, len(data), CHUNK):
            h.write(view[i:i + CHUNK])
            tick(min(CHUNK, len(data) - i))
        h.sync()
        h.commit()
    except BaseException:
        h.abort()
        raise
    return len(data), hashlib.sha256(data).hexdigest(), h.verified


def read_back(target: Target, rel: str, *, cancelled: Callable[[], bool] = lambda: False) -> tuple[int, str]:
    """Hash the file as the target returns it now: page cache dropped first, hashing beside the reads."""
    h = target.open_read(rel, uncached=True)
    try:
        digest = hashlib.sha256()
        size = 0
        for chunk in pipelined_reads(lambda: h.read(CHUNK)):
            if cancelled():
                raise CancelledJob("cancelled")
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()
    finally:
        h.close()


def verify(target: Target, rel: str, size: int, sha: str,
           cancelled: Callable[[], bool] = lambda: False) -> None:
    got_size, got = read_back(target, rel, cancelled=cancelled)
    if got_size != size or got != sha:
        raise VerifyError(f"{rel}: read back {got_size} bytes sha256 {got[:12]}..., wrote {size} bytes "
                          f"sha256 {sha[:12]}...")
