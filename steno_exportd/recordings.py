"""Recorder files read safely: opened once through the data folder without following a symlink, compared
(fstat) with the file the library checked, then read from that descriptor.

Whoever can write the recorder's data folder may swap a recording for a symlink, or a folder on its path for
one, at any moment. A path check followed by a later ``open(path)`` serves whatever the path names by then;
here every component is opened relative to the previous one with ``O_NOFOLLOW``, so nothing outside the data
folder is ever reached, and the inode opened must be the inode that was checked.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import stat as stat_mod
from pathlib import Path

from steno_exportd.errors import SourceError


class SourceChanged(SourceError):
    """The file is no longer the one that was checked: swapped, removed, a symlink now, or another size."""

    def __init__(self, message: str, session_id: int = 0) -> None:
        super().__init__(message)
        self.session_id = session_id          # whose recording, when the reader knows (0: not known)


@dataclasses.dataclass(frozen=True, slots=True)
class SourceRef:
    """A checked recorder file: where it is, and which file it was (0 / -1: not compared)."""

    path: Path                 # absolute, inside data_dir, as the library resolved it
    data_dir: Path
    dev: int = 0
    ino: int = 0
    size: int = -1
    mtime_ns: int = -1

    def open(self) -> "SourceFile":
        """The file, opened without following symlinks and compared with this reference."""
        return open_source(self)


class SourceFile:
    """An open recorder file: its descriptor and what fstat said when it was opened."""

    def __init__(self, fd: int, st: os.stat_result, ref: SourceRef) -> None:
        self.fd, self.st, self.ref = fd, st, ref

    @property
    def size(self) -> int:
        return self.st.st_size

    def fileno(self) -> int:
        return self.fd

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> "SourceFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:        # a forgotten close must not leak a descriptor per download
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)


def reference(path: Path, data_dir: str | os.PathLike, st: os.stat_result | None = None) -> SourceRef:
    """A SourceRef for a path the library resolved, with the identity of the stat it checked (if any)."""
    if st is None:
        return SourceRef(Path(path), Path(data_dir))
    return SourceRef(Path(path), Path(data_dir), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _components(ref: SourceRef) -> tuple[str, list[str]]:
    """The folder to start from (as configured, or its real path: the library resolves paths) and the names
    below it; a path that is not below it (after '..' is resolved as text) is refused."""
    path = os.path.abspath(ref.path)
    for base in dict.fromkeys((os.path.abspath(ref.data_dir), os.path.realpath(ref.data_dir))):
        rel = os.path.relpath(path, base)
        parts = rel.split(os.sep)
        if rel not in (".", "") and parts[0] != ".." and not any(p in ("", ".", "..") for p in parts):
            return base, parts
    raise SourceChanged(f"{ref.path} is not inside the recorder's data folder {ref.data_dir}")


def open_source(ref: SourceRef) -> SourceFile:
    """Open ref.path walking from the data folder with O_NOFOLLOW; SourceChanged when it is not the checked file."""
    real_dir, parts = _components(ref)
    try:
        dfd = os.open(real_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise SourceError(f"cannot open the recorder's data folder {ref.data_dir}: {e.strerror}") from None
    try:
        for p in parts[:-1]:
            nfd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        # O_NONBLOCK: a FIFO put in place of a recording must not hang the open
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                     dir_fd=dfd)
    except OSError as e:
        raise _changed(ref, e) from None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        why = _differs(ref, st)
        if why:
            raise SourceChanged(f"{ref.path.name} changed since it was checked ({why})")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return SourceFile(fd, st, ref)


def _changed(ref: SourceRef, e: OSError) -> SourceError:
    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return SourceChanged(f"{ref.path.name}: a symlink is in the way (not followed inside the data folder)")
    if e.errno == errno.ENOENT:
        return SourceChanged(f"{ref.path.name} is gone")
    return SourceError(f"cannot read {ref.path.name}: {e.strerror}")


def _differs(ref: SourceRef, st: os.stat_result) -> str:
    if not stat_mod.S_ISREG(st.st_mode):
        return "not a regular file"
    if ref.dev and (st.st_dev, st.st_ino) != (ref.dev, ref.ino):
        return "another file in its place"
    if ref.size >= 0 and st.st_size != ref.size:
        return f"{ref.size} bytes when checked, {st.st_size} now"
    if ref.mtime_ns >= 0 and st.st_mtime_ns != ref.mtime_ns:
        return "modified"
    return ""
