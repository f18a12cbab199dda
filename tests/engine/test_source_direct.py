"""A recording that is not in the page cache is read from the disk direct: its copy is right, and an export of old
recordings does not fill the recorder's memory with them (nor spend a Pi's CPU copying them out of the cache).
A recording still in the cache (just made) is read through it. Real ext4 in a loop image; `fincore` (util-linux)
tells which of a file's pages the kernel holds."""
from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
import types
import zlib
from pathlib import Path

import pytest

from steno_exportd.engine import writer
from steno_exportd.engine.targets import COPY_CHUNK, DirectoryTarget, FdRead, WriteHandle
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


def _recording(mnt: Path, cached: bool, size: int = SIZE) -> tuple[Path, bytes]:
    data = os.urandom(size)
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


class _Resumed(WriteHandle):
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
        size, got, crc, h = writer.copy_into(SourceRef(src, mnt), h, known=sha if known else None)
        h.sync()
        h.commit()
        assert (size, got, crc) == (SIZE, sha, None if known else zlib.crc32(data))
        assert (out / "rec.wav").read_bytes() == data
        assert resident(src) <= PROBED, f"the copy filled the page cache with {resident(src)} bytes of the recording"


def test_a_resumed_copy_of_a_recording_not_in_memory_hashes_the_whole_file(tmp_path):
    with loop_fs(tmp_path, "ext4", 64) as (mnt, _dev, _img):
        src, data = _recording(mnt, cached=False)
        dst = tmp_path / "resumed.wav"
        h = _Resumed(dst, data[:4 << 20])
        size, got, crc, _ = writer.copy_into(SourceRef(src, mnt), h)
        h.close()
        assert (size, got, crc) == (SIZE, hashlib.sha256(data).hexdigest(), zlib.crc32(data))
        assert dst.read_bytes() == data
        assert resident(src) <= PROBED


def test_a_recording_in_memory_is_read_through_the_cache(tmp_path):
    with loop_fs(tmp_path, "ext4", 64) as (mnt, _dev, _img):
        src, data = _recording(mnt, cached=True)
        out = tmp_path / "out"
        out.mkdir()
        h = DirectoryTarget(out).open_write("rec.wav")
        size, got, crc, h = writer.copy_into(SourceRef(src, mnt), h)
        h.sync()
        h.commit()
        assert (size, got) == (SIZE, hashlib.sha256(data).hexdigest())
        assert (out / "rec.wav").read_bytes() == data
        assert resident(src) >= SIZE - 4096          # still held: nothing read it around the cache


def _read_to(src: Path, size: int) -> bool:
    """Has a descriptor of ``src`` this process holds been read to ``size``?"""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(src) and \
                    f"pos:\t{size}\n" in Path(f"/proc/self/fdinfo/{fd}").read_text():
                return True
        except OSError:
            continue                    # (closed meanwhile)
    return False


class _GrowsAtFirstWrite:
    """A real folder's write handle whose first write waits until the copy's reader has read the recording to its
    end (its unaligned tail, direct), then appends to the recording: it grows while it is copied."""

    def __init__(self, h, src: Path, size: int, more: bytes) -> None:
        self._h, self._src, self._size, self._more = h, src, size, more

    def __getattr__(self, name: str):
        return getattr(self._h, name)

    def write(self, data) -> None:
        if self._more:
            end = time.monotonic() + 30
            while not _read_to(self._src, self._size):
                assert time.monotonic() < end, "the recording was not read to its end"
                time.sleep(0.01)
            with open(self._src, "ab") as f:
                f.write(self._more)
            self._more = b""
        self._h.write(data)


@pytest.mark.parametrize("known", [False, True])
def test_a_recording_that_grows_after_its_tail_was_read_direct_is_copied_as_it_is_now(tmp_path, known):
    """A recording read direct from the disk has an unaligned tail (a read at an unaligned offset is refused direct):
    one written to after that tail was read is copied with the bytes it grew by, as a read through the cache copies
    them, never a copy failed with "Invalid argument". (Only finished sessions are exported: rare, but a user must
    not see a kernel's EINVAL.) The reader has read the tail into the last of its buffers when the first write
    makes the file grow (hashed beside the copy); a copy of a file whose hash is known grows after it wrote the
    tail."""
    # the tail fills the last buffer of the reader's ring: it then waits for the first write to hand one back
    size = (max(writer.RING_MIN, writer.RING_BYTES // COPY_CHUNK) - 1) * COPY_CHUNK + 12345
    more = os.urandom(3000)
    with loop_fs(tmp_path, "ext4", 64) as (mnt, _dev, _img):
        src, data = _recording(mnt, cached=False, size=size)
        out = tmp_path / "out"
        out.mkdir()
        h = DirectoryTarget(out).open_write("rec.wav")
        written = []

        def tick(n: int) -> None:
            written.append(n)
            if known and sum(written) == size:
                with open(src, "ab") as f:
                    f.write(more)
        if not known:
            h = _GrowsAtFirstWrite(h, src, size, more)
        got_size, got, crc, h = writer.copy_into(SourceRef(src, mnt), h, tick=tick,
                                                 known=hashlib.sha256(data).hexdigest() if known else None)
        h.sync()
        h.commit()
        assert (out / "rec.wav").read_bytes() == data + more
        assert got_size == size + len(more)
        if not known:
            assert got == hashlib.sha256(data + more).hexdigest()
        assert resident(src) <= PROBED, f"not read direct: {resident(src)} bytes of the recording cached"


def test_a_recording_read_direct_is_read_on_while_the_chunk_before_is_hashed(tmp_path, monkeypatch):
    """A direct read waits for the disk and the kernel reads nothing ahead of it: the next chunk is read while the one
    before is hashed, never read, hash, read... in series (on a Pi 4 the hash of a chunk takes as long as its read, so
    in series the copy ran at half the disk's speed; here it was the ext4 export's gap to `cp`)."""
    reads = 0
    second_read = threading.Event()
    real_readinto = FdRead.readinto

    def readinto(self, buf):
        nonlocal reads
        n = real_readinto(self, buf)
        reads += 1
        if reads == 2:
            second_read.set()
        return n

    waited: list[bool] = []

    class FirstChunkSlow:
        """SHA-256 whose first chunk takes until the second chunk was read (or 5 s: read only after it)."""

        def __init__(self) -> None:
            self._h = hashlib.sha256()

        def update(self, data) -> None:
            if not waited:
                waited.append(second_read.wait(5))
            self._h.update(data)

        def hexdigest(self) -> str:
            return self._h.hexdigest()

    with loop_fs(tmp_path, "ext4", 64) as (mnt, _dev, _img):
        src, data = _recording(mnt, cached=False)
        out = tmp_path / "out"
        out.mkdir()
        h = DirectoryTarget(out).open_write("rec.wav")
        monkeypatch.setattr(FdRead, "readinto", readinto)
        monkeypatch.setattr(writer, "hashlib", types.SimpleNamespace(sha256=FirstChunkSlow))
        size, got, crc, h = writer.copy_into(SourceRef(src, mnt), h)
        h.sync()
        h.commit()
        monkeypatch.undo()
    assert (size, got) == (len(data), hashlib.sha256(data).hexdigest())
    assert (out / "rec.wav").read_bytes() == data
    assert reads > 2
    assert waited == [True], "the second chunk was read only once the first was hashed: reads and hashing in series"
