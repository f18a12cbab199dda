"""A recording that is not in the page cache is read from the disk direct: its copy is right, and an export of old
recordings does not fill the recorder's memory with them (nor spend a Pi's CPU copying them out of the cache).
A recording still in the cache (just made) is read through it. Real ext4 in a loop image; `fincore` (util-linux)
tells which of a file's pages the kernel holds."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from steno_exportd.engine import writer
from steno_exportd.engine.targets import DirectoryTarget
from steno_exportd.recordings import SourceRef
from tests.parts.loopfs import loop_fs

SIZE = 3 * (4 << 20) + 12345          # whole chunks and an unaligned tail
PROBED = 64 << 10                     # at most what the look for cached pages brings in (the kernel's read-ahead of
                                      # the page it asked about); a read through the cache holds the whole file


def resident(path: Path) -> int:
    """Bytes of the file the page cache holds."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def _recording(mnt: Path, cached: bool) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    src = mnt / "rec.wav"
    src.write_bytes(data)
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
        if not cached:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert (resident(src) == 0) != cached, resident(src)
    return src, data


class _Resumed:
    """A write handle that already holds the first ``offset`` bytes of its file (as a resumed SMB or rclone
    upload does): copy_into reads and hashes those, and writes the rest."""

    def __init__(self, path: Path, first: bytes) -> None:
        path.write_bytes(first)
        self.offset, self.chunk, self.verified = len(first), 4 << 20, False
        self._f = open(path, "ab")

    def from_file(self, src, fd, st) -> None:
        raise AssertionError("a resumed handle is not told the file again")

    def write(self, data) -> None:
        self._f.write(data)

    def abort(self) -> None:
        self._f.close()

    def close(self) -> None:
        self._f.close()


@pytest.mark.parametrize("known", [False, True])
def test_a_recording_not_in_memory_is_copied_right_without_being_cached(tmp_path, known):
    with loop_fs(tmp_path, "ext4", 64) as (mnt, _dev, _img):
        src, data = _recording(mnt, cached=False)
        sha = hashlib.sha256(data).hexdigest()
        out = tmp_path / "out"
        out.mkdir()
        target = DirectoryTarget(out)
        h = target.open_write("rec.wav")
        size, got, h = writer.copy_into(SourceRef(src, mnt), h, known=sha if known else None)
        h.sync()
        h.commit()
        assert (size, got) == (SIZE, sha)
        assert (out / "rec.wav").read_bytes() == data
        assert resident(src) <= PROBED, f"the copy filled the page cache with {resident(src)} bytes of the recording"


def test_a_resumed_copy_of_a_recording_not_in_memory_hashes_the_whole_file(tmp_path):
    with loop_fs(tmp_path, "ext4", 64) as (mnt, _dev, _img):
        src, data = _recording(mnt, cached=False)
        dst = tmp_path / "resumed.wav"
        h = _Resumed(dst, data[:4 << 20])
        size, got, _ = writer.copy_into(SourceRef(src, mnt), h)
        h.close()
        assert (size, got) == (SIZE, hashlib.sha256(data).hexdigest())
        assert dst.read_bytes() == data
        assert resident(src) <= PROBED


def test_a_recording_in_memory_is_read_through_the_cache(tmp_path):
    with loop_fs(tmp_path, "ext4", 64) as (mnt, _dev, _img):
        src, data = _recording(mnt, cached=True)
        out = tmp_path / "out"
        out.mkdir()
        h = DirectoryTarget(out).open_write("rec.wav")
        size, got, h = writer.copy_into(SourceRef(src, mnt), h)
        h.sync()
        h.commit()
        assert (size, got) == (SIZE, hashlib.sha256(data).hexdigest())
        assert (out / "rec.wav").read_bytes() == data
        assert resident(src) >= SIZE - 4096          # still held: nothing read it around the cache
