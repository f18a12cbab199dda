"""Export targets behind one small interface: the Target protocol and the directory target.

Paths given to a target are relative, '/'-separated, never absolute and never containing
'..'. A directory target walks every component with O_NOFOLLOW, so a symlink planted on a
stick is never followed, whatever it points to. Other targets (an SMB share: steno_exportd.smb)
implement the same protocol; engine/registry.py chooses one by the target string.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import secrets
import stat as stat_mod
import threading
import time
from pathlib import Path
from typing import Callable, Container, Iterable, Iterator, Protocol, runtime_checkable

from steno_exportd.errors import InvalidArgument, NameTaken, TargetError, TargetFullError

log = logging.getLogger(__name__)

FAT32_MAX_FILE = 4 * 1024 ** 3 - 1
# A local filesystem's write size (and a copy's read size): 4 MiB. A recording's copy reads and writes direct
# (O_DIRECT), each request pinning its buffer's pages and waking the copy's threads. Measured (ext4, 1 GiB not in
# the page cache, copy + read-back, 4-7 runs of 3 each): under BENCH_PROFILE=pi4 1.30 -> 1.26 CPU-s per GiB (system
# time ~0.18 -> ~0.12), unthrottled copy 1.01 -> 0.99; context switches 10,100 -> 4,400 per 2 GiB. A small gain,
# about the size of the runs' noise.
COPY_CHUNK = 4 << 20
TEMP_PREFIX = ".steno-tmp-"
PARTIAL_SUFFIX = ".partial"              # a session folder being built
MARKER = ".steno-incomplete"             # in a folder being built (in place, or as <folder>.partial)
MAX_ENTRIES = 50_000                     # in one folder: a recorder writes no more (its manifest is read for about 8,800 sessions)
MAX_TREE_DEPTH = 8                       # folders below one remove_tree removes (ours: one, a session's files)


@dataclasses.dataclass(frozen=True, slots=True)
class EntryStat:
    """What lstat says about one entry: never follows a symlink."""

    kind: str          # "file", "dir", "symlink", "other"
    size: int = 0
    mtime: float = 0.0


@runtime_checkable
class WriteHandle(Protocol):
    """A file being written under a temporary name in its destination folder."""

    temp: str                                   # the temporary file's name (in the same folder)
    offset: int                                 # where writing starts: > 0 when a cut write resumes
    chunk: int                                  # the write size this target takes best (copies read this much)
    verified: bool                              # after commit: the store's own hash of the landed file matched
                                                # the bytes written (a cloud store): no read-back needed
    written_crc: int | None                     # once verified, where the store knows it (SMB's read-back beside
                                                # the writes): the CRC-32 of the whole file as written; else None
    checks_crc: bool = False                    # (a handle subclasses WriteHandle to have the default) it reads
                                                # its file back beside the writes and its commit checks that against
                                                # ``crc``, the CRC-32 of every byte the caller wrote (set by the
                                                # caller before the commit: the engine's, hashed beside the copy, so
                                                # the bytes are not hashed twice; None: nothing to check against,
                                                # not ``verified``)

    reads_source: bool = False                  # (a default, as checks_crc) from_file() makes it read that file
                                                # itself through the page cache (rclone): the engine's own reads
                                                # beside it go through the cache too, sharing its pages
                                                # (writer._direct_reader)

    def from_file(self, src: Path, fd: int, st: os.stat_result) -> None: ...
    # every byte written next is the file open as ``fd`` (a regular file the caller opened at src without following
    # a symlink, fstat st; the caller closes it once the writes end): a target that copies a local file better
    # itself (rclone: no stream through this process) may do so from that file (a dup of ``fd``), never from the
    # path, which may name another file by then; write() still gets each byte
    def write(self, data: bytes | memoryview) -> None: ...
    def sync(self) -> None: ...                 # fsync the data
    def commit(self) -> None: ...               # rename to the final name, fsync the folder
    def abort(self) -> None: ...                # remove the temporary file; safe to call twice


@runtime_checkable
class ReadHandle(Protocol):
    def read(self, n: int) -> bytes: ...
    def readinto(self, buf: bytearray) -> int: ...     # the next bytes (at most len(buf)) into buf; 0 at the end
    def close(self) -> None: ...


_UNSTOPPABLE = threading.Lock()     # every target's unstoppable() count (held a moment)


@runtime_checkable
class Target(Protocol):
    """Where an export goes. Every path is relative to the target root."""

    name: str                                    # what a person recognises: a path, "smb:office"
    max_file_size: int | None                    # per-file limit (FAT32), None when unlimited
    atomic_dir_rename: bool                      # False: session folders are built in place (marker file)
    resume_min: int | None                       # files this big are written resumably; None: never
    save_every: float                            # seconds a session built in place may wait for the manifest
                                                 # save that records it (0: saved after every session)
    checks: int                                  # files committed and read back at once, and as many sessions in
                                                 # flight beside the one written (1: one after the other)
    # optional, with a default here (a target subclasses Target to have it):
    in_flight: int = 0                           # sessions in flight at most (0: ``checks``): more where each
                                                 # request is a round trip away and a session's copy runs on its
                                                 # own (rclone's), so that the next sessions' requests go beside the
                                                 # read-backs of those before; read back ``checks`` at once still
    in_flight_bytes: int = 0                     # and together at most this many bytes (0: no bound), but one
    movers: int = 8                              # folders renamed into place at once after a deferred manifest save
    listers: int = 8                             # folders of sessions already exported listed at once, on a target
                                                 # that takes several requests at once (checks > 1): one round trip
                                                 # each (rclone's own check lists 8 at once)
    marks_partial: bool = False                  # a <folder>.partial is built with our marker (without: the
                                                 # recorder's own record, engine/begun.py, says which it began,
                                                 # keyed by ``place or name``)
    place: str = ""                              # where it writes, however its name spells it (rclone: the
                                                 # store's folder); "": its name
    hash_checked: bool = False                   # a write's commit checks the store's own hash of the landed file
                                                 # (its handle's `verified`): a copy is hashed while sent even when
                                                 # its SHA-256 is remembered, which costs less than the read-back a
                                                 # remembered hash needs
    reads_while_writing: bool = False            # its write handles read a file back beside the writes (SMB): the
                                                 # engine sets it False for a job without verify (no read-back)
    manifests: dict[str, bytes] | None = None    # manifest.json's bytes as this run read or wrote them, by folder,
                                                 # on a store where reading it again is round trips (rclone's):
                                                 # manifest.known(); None: not kept
    manifests_saved: set[str] | None = None      # the folders whose manifest.json this run saved (the push
                                                 # targets, which write the office index after it): manifest.saved()

    def lstat(self, rel: str) -> EntryStat | None: ...          # None when absent
    def exists(self, rel: str) -> bool: ...
    def listdir(self, rel: str) -> list[str]: ...
    def scandir(self, rel: str) -> dict[str, EntryStat]: ...   # one listing with lstat of each entry
    def mkdir(self, rel: str) -> None: ...                       # ok if it is already a directory
    def open_write(self, rel: str, *, resume: str | None = None) -> WriteHandle: ...
    # a temp file beside rel; resume="" makes it resumable (kept when the target drops mid-write),
    # resume=<temp> continues that temp file from the handle's offset (the caller sends the rest)
    def own_temp(self, name: str) -> bool: ...                 # a temp file our writers leave after a crash
    def open_read(self, rel: str, *, uncached: bool = False) -> ReadHandle: ...
    def rename(self, src: str, dst: str) -> None: ...           # dst must not exist
    def remove(self, rel: str) -> None: ...                     # a file (or an empty dir)
    def remove_tree(self, rel: str) -> None: ...                # a folder we own, no symlink follow
    def free_space(self) -> int: ...
    def fsync_dir(self, rel: str) -> None: ...

    # optional, with a default here (a target subclasses Target to have it; called, never probed for):
    def folder_alive(self, rel: str) -> bool:
        """Folder ``rel`` still readable, reading as little of it as the target can (a stick's, the NAS's
        connection); a TargetError or OSError says it is not. Default: its listing."""
        self.listdir(rel)
        return True

    @contextlib.contextmanager
    def held(self, rel: str, wait: bool | float = True) -> Iterator[bool]:
        """Folder ``rel`` held for this run alone against other runs that hold it (an export, a verify recording
        what it found: each rewrites the folder's manifest whole, and one's save between the other's read and save
        lost the other's sessions); ``wait``: True until the other lets go, a number of seconds at most, else
        (False) yields False at once while it holds it. Yields True when held (or when the target cannot hold one:
        then as before). Default: nothing held, True."""
        yield True

    def used_space(self) -> int | None:
        """Bytes in use where it writes: what any reading of its files can total; None where it does not say (a
        store). Default: None."""
        return None

    def known_names(self, rel: str) -> set[str] | None:
        """The names in folder ``rel`` as this run knows them without asking the target (a listing it read, kept
        current by its own changes: a store's, RcloneTarget); None when not known, the caller lists the folder.
        Default: None."""
        return None

    _unstoppable = 0                             # unstoppable() blocks open (the instance's own from the first)

    @contextlib.contextmanager
    def unstoppable(self) -> Iterator[None]:
        """Inside it the job's cancel is not heeded where the target itself heeds it (stoppable()): the run's last
        manifest save, which records the sessions read back before a cancel (stopped, the next push sent them again),
        is written to its end. The engine holds it for that save, a push for what it writes after (the office
        index). What a block covers is the target's: rclone's files opened for writing inside it (uploads begun
        before still stop at the cancel), SMB's look at the cancel while it is open. Default: only the count."""
        with _UNSTOPPABLE:
            self._unstoppable += 1
        try:
            yield
        finally:
            with _UNSTOPPABLE:
                self._unstoppable -= 1

    def stoppable(self) -> bool:
        """No unstoppable() block is open: a target that stops its own work at the job's cancel may do so now."""
        return not self._unstoppable

    def space_ahead(self) -> None:
        """The run will write (a session not on the target yet): a target may begin finding its free space now, for
        the free_space() its first session asks (RcloneTarget: a request of the store, a round trip in a row before
        that session's first byte). Default: nothing."""

    def last_moves(self, root: str, moves: list[tuple[str, str]]) -> None:
        """The run's last manifest save is about to move these folders of ``root`` into place ((src, dst) pairs): a
        target may send what it writes after them meanwhile (RcloneTarget: the office index). Default: nothing."""

    def read_small(self, rel: str, limit: int) -> bytes | None:
        """A small file of ours read whole (at most ``limit`` bytes of it); None when nothing is there, NotAFile when
        something else is (a folder, a FIFO). Default: looked up (lstat), then read; a store overrides it with one
        request (there a look-up first is a round trip more, two for a name not there)."""
        st = self.lstat(rel)
        if st is None:
            return None
        if st.kind != "file":
            raise NotAFile(f"not a file: {rel}")
        h = self.open_read(rel)
        try:
            return bytes(read_upto(h, limit))
        finally:
            h.close()


def read_upto(h: ReadHandle, limit: int) -> bytearray:
    """A file open for reading (``h``) from where it is, to its end or to ``limit`` bytes, whichever comes first:
    read in reads of at most 1 MiB into one buffer (a small file of ours: Target.read_small, manifest.read_file)."""
    data = bytearray()
    while len(data) < limit and (chunk := h.read(min(1 << 20, limit - len(data)))):
        data += chunk
    return data


class NotAFile(TargetError):
    """Target.read_small(): something not a file (a folder, a FIFO) holds the name."""


def check_rel(rel: str) -> list[str]:
    """Split a relative target path into components, refusing anything that escapes the root."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if rel.startswith("/") or any(p == ".." for p in parts) or any("\0" in p for p in parts):
        raise InvalidArgument(f"bad target path {rel!r}")
    return parts


def _kind(mode: int) -> str:
    if stat_mod.S_ISLNK(mode):
        return "symlink"
    if stat_mod.S_ISDIR(mode):
        return "dir"
    if stat_mod.S_ISREG(mode):
        return "file"
    return "other"


def os_error(e: OSError, what: str) -> TargetError:
    """Turn an OSError into the target error a person can act on."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return TargetFullError(f"target full while writing {what}")
    if e.errno == errno.EFBIG:
        return TargetFullError(f"{what}: file too large for this filesystem", kind="too large")
    if e.errno == errno.EROFS:
        return TargetError(f"target is read-only ({what})", kind="read-only")
    # ECONNABORTED: what a FUSE filesystem (exfat-fuse, fusefat) answers once its stick is pulled
    if e.errno in (errno.EIO, errno.ENXIO, errno.ENODEV, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED):
        return TargetError(f"target gone or failing ({what}): {e.strerror}", kind="pulled")
    # (fusefat, the FUSE FAT driver of machines without kernel vfat, answers EPERM to creating any name beyond ASCII,
    # "Réunion café" too: its limit, not the name's, which kernel vfat writes: tests/engine/test_fat_names.py)
    if e.errno in (errno.EACCES, errno.EPERM):
        return TargetError(f"permission denied on the target ({what})", kind="permission")
    if e.errno == errno.ELOOP:
        return TargetError(f"refusing to follow a symlink on the target: {what}")
    return TargetError(f"{what}: {e.strerror or e}")


def filesystem_type(path: str | Path) -> str:
    """The type of the filesystem a path lives on ('ext4', 'fuseblk', 'fuse.vfat', ...)."""
    return _mount_of(path)[0]


def _mount_of(path: str | Path) -> tuple[str, str]:
    """(filesystem type, source device) of the mount a path lives on."""
    real = os.path.realpath(path)
    best, fstype, source = "", "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mnt = left.split()[4].replace("\\040", " ")
                fields = right.split()
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best = mnt
                    fstype = fields[0] if fields else ""
                    source = fields[1] if len(fields) > 1 else ""
    except OSError:
        pass
    return fstype, source


def _limit_for(fstype: str) -> int | None:
    low = fstype.lower()
    if any(k in low for k in ("vfat", "msdos", "fat32", "fusefat")) or low.endswith(":fat"):
        return FAT32_MAX_FILE
    return None


UNMOUNTED = -1      # a DirectoryTarget's filesystem when its mount point had no filesystem of its own: none is it


def _open_dir(root: Path, parts: list[str], dev: int | None = None, ino: int | None = None) -> int:
    """An open folder root/parts..., no symlink followed below root; TargetError a person can act on. ``dev``: the
    filesystem root must still be on (a stick unmounted under an export leaves its mount point, an empty folder
    of the recorder's own disk, in its place); UNMOUNTED: a mount point that was not mounted when it was taken.
    ``ino``: the folder root must still be (DirectoryTarget.pin: not another one put under its name since)."""
    if dev == UNMOUNTED:
        raise TargetError(f"{root} is no longer mounted (the stick was unmounted or pulled): nothing is written "
                          "there", kind="pulled")
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise os_error(e, str(root)) from e
    if dev is not None:
        try:
            st = os.fstat(fd)
        except OSError as e:
            os.close(fd)
            raise os_error(e, str(root)) from e
        if st.st_dev != dev:
            os.close(fd)
            raise TargetError(f"{root} is no longer the filesystem the export began on (the stick was unmounted "
                              "or pulled): nothing more is written there", kind="pulled")
        if ino is not None and st.st_ino != ino:
            os.close(fd)
            raise TargetError(f"{root} is no longer the folder the export checked (moved, or replaced by another "
                              "folder or a symlink): nothing more is written there")
    for i, p in enumerate(parts):
        try:
            nfd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as e:
            os.close(fd)
            what = "/".join(parts[: i + 1])
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise TargetError(f"not a folder (a symlink or a file is in the way): {what}") from e
            raise os_error(e, what) from e
        os.close(fd)
        fd = nfd
    return fd


def dir_alive(path: str | Path, gone: Container[int] | None = None, rel: str = "") -> bool:
    """False when the folder (``rel`` below ``path``, no symlink followed) cannot be read (a pulled stick, a dead
    FUSE helper): reads its first entry only, not all (a stick's author may keep thousands there). With ``gone``,
    only an error of one of those errnos is False (another one, say a denied read, still means the filesystem
    answers)."""
    try:
        fd = _open_dir(Path(path), check_rel(rel))
    except TargetError as e:
        return gone is not None and getattr(e.__cause__, "errno", None) not in gone
    try:
        with os.scandir(fd) as it:
            next(it, None)
        return True
    except OSError as e:
        return gone is not None and e.errno not in gone
    finally:
        os.close(fd)


class _DirWrite(WriteHandle):
    """A temp file in an open directory; renamed into place on commit."""

    def __init__(self, target: "DirectoryTarget", dir_fd: int, final: str, rel: str) -> None:
        self._t, self._dir_fd, self._final, self._rel = target, dir_fd, final, rel
        self.temp = f"{TEMP_PREFIX}{secrets.token_hex(4)}-{final}"[:200]
        self.offset = 0
        self.chunk = COPY_CHUNK
        self.verified = False
        self.written_crc: int | None = None
        self._fd, self._done = -1, True         # (nothing to abort if the open below fails)
        self._direct = False
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self._fd = os.open(self.temp, flags, 0o644, dir_fd=dir_fd)
        except OSError as e:
            os.close(dir_fd)
            self._dir_fd = -1                   # closed: never closed again (its number may be reused by then)
            raise os_error(e, rel) from e
        self._done = False

    def from_file(self, src: Path, fd: int, st: os.stat_result) -> None:
        """A recording's copy: its bytes (coming through write(), from page-aligned buffers: writer.Buffers) are
        written direct (O_DIRECT) where the filesystem takes it. Not through the page cache: on a Pi the copy into
        it costs a core as much as the SHA-256 beside it (measured here: 1.4 CPU-s per GiB, the export's largest
        cost), and gigabytes of an export's dirty pages would crowd out the recorder's own, which is recording."""
        if st.st_size >= DIRECT_MIN and not self.offset and self._t.direct_writes:
            self._direct = _set_direct(self._fd, True)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                if self._direct and len(view) & (DIRECT_ALIGN - 1):
                    self._plain()               # the tail: not a whole block
                try:
                    n = os.write(self._fd, view)
                except OSError as e:
                    if not (self._direct and e.errno == errno.EINVAL):
                        raise
                    self._plain()               # refused at the write (a buffer not aligned, the filesystem)
                    continue
                view = view[n:]
        except OSError as e:
            raise os_error(e, self._rel) from e

    def _plain(self) -> None:
        self._direct = False
        _set_direct(self._fd, False)

    def sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as e:
            raise os_error(e, self._rel) from e

    def commit(self) -> None:
        try:
            os.close(self._fd)
            self._fd = -1
            st = _lstat_at(self._final, self._dir_fd)
            if st is not None and st.kind != "file":
                raise TargetError(f"refusing to replace a {st.kind} on the target: {self._rel}")
            os.rename(self.temp, self._final, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            self._done = True
            os.fsync(self._dir_fd)
        except OSError as e:
            raise os_error(e, self._rel) from e
        finally:
            if not self._done:
                self.abort()
            else:
                self._close_dir()

    def abort(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1
        if not self._done and self._dir_fd >= 0:
            try:
                os.unlink(self.temp, dir_fd=self._dir_fd)
            except OSError:
                pass
        self._done = True
        self._close_dir()

    def _close_dir(self) -> None:
        if self._dir_fd >= 0:
            try:
                os.close(self._dir_fd)
            except OSError:
                pass
            self._dir_fd = -1

    def __del__(self) -> None:  # pragma: no cover - safety net only
        if getattr(self, "_dir_fd", -1) >= 0:
            self.abort()


class FdRead:
    """A file read through its descriptor (closed by close()). ``direct``: O_DIRECT where the filesystem takes it (a
    read-back, a recording not in the page cache: writer._direct_reader): the bytes come from the medium itself (not
    pages the kernel kept or failed to drop) into the caller's buffer with no copy through the page cache, which on a
    Pi's CPU costs as much as a SHA-256 pass (a page-aligned buffer is needed: writer.Buffers). Where a read cannot be
    direct (a buffer not aligned, the file's unaligned tail, a filesystem that refuses it at the read) it goes on as a
    plain read: after the tail, a file written to meanwhile is read on with the bytes it grew by, where a direct read
    at that unaligned offset is refused (EINVAL). (A read-back's cached pages were dropped before: open_read.)"""

    def __init__(self, fd: int, direct: bool = False) -> None:
        self._fd = fd
        self._direct = direct and _set_direct(fd, True)

    def read(self, n: int) -> bytes:
        self._plain()                       # a bytes object: not aligned
        return os.read(self._fd, n)

    def readinto(self, buf: bytearray | memoryview) -> int:
        if self._direct:
            try:
                n = os.readv(self._fd, [buf])
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self._plain()
            else:
                if n & (DIRECT_ALIGN - 1) == 0:
                    return n
                self._plain()               # the tail: the next offset is not aligned
                return n
        return os.readv(self._fd, [buf])

    def _plain(self) -> None:
        if self._direct:
            self._direct = False
            _set_direct(self._fd, False)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


DIRECT_ALIGN = 4096     # O_DIRECT's alignment of buffers, offsets and sizes: a page covers every block size
DIRECT_MIN = 1 << 20    # a file this large is written direct (_DirWrite.from_file); a smaller one through the cache
DIRECT_WRITE_FS = frozenset({"ext4", "ext3", "ext2", "xfs", "btrfs", "f2fs", "fuseblk"})


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for an open file; False where the filesystem refuses it."""
    import fcntl
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError:
        return False
    return True


def unfinished(name: str, names: Iterable[str], own_temp: Callable[[str], bool], finishing: Container[str]) -> bool:
    """A folder ``name`` (holding ``names``) that an export of ours began and did not finish: it holds our marker,
    or nothing but our temp names (an empty folder, or the marker's write lost with a yanked stick's unflushed
    metadata); a <folder>.partial also when the manifest records <folder> as ``finishing`` (recorded, then cut
    before the rename: its marker is removed before it). Anything else named '<name>.partial' is someone's own
    folder, also one of our finished folders a person renamed so (recorded, but not finishing)."""
    names = list(names)
    return (MARKER in names or all(own_temp(n) for n in names)
            or (name.endswith(PARTIAL_SUFFIX) and name[:-len(PARTIAL_SUFFIX)] in finishing))


class TooManyEntries(TargetError):
    """A listing past MAX_ENTRIES."""


def too_many_entries(rel: str) -> TargetError:
    """What a listing past MAX_ENTRIES says (every target's)."""
    return TooManyEntries(f"{rel or 'the target'} holds more than {MAX_ENTRIES:,} entries: not a folder this recorder "
                       f"writes")


def _names(fd: int, rel: str) -> Iterator[str]:
    """The names in an open folder, one at a time; TargetError past MAX_ENTRIES. A stick's author can put millions
    in a folder: read at once, the names of a million outgrew the daemon's memory."""
    with os.scandir(fd) as it:
        for n, entry in enumerate(it):
            if n >= MAX_ENTRIES:
                raise too_many_entries(rel)
            yield entry.name


def remove_tree(target: Target, rel: str, _depth: int = 0) -> None:
    """A folder we own and everything below it, through the target's lstat, listdir and remove (never following a
    symlink); TargetError past MAX_TREE_DEPTH folders (ours are a folder of files; someone else's may be nested
    without end) or, from listdir, MAX_ENTRIES entries in one folder. Our marker goes last: a removal cut part-way
    (a file a NAS still holds open for a connection it has yet to see drop) leaves a folder that still says it is
    ours, removed by the next run; in the listing's order the marker went first and the runs after took what was
    left for a person's own folder, kept on the NAS for good."""
    st = target.lstat(rel)
    if st is None:
        return
    if st.kind == "dir":
        if _depth >= MAX_TREE_DEPTH:
            raise TargetError(f"{rel} holds folders nested more than {MAX_TREE_DEPTH} deep: not ours")
        for n in sorted(target.listdir(rel), key=lambda n: n == MARKER):
            remove_tree(target, f"{rel}/{n}", _depth + 1)
    target.remove(rel)


def _lstat_at(name: str, dir_fd: int) -> EntryStat | None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return EntryStat(_kind(st.st_mode), st.st_size, st.st_mtime)


def _filesystem(root: Path, mount_point: bool) -> int | None:
    """The st_dev every open of a DirectoryTarget's folder compares with: its folder's; None for a folder still to
    be made (the first open sets it). A mount point is the root of a filesystem of its own: a stick pulled before
    its export opened it leaves its mount point, an empty folder of the recorder's own disk, until udisks removes
    it: UNMOUNTED then (as when the folder is gone), and nothing is written there. (The folder's filesystem is
    taken first, then its parent's: a pull in between is caught at the first open, which compares with it.)"""
    try:
        dev = os.stat(root).st_dev
    except OSError:
        return UNMOUNTED if mount_point else None
    if not mount_point:
        return dev
    try:
        parent = os.stat(root.parent).st_dev
    except FileNotFoundError:
        return UNMOUNTED                        # (its folder gone too: not mounted either)
    except OSError as e:
        raise os_error(e, str(root)) from e
    return UNMOUNTED if dev == parent else dev


def _flock_within(fd: int, seconds: float) -> None:
    """An exclusive flock(2) of ``fd`` taken within ``seconds``, else BlockingIOError."""
    deadline, pause = time.monotonic() + seconds, 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.1)


class DirectoryTarget(Target):
    """A folder on a mounted filesystem (a USB stick, a local export folder). ``mount_point``: a device's folder,
    the root of the device's own filesystem (a stick's mount point): it is opened here, and refused as a pulled
    stick (TargetError of kind 'pulled') when it is not mounted."""

    def __init__(self, root: str | Path, name: str = "", *, mount_point: bool = False) -> None:
        self.root = Path(root)
        self.name = name or str(root)
        self.fs_type, self._source = _mount_of(self.root)
        # the filesystem it is on: every file goes there or nowhere (each open compares, _open_dir)
        self._dev: int | None = _filesystem(self.root, mount_point)
        self._ino: int | None = None            # the folder itself, once pinned (pin): every open compares
        # A FUSE driver (exfat-fuse, fusefat) reads the block device through the kernel's block
        # cache: dropping the file's pages (which fadvise does, measured with fincore) is not enough.
        self._blockdev = self._source if self.fs_type.startswith("fuseblk") and \
            self._source.startswith("/dev/") else ""
        self.max_file_size = _limit_for(self.fs_type)
        # Kernel vfat (and exFAT before its valid-size work) takes O_DIRECT but writes a new file's bytes through
        # the page cache and waits for each write to reach the stick: no CPU saved, no write-behind. Direct
        # writes only where a file's growth is direct (and fuseblk: exfat-fuse, measured: bench/bench_export.py).
        self.direct_writes = self.fs_type in DIRECT_WRITE_FS
        # fusefat loses a renamed folder's entries (seen here): build session folders in place there
        self.atomic_dir_rename = "vfat" not in self.fs_type and "fusefat" not in self.fs_type
        self.resume_min: int | None = None      # a yanked stick's temp file is not trusted: rewritten whole
        self.save_every = 0.0                   # a stick may be pulled any moment: every session saved at once
        self.checks = 1                         # one device: read-backs side by side would only seek between them
        self.marks_partial = True               # a stick's author may keep a 'Notes.partial' of their own there
        if mount_point:
            os.close(self._open_dir([]))        # a stick pulled before its export opens it: refused now

    # -- walking without following symlinks ---------------------------------------
    def _open_dir(self, parts: list[str]) -> int:
        fd = _open_dir(self.root, parts, self._dev, self._ino)
        if self._dev is None:
            self._dev = os.stat(self.root).st_dev
        return fd

    def pin(self) -> int:
        """Its folder, open as it is now (the caller checks what it is, by this descriptor, and closes it): every
        later open of it must be this same folder, else TargetError (a symlink or another folder put under its name
        since, a stick remounted), so nothing is written into a folder other than the one checked."""
        fd = _open_dir(self.root, [], self._dev, self._ino)
        try:
            st = os.fstat(fd)
        except OSError as e:
            os.close(fd)
            raise os_error(e, str(self.root)) from e
        self._dev, self._ino = st.st_dev, st.st_ino
        return fd

    def _split(self, rel: str) -> tuple[list[str], str]:
        parts = check_rel(rel)
        if not parts:
            raise InvalidArgument("empty target path")
        return parts[:-1], parts[-1]

    def lstat(self, rel: str) -> EntryStat | None:
        parts = check_rel(rel)
        if not parts:
            return EntryStat("dir")
        try:
            fd = self._open_dir(parts[:-1])
        except TargetError:
            return None
        try:
            return _lstat_at(parts[-1], fd)
        except OSError as e:
            raise os_error(e, rel) from e
        finally:
            os.close(fd)

    def exists(self, rel: str) -> bool:
        return self.lstat(rel) is not None

    def listdir(self, rel: str) -> list[str]:
        fd = self._open_dir(check_rel(rel))
        try:
            return sorted(_names(fd, rel))
        except OSError as e:
            raise os_error(e, rel) from e
        finally:
            os.close(fd)

    def folder_alive(self, rel: str, gone: Container[int] | None = None) -> bool:
        """dir_alive of a folder of this target."""
        return dir_alive(self.root, gone, rel)

    def scandir(self, rel: str) -> dict[str, EntryStat]:
        fd = self._open_dir(check_rel(rel))
        try:
            out = {}
            for name in _names(fd, rel):
                st = _lstat_at(name, fd)
                if st is not None:
                    out[name] = st
            return out
        except OSError as e:
            raise os_error(e, rel) from e
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def held(self, rel: str, wait: bool | float = True) -> Iterator[bool]:
        """Target.held(): an exclusive flock(2) of the folder (there already: the caller made it or read in it),
        which other processes' runs on the same folder take too (the daemon's export, `steno-exportd verify`). A
        filesystem that refuses the lock holds nothing (True: as before). A wait in seconds is tried again and again
        (flock(2) itself waits for ever or not at all), 5 ms apart at first, then up to 100 ms."""
        fd = self._open_dir(check_rel(rel))
        try:
            try:
                if wait is True or wait is False:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                else:
                    _flock_within(fd, float(wait))
                got = True
            except BlockingIOError:
                got = False
            except OSError as e:
                log.debug("%s: %s not locked (%s)", self.name, rel, e)
                got = True
            yield got
        finally:
            os.close(fd)            # (the lock with it)

    def mkdir(self, rel: str) -> None:
        parts = check_rel(rel)
        for i in range(len(parts)):
            fd = self._open_dir(parts[:i])
            try:
                os.mkdir(parts[i], 0o755, dir_fd=fd)
                os.fsync(fd)
            except FileExistsError:
                st = _lstat_at(parts[i], fd)
                if st is None or st.kind != "dir":
                    raise TargetError(f"a {st.kind if st else 'entry'} is in the way of folder "
                                      f"{'/'.join(parts[:i + 1])}") from None
            except OSError as e:
                raise os_error(e, "/".join(parts[: i + 1])) from e
            finally:
                os.close(fd)

    def own_temp(self, name: str) -> bool:
        return name.startswith(TEMP_PREFIX)

    def open_write(self, rel: str, *, resume: str | None = None) -> _DirWrite:
        folder, final = self._split(rel)
        fd = self._open_dir(folder)
        return _DirWrite(self, fd, final, rel)

    def open_read(self, rel: str, *, uncached: bool = False) -> FdRead:
        folder, name = self._split(rel)
        dfd = self._open_dir(folder)
        try:
            # O_NONBLOCK: a FIFO under the name (a stick's author may put one anywhere, say as SHA256SUMS) would
            # block the open until a writer came, uncancellable; anything but a file is refused below
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
        except OSError as e:
            raise os_error(e, rel) from e
        finally:
            os.close(dfd)
        try:
            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                raise TargetError(f"not a file: {rel}")
            os.set_blocking(fd, True)
        except OSError as e:
            os.close(fd)
            raise os_error(e, rel) from e
        except BaseException:
            os.close(fd)
            raise
        if uncached:
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            self._drop_block_cache()
        return FdRead(fd, direct=uncached)

    def _drop_block_cache(self) -> None:
        """Best effort: evict the device's cached blocks so a FUSE read-back reaches the medium."""
        if not self._blockdev:
            return
        try:
            bfd = os.open(self._blockdev, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.posix_fadvise(bfd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        finally:
            os.close(bfd)

    def rename(self, src: str, dst: str) -> None:
        sf, sn = self._split(src)
        df, dn = self._split(dst)
        sfd = self._open_dir(sf)
        try:
            dfd = self._open_dir(df)
        except BaseException:
            os.close(sfd)
            raise
        try:
            if _lstat_at(dn, dfd) is not None:
                raise NameTaken(f"refusing to replace existing {dst}")
            os.rename(sn, dn, src_dir_fd=sfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        except OSError as e:
            raise os_error(e, dst) from e
        finally:
            os.close(sfd)
            os.close(dfd)

    def remove(self, rel: str) -> None:
        folder, name = self._split(rel)
        fd = self._open_dir(folder)
        try:
            st = _lstat_at(name, fd)
            if st is None:
                return
            if st.kind == "dir":
                os.rmdir(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)   # unlinks a symlink itself, never its target
        except OSError as e:
            raise os_error(e, rel) from e
        finally:
            os.close(fd)

    def remove_tree(self, rel: str) -> None:
        remove_tree(self, rel)

    def free_space(self) -> int:
        try:
            st = os.statvfs(self.root)
        except OSError as e:
            raise os_error(e, str(self.root)) from e
        return st.f_bavail * st.f_frsize

    def used_space(self) -> int:
        """Bytes in use on the filesystem: what any reading of its files can total (a sparse file or one of many
        hard links aside)."""
        try:
            st = os.statvfs(self.root)
        except OSError as e:
            raise os_error(e, str(self.root)) from e
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def fsync_dir(self, rel: str) -> None:
        fd = self._open_dir(check_rel(rel))
        try:
            os.fsync(fd)
        except OSError as e:
            raise os_error(e, rel) from e
        finally:
            os.close(fd)
