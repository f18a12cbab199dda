"""Write one file: temp name, SHA-256 (and CRC-32) beside the I/O, fsync, rename, read-back verify.

The read-back checks the CRC-32 of what the target returns against the CRC-32 of the very bytes written (hashed
beside their SHA-256, or remembered with it), not a second SHA-256: it guards against faulty media (DESIGN.md: data
on the stick changed after the write, a bit flip, fails the file's read-back), and CRC-32 detects every burst of
damage up to 32 bits and random damage with probability 1 - 2^-32. A hostile stick can return the right bytes at
the read-back whatever the check, so SHA-256 adds nothing there. SHA256SUMS keeps the SHA-256 of the bytes written:
the end-to-end check for whoever receives the stick. On a Pi 4 (no SHA instructions, ~100 MB/s per core) the
read-back's SHA-256 pass was the export's CPU bottleneck; CRC-32 (isal) costs a small fraction of it. Where no CRC-32
is known (a remembered SHA-256 without one) the read-back is hashed by SHA-256 as before.
"""
from __future__ import annotations

import hashlib
import logging
import mmap
import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from isal.isal_zlib import crc32

from steno_exportd.engine.targets import DIRECT_ALIGN, DIRECT_MIN, FdRead, Target, WriteHandle
from steno_exportd.errors import CancelledJob, SourceError, VerifyError
from steno_exportd.recordings import SourceRef

log = logging.getLogger(__name__)

CHUNK = 4 << 20
RING_BYTES = 8 << 20   # read buffers of one copy: reused, no per-chunk allocation; at least RING_MIN of them
RING_MIN = 4
READ_RING = 3      # read-back buffers of CHUNK bytes: one read into while one is hashed, one spare
_END = object()
_SHA512 = hashlib.sha512       # (vector_state_clean(): the module's own, whatever replaces ``hashlib`` in a test)

Tick = Callable[[int], None]          # called with bytes just written


def finish(h: Any) -> None:
    """fsync, rename into place, fsync the folder; the temp file is removed on failure."""
    try:
        h.sync()
        h.commit()
    except BaseException:
        h.abort()
        raise


def finish_and_verify(h: Any, target: Target, rel: str, size: int, sha: str,
                      cancelled: Callable[[], bool] = lambda: False, hashed: bool = True,
                      buffers: Callable[[], Buffers] | None = None, crc: int | None = None) -> None:
    """finish(), then the read-back (by ``crc`` when known: verify()); skipped when the store checked the bytes
    written and those are the file as hashed (checked()). ``buffers``: the running thread's (called there)."""
    finish(h)
    if not checked(h, hashed, crc):
        verify(target, rel, size, sha, cancelled, buffers() if buffers is not None else None, crc=crc)


def checked(h: Any, hashed: bool, crc: int | None) -> bool:
    """Did the store check a committed handle's bytes so that no read-back is needed? Its own check (``verified``:
    a store's hash, or SMB's read-back beside the writes) matched the bytes written, and those are the file as
    hashed: hashed from those same bytes (``hashed``), or, for a remembered hash, the handle's CRC-32 of the whole
    file as written (``written_crc``: WriteHandle) equals the one remembered with it (``crc``)."""
    if not h.verified:
        return False
    return hashed or (crc is not None and h.written_crc == crc)


class Buffers:
    """The read buffers of copies and read-backs, reused from file to file: a fresh 8 MiB buffer costs ~2,000
    page faults (zeroing, unmapping), more than reading into it. One set per exporting thread."""

    def __init__(self) -> None:
        self._ring: list[mmap.mmap] = []
        self._reads: list[mmap.mmap] = []

    def ring(self, size: int) -> list[mmap.mmap]:
        """At least RING_MIN buffers of ``size`` bytes, RING_BYTES in all when they are small. Page-aligned (anonymous
        maps): a local target writes a recording's copy direct (O_DIRECT) from them."""
        if not self._ring or len(self._ring[0]) != size:
            self._ring = [mmap.mmap(-1, size) for _ in range(max(RING_MIN, RING_BYTES // size))]
        return self._ring

    def read(self, i: int) -> mmap.mmap:
        """Read-back buffer ``i`` (< READ_RING) of CHUNK bytes: made when first needed (a small file needs one).
        Page-aligned (an anonymous map): a read-back's reads are direct (O_DIRECT) where the target takes it."""
        while len(self._reads) <= i:
            self._reads.append(mmap.mmap(-1, CHUNK))
        return self._reads[i]


def copy_into(ref: SourceRef, h: WriteHandle, *, tick: Tick = lambda n: None,
              cancelled: Callable[[], bool] = lambda: False, buffers: Buffers | None = None,
              known: str | None = None, known_crc: int | None = None) -> tuple[int, str, int | None, WriteHandle]:
    """Copy the recorder file ``ref`` into an open write handle from its offset; (size, sha256 of the whole file,
    its CRC-32, handle): the CRC-32 is what the read-back checks (verify()); None when the hash is ``known`` without
    ``known_crc`` (the read-back is then hashed by SHA-256). The file is opened through the data folder without
    following a symlink, and must be the one the library checked (SourceRef.open): every byte copied is that file's
    (SourceChanged when it is not).

    A reader thread reads into a small ring of reused buffers of the handle's chunk size, a hasher thread hashes
    them (SHA-256 and CRC-32; hashlib and isal drop the GIL) and this thread writes them, all three at once: no
    per-chunk allocation, hashing beside the reads and the writes. ``known``: the file's SHA-256 remembered from an
    earlier export or the background hasher (not hashed again; the read-back checks the copy by ``known_crc``,
    remembered beside it from the same bytes, or by ``known`` itself when there is none): then there is nothing to
    do beside the writes, and this thread reads and writes (_copy_known). A resumed handle (offset > 0) already
    holds the first bytes: they are only read and hashed (skipped when the hash is known); the hashes are of the
    whole file, as the read-back is. The handle is aborted when anything fails.
    """
    src = ref.path
    try:
        f = ref.open()
    except SourceError:
        h.abort()
        raise
    fd = f.fd
    direct: FdRead | None = None
    try:
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass
        direct = _direct_reader(fd, f.st.st_size, h)
        read = direct.readinto if direct is not None else lambda buf: os.readv(fd, [buf])
        if known is not None:
            size = _copy_known(src, fd, direct.fileno() if direct is not None else fd, read, h, tick, cancelled,
                               buffers)
            wrote_crc(h, known_crc)
            return size, known, known_crc, h
        digest = hashlib.sha256()
        crc = 0

        def each(b: memoryview) -> None:        # in the hasher thread: the chunks in order, one at a time
            nonlocal crc
            vector_state_clean()                # (the CRC-32 of the chunk before, or the thread's creator)
            digest.update(b)
            crc = crc32(b, crc)

        size = h.offset
        with _ReadAhead(read, iter((buffers or Buffers()).ring(h.chunk)),
                        cancelled, each=each, skip=h.offset,
                        failed=lambda e: SourceError(f"cannot read {src}: {e}")) as chunks:
            try:
                if not h.offset:
                    h.from_file(src, fd, f.st)
                for buf, n in chunks:
                    h.write(memoryview(buf)[:n])
                    chunks.done(buf)
                    size += n
                    tick(n)
            except BaseException:
                h.abort()
                raise
        wrote_crc(h, crc)                       # (the hasher has seen the last chunk: its thread has ended)
        return size, digest.hexdigest(), crc, h
    finally:
        if direct is not None:
            direct.close()
        f.close()


def vector_state_clean() -> None:
    """Call before a long SHA-256 in a thread that ran ISA-L's CRC-32, or was started by one that did (a thread is
    born with its creator's vector registers). On x86 ISA-L's CRC-32 uses AVX-512 and leaves the upper halves of
    the vector registers dirty (no VZEROUPPER); OpenSSL's SHA-256 (SHA-NI instructions, SSE-encoded) then runs at
    three quarters of its speed in that thread until something clears them: 1.34 instead of 1.78 GB/s here, a
    third more CPU for the export's SHA-256, its bottleneck under BENCH_PROFILE=pi4 (which throttles the CPU to a Pi
    4's SHA-256 rate measured in a clean thread: the export's hashing ran at 75% of the Pi's rate there). OpenSSL's
    SHA-512 (its AVX2 code ends with VZEROUPPER) of nothing clears them: ~1 us. A no-op in effect elsewhere (a Pi
    has no such state: ARM)."""
    _SHA512(b"").digest()


def wrote_crc(h: Any, crc: int | None) -> None:
    """Give a handle that checks its read-back beside the writes (``checks_crc``: WriteHandle) the CRC-32 of every
    byte written, before its commit: hashed once, here, not again in the handle."""
    if h.checks_crc:
        h.crc = crc


def _direct_reader(fd: int, size: int, h: WriteHandle) -> FdRead | None:
    """The same file opened again direct (O_DIRECT: a descriptor of its own, read as FdRead reads it: from its
    unaligned tail on through the cache, so that a recording written to after its tail was read is not refused,
    EINVAL), or None: read ``fd`` itself. Never direct beside a target that reads the file itself (``reads_source``:
    rclone, through the page cache, at most a few MiB behind these reads): read around the cache, every byte came
    from the disk twice (an SD card), where through it rclone's reads find the pages these reads brought in.

    Direct when the file is large and its pages are not in the page cache (a recording made some time ago): the
    bytes then go from the disk into the copy's buffers, without the kernel copying them out of its cache, which
    on a Pi's CPU took as long as a tenth of the export (about 0.35 CPU-s per GiB). A file still in the cache (a
    recording just made, or read by the background hasher) is read through it: memory is faster than the disk.
    Only from a block boundary with whole-block buffers; anything refused (tmpfs, /proc not there) stays buffered.
    """
    if size < DIRECT_MIN or h.offset % DIRECT_ALIGN or h.chunk % DIRECT_ALIGN or h.reads_source \
            or _cached(fd, size):
        return None
    try:
        rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not os.path.samestat(os.fstat(rfd), os.fstat(fd)):     # never another file than the one checked
            raise OSError("not the same file")
    except OSError:
        os.close(rfd)
        return None
    return FdRead(rfd, direct=True)


def _cached(fd: int, size: int) -> bool:
    """Are the file's first, middle and last pages all in the page cache? (A read that may not wait for the disk,
    RWF_NOWAIT, of one byte at each: refused when the page is not there.)"""
    probe = bytearray(1)
    for at in (0, (size // 2) & ~(DIRECT_ALIGN - 1), (size - 1) & ~(DIRECT_ALIGN - 1)):
        try:
            os.preadv(fd, [probe], at, os.RWF_NOWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True             # cannot tell: through the cache, as before
    return True


class _ReadAhead:
    """A reader thread ("steno-read") filling reused buffers while the caller uses the ones before.

    ``read(buf)`` reads into ``buf`` and returns how many bytes (0 at the end). Buffers come from ``spare``
    while none is free (taken when first needed: a small file needs one) and go back by ``done()``.
    ``each`` sees every chunk, in order, in a thread of its own ("steno-hash", between the reader and the caller:
    hashing beside both the reads and the caller's writes, never in series with either: a direct read waits for the
    disk with no read-ahead, so a reader that also hashed read nothing while it hashed); the first ``skip`` bytes are
    read and seen, not handed over. Iterating yields (buffer, bytes); an error of the reader is raised there (through
    ``failed`` when given), and ``cancelled()`` is looked at before each chunk. Leaving the ``with`` stops the
    threads and waits for them, also on failure."""

    def __init__(self, read: Callable[[Any], int], spare: Iterator[bytearray], cancelled: Callable[[], bool],
                 *, each: Callable[[memoryview], Any] | None = None, skip: int = 0,
                 failed: Callable[[BaseException], BaseException] | None = None) -> None:
        self._read, self._spare, self._cancelled = read, spare, cancelled
        self._each, self._skip, self._failed = each, skip, failed
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._full: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._reader, name="steno-read", daemon=True)
        self._seen: queue.SimpleQueue | None = None      # the reader's chunks on their way to ``each``
        self._hasher: threading.Thread | None = None
        if each is not None:
            self._seen = queue.SimpleQueue()
            self._hasher = threading.Thread(target=self._see, name="steno-hash", daemon=True)

    def __enter__(self) -> _ReadAhead:
        if self._hasher is not None:
            self._hasher.start()
        try:
            self._thread.start()
        except BaseException:
            self._end_hasher()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._free.put(None)
        self._thread.join()
        self._end_hasher()

    def _end_hasher(self) -> None:
        if self._hasher is not None and self._seen is not None:
            self._seen.put(None)            # (after the reader's last chunk: it has ended, or never began)
            self._hasher.join()

    def __iter__(self) -> Iterator[tuple[bytearray, int]]:
        while (item := self._full.get()) is not _END:
            if isinstance(item, BaseException):
                if self._failed is None:
                    raise item
                raise self._failed(item) from item
            if self._cancelled():
                raise CancelledJob("cancelled")
            yield item

    def done(self, buf: bytearray) -> None:
        """Hand ``buf`` back to the reader."""
        self._free.put(buf)

    def _reader(self) -> None:
        free, full, seen, read, skip = self._free, self._full, self._seen, self._read, self._skip
        out = full if seen is None else seen        # through the hasher when there is one
        spare: Iterator[bytearray] | None = self._spare
        try:
            while not self._stop.is_set():
                buf = None
                if spare is not None and free.empty():
                    buf = next(spare, None)
                    if buf is None:
                        spare = None
                if buf is None:
                    buf = free.get()
                    if buf is None:
                        break
                n = read(memoryview(buf)[:min(skip, len(buf))] if skip else buf)
                if not n:
                    break
                if skip:
                    skip -= n
                    if seen is None:
                        free.put(buf)
                    else:
                        seen.put((buf, n, False))   # seen, then back to the free ones: not handed over
                    continue
                if seen is None:
                    full.put((buf, n))
                else:
                    seen.put((buf, n, True))
            out.put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out.put(e)

    def _see(self) -> None:
        """The hasher: ``each`` of every chunk, in the reader's order, then the chunk on to the caller (or, read only
        to be seen, back to the reader); the reader's end or error passed on after the chunks before it."""
        assert self._seen is not None and self._each is not None
        seen, full, free, each = self._seen, self._full, self._free, self._each
        try:
            while (item := seen.get()) is not None:
                if item is _END or isinstance(item, BaseException):
                    full.put(item)
                    continue
                buf, n, handed = item
                if not self._stop.is_set():
                    each(memoryview(buf)[:n])
                if handed:
                    full.put((buf, n))
                else:
                    free.put(buf)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            full.put(e)
            while seen.get() is not None:       # the reader's later chunks: never seen, never handed over
                pass


def _copy_known(src: Path, fd: int, rfd: int, read: Callable[[memoryview], int], h: WriteHandle, tick: Tick,
                cancelled: Callable[[], bool], buffers: Buffers | None) -> int:
    """copy_into() of a file whose hash is known: read and write in this thread, one buffer (nothing to hash
    beside the writes; the kernel reads ahead meanwhile). A reader thread cost ~0.2 CPU-s per GiB more here
    (a hand-off per chunk each way), a third of the copy's own CPU (measured: 0.46 -> 0.67 s per GiB).
    ``read``: reads the next bytes from ``rfd`` (the file as opened, or opened again direct: _direct_reader), ``fd``:
    the file as opened (for the target's from_file)."""
    view = memoryview((buffers or Buffers()).ring(h.chunk)[0])
    size = h.offset
    try:
        if size:
            os.lseek(rfd, size, os.SEEK_SET)
        else:
            h.from_file(src, fd, os.fstat(fd))
        while True:
            if cancelled():
                raise CancelledJob("cancelled")
            try:
                n = read(view)
            except OSError as e:
                raise SourceError(f"cannot read {src}: {e}") from e
            if n == 0:
                return size
            h.write(view[:n])
            size += n
            tick(n)
    except BaseException:
        h.abort()
        raise


def write_bytes(data: bytes, target: Target, rel: str, *, tick: Tick = lambda n: None) -> tuple[int, str, int, bool]:
    """Write ``data`` to ``rel``: (size, sha256, crc32 (for the read-back: verify()), whether the store's own hash
    already verified it)."""
    h = target.open_write(rel)
    crc = crc32(data)
    try:
        view = memoryview(data)
        for i in range(0, len(data), CHUNK):
            h.write(view[i:i + CHUNK])
            tick(min(CHUNK, len(data) - i))
        wrote_crc(h, crc)
        h.sync()
        h.commit()
    except BaseException:
        h.abort()
        raise
    return len(data), hashlib.sha256(data).hexdigest(), crc, h.verified


def read_back(target: Target, rel: str, *, cancelled: Callable[[], bool] = lambda: False,
              buffers: Buffers | None = None, check: str = "sha256") -> tuple[int, str]:
    """Hash the file as the target returns it now: page cache dropped first. (size, hash): the SHA-256 in hex, or
    with ``check="crc32"`` the CRC-32 as 8 hex digits.

    By SHA-256, a reader thread reads into ``buffers``' read-back buffers (reused: no allocation per chunk, whose
    fresh pages cost more than the copy into them) while this thread hashes the one before. By CRC-32 (an export's
    read-back), this thread reads into one of them and checks it, no reader thread: CRC-32 (isal) takes a fraction of
    a read's time (~0.2 ms per 4 MiB here, a few ms on a Pi 4, where a stick's read of 4 MiB takes 100 ms or more),
    so reading beside it gained nothing, and the two hand-offs of each chunk between the threads cost more CPU than
    the CRC-32 itself (bench export, BENCH_PROFILE=pi4: ~0.1 CPU-s per GiB read back)."""
    buffers = buffers or Buffers()
    h = target.open_read(rel, uncached=True)
    try:
        size = 0
        if check == "crc32":            # read and checked in this thread: see the docstring
            crc, buf = 0, buffers.read(0)
            while True:
                if cancelled():
                    raise CancelledJob("cancelled")
                n = h.readinto(buf)
                if not n:
                    return size, f"{crc:08x}"
                crc = crc32(memoryview(buf)[:n], crc)
                size += n
        with _ReadAhead(h.readinto, (buffers.read(i) for i in range(READ_RING)), cancelled) as chunks:
            digest = hashlib.sha256()
            for buf, n in chunks:
                vector_state_clean()            # (this thread's CRC-32 read-backs before it)
                digest.update(memoryview(buf)[:n])
                chunks.done(buf)
                size += n
        return size, digest.hexdigest()
    finally:
        h.close()


def verify(target: Target, rel: str, size: int, sha: str, cancelled: Callable[[], bool] = lambda: False,
           buffers: Buffers | None = None, *, crc: int | None = None) -> None:
    """The read-back of a file just written: VerifyError unless the target returns ``size`` bytes whose CRC-32 is
    ``crc`` (that of the bytes written), or, with no ``crc``, whose SHA-256 is ``sha``. CRC-32, not a second SHA-256
    pass, where it is known: the module's docstring says why that checks as much."""
    if crc is not None:
        got_size, got = read_back(target, rel, cancelled=cancelled, buffers=buffers, check="crc32")
        if got_size != size or got != f"{crc:08x}":
            raise VerifyError(f"{rel}: read back {got_size} bytes crc32 {got}, wrote {size} bytes crc32 {crc:08x}")
        return
    got_size, got = read_back(target, rel, cancelled=cancelled, buffers=buffers)
    if got_size != size or got != sha:
        raise VerifyError(f"{rel}: read back {got_size} bytes sha256 {got[:12]}..., wrote {size} bytes "
                          f"sha256 {sha[:12]}...")
