"""A read-back hashes what the stick's medium holds, not pages the kernel kept of the file.

A stick that lost or changed bytes after they were written must fail its read-back, also when the kernel still
holds the file's good pages: another process has the file mapped (fadvise cannot drop mapped pages), as a
reader of the stick may. Real filesystems in loop images; the "medium" is changed under the filesystem by
writing the loop device's backing image."""
from __future__ import annotations

import hashlib
import logging
import mmap
import os
import subprocess
import threading
import zlib

import pytest

from steno_exportd import config
from steno_exportd.engine import writer
from steno_exportd.engine.export import SimpleSpec, run_export
from steno_exportd.engine.hashcache import HashCache
from steno_exportd.engine.options import ExportOptions
from steno_exportd.engine.targets import DirectoryTarget
from steno_exportd.errors import CancelledJob, VerifyError
from tests.fakes import FakeLibrary, make_session
from tests.parts.loopfs import loop_fs

SIZE = 3 * (4 << 20) + 12345          # chunks of a read-back and an unaligned tail


def _marked(size: int) -> bytes:
    """Bytes whose every 4 KiB block starts with a marker that says which block it is (found in the image)."""
    body = bytearray(os.urandom(size))
    for off in range(0, size, 4096):
        body[off:off + 16] = b"STENO-BLOCK-%04d" % (off // 4096)
    return bytes(body)


def _image_offset(img, marker: bytes) -> int:
    with open(img, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        at = m.find(marker)
    assert at >= 0, f"{marker!r} not found in the image"
    return at


@pytest.mark.parametrize("check", ["crc32", "sha256"])
@pytest.mark.parametrize("fstype", ["ext4", "exfat", "vfat"])
def test_a_read_back_fails_when_the_medium_lost_bytes_the_kernel_still_holds(tmp_path, fstype, check):
    """By the CRC-32 of the bytes written (write_bytes gives it: what an export's read-back checks), and by SHA-256
    where no CRC-32 is known."""
    with loop_fs(tmp_path, fstype, 64) as (mnt, dev, img):
        target = DirectoryTarget(mnt)
        data = _marked(SIZE)
        size, sha, crc, _ = writer.write_bytes(data, target, "audio.wav")
        assert (sha, crc) == (hashlib.sha256(data).hexdigest(), zlib.crc32(data))
        crc = crc if check == "crc32" else None
        writer.verify(target, "audio.wav", size, sha, crc=crc)       # the medium holds it: the read-back agrees
        with open(mnt / "audio.wav", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as held:
            assert held[:SIZE] == data                                # its pages are in memory, mapped here
            os.sync()
            at = _image_offset(img, b"STENO-BLOCK-0777")          # a block in the file's middle, on the medium
            with open(img, "r+b") as raw:                             # the stick's flash changes it
                raw.seek(at + 100)
                raw.write(b"\0" * 512)
                raw.flush()
                os.fsync(raw.fileno())
            assert held[777 * 4096 + 100:777 * 4096 + 612] != b"\0" * 512   # the kernel still holds the good bytes
            with pytest.raises(VerifyError, match=f"audio.wav: read back {SIZE} bytes {check} "):
                writer.verify(target, "audio.wav", size, sha, crc=crc)



def test_an_exports_crc32_read_back_reads_and_checks_in_its_own_thread(tmp_path, monkeypatch):
    """An export's read-back (by CRC-32) starts no reader thread: the CRC-32 takes a fraction of a read's time, and
    the hand-offs of each chunk to and from a reader thread cost more CPU than it (bench export, pi4 profile). It
    still reads the whole file from the medium, finds a change there and heeds a cancel; by SHA-256 (no CRC-32
    known) a reader thread still reads beside the hashing."""
    with loop_fs(tmp_path, "ext4", 64) as (mnt, dev, img):
        target = DirectoryTarget(mnt)
        data = _marked(SIZE)
        size, sha, crc, _ = writer.write_bytes(data, target, "audio.wav")
        started = []
        start = threading.Thread.start

        def spied(self):
            started.append(self.name)
            return start(self)
        monkeypatch.setattr(threading.Thread, "start", spied)
        writer.verify(target, "audio.wav", size, sha, crc=crc)
        assert started == []
        with pytest.raises(CancelledJob):
            writer.verify(target, "audio.wav", size, sha, lambda: True, crc=crc)
        writer.verify(target, "audio.wav", size, sha)
        assert started == ["steno-read"]
        os.sync()
        at = _image_offset(img, b"STENO-BLOCK-0777")
        with open(img, "r+b") as raw:
            raw.seek(at + 100)
            raw.write(b"\0" * 512)
            raw.flush()
            os.fsync(raw.fileno())
        with pytest.raises(VerifyError, match=f"audio.wav: read back {SIZE} bytes crc32 "):
            writer.verify(target, "audio.wav", size, sha, crc=crc)

SOURCES = 3                                    # recordings of RECORDING bytes each
RECORDING = 8 << 20


def _recordings(tmp_path) -> list:
    rec = tmp_path / "rec"
    rec.mkdir()
    out = []
    for i in range(1, SOURCES + 1):
        p = rec / f"s{i}.wav"
        p.write_bytes(_marked(RECORDING).replace(b"STENO-BLOCK-", b"STENO-S%d-BLK" % i))
        out.append(p)
    return out


def _hash_ahead(cache, srcs, crc: bool = True) -> None:
    """What the background hasher remembers of each recording (both hashes; an older row only the SHA-256)."""
    hc = HashCache(cache)
    try:
        for p in srcs:
            data = p.read_bytes()
            if crc:
                hc.put(p, zlib.crc32(data), hashlib.sha256(data).hexdigest(), p.stat())
            else:
                hc.put_sha256(p, hashlib.sha256(data).hexdigest(), p.stat())
    finally:
        hc.close()


class _CountingSha256:
    """hashlib.sha256 that counts the bytes it is given (all of them: every thread's, every module's)."""
    real = hashlib.sha256
    lock = threading.Lock()
    fed = 0

    def __init__(self, data=b"", **kw) -> None:
        self._h = self.real(**kw)
        if data:
            self.update(data)

    def update(self, data) -> None:
        with self.lock:
            _CountingSha256.fed += memoryview(data).nbytes
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def copy(self):
        c = _CountingSha256.__new__(_CountingSha256)
        c._h = self._h.copy()
        return c


def _export(tmp_path, srcs, target, cache=None):
    lib = FakeLibrary([make_session(i, p) for i, p in enumerate(srcs, 1)])
    cfg = config.from_dict({"recorder": {"db_path": str(tmp_path / "rec" / "db.sqlite")}})
    hashes = HashCache(cache) if cache is not None else None
    try:
        return run_export(lib, SimpleSpec(target, tuple(range(1, len(srcs) + 1)), ("audio",), ExportOptions()),
                          cfg, hashes=hashes)
    finally:
        if hashes is not None:
            hashes.close()


@pytest.mark.parametrize("ahead", ["never", "hashed_ahead", "sha256_only_ahead"])
def test_an_export_hashes_each_recording_byte_by_sha256_at_most_once(tmp_path, monkeypatch, ahead):
    """The read-back checks the CRC-32 of the bytes written, not a second SHA-256 pass (on a Pi 4 SHA-256 runs at
    ~100 MB/s a core: the read-back's pass was the export's CPU bottleneck). A never-hashed recording goes through
    SHA-256 once (for SHA256SUMS), one hashed ahead not at all; one remembered without a CRC-32 (an older row) is
    read back by SHA-256 as before. What lands is verified all the same: sha256sum -c of SHA256SUMS."""
    srcs = _recordings(tmp_path)
    cache = None
    if ahead != "never":
        cache = tmp_path / "hashes.sqlite"
        _hash_ahead(cache, srcs, crc=ahead == "hashed_ahead")
    total = SOURCES * RECORDING
    with loop_fs(tmp_path, "ext4", 128) as (mnt, _dev, _img):
        monkeypatch.setattr(_CountingSha256, "fed", 0)
        monkeypatch.setattr(hashlib, "sha256", _CountingSha256)
        res = _export(tmp_path, srcs, str(mnt), cache)
        fed = _CountingSha256.fed
        monkeypatch.undo()
        assert [r.ok for r in res] == [True] * SOURCES, res
        root = mnt / "SilentSteno"
        assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0
        for i, p in enumerate(srcs, 1):
            assert next(root.glob(f"*Meeting {i} */audio.wav")).read_bytes() == p.read_bytes()
    expect = {"never": total, "hashed_ahead": 0, "sha256_only_ahead": total}[ahead]
    assert expect <= fed < expect + (1 << 20), \
        f"{fed / (1 << 20):.1f} MiB went through SHA-256 for {total >> 20} MiB of recordings (expected {expect >> 20})"


class _Flaky(DirectoryTarget):
    """A stick whose medium changes a block of the first recording between its write and its read-back (the image's
    bytes overwritten under the filesystem, as the flash would), once."""

    def __init__(self, root, img, marker: bytes) -> None:
        super().__init__(root)
        self.img, self.marker, self.spoiled = img, marker, []

    def open_read(self, rel, *, uncached=False):
        if uncached and rel.endswith("audio.wav") and "Meeting 1 " in rel and not self.spoiled:
            os.sync()
            at = _image_offset(self.img, self.marker)
            with open(self.img, "r+b") as raw:
                raw.seek(at + 1000)
                b = raw.read(1)
                raw.seek(at + 1000)
                raw.write(bytes([b[0] ^ 0x10]))          # one bit
                raw.flush()
                os.fsync(raw.fileno())
            self.spoiled.append(rel)
        return super().open_read(rel, uncached=uncached)


@pytest.mark.parametrize("ahead", [False, True])
def test_an_export_catches_a_bit_flipped_on_the_medium_after_the_write_and_writes_the_file_again(tmp_path, caplog,
                                                                                                 ahead):
    """Never hashed (the CRC-32 hashed beside the copy's SHA-256) and hashed ahead (the CRC-32 remembered): a bit
    that flipped on the stick after the write fails the read-back; the file is written again and lands right."""
    srcs = _recordings(tmp_path)
    cache = None
    if ahead:
        cache = tmp_path / "hashes.sqlite"
        _hash_ahead(cache, srcs)
    with loop_fs(tmp_path, "ext4", 128) as (mnt, _dev, img):
        stick = _Flaky(mnt, img, b"STENO-S1-BLK0777")
        with caplog.at_level(logging.WARNING):
            res = _export(tmp_path, srcs, stick, cache)
        assert stick.spoiled, "the medium was not changed"
        failed = [r.getMessage() for r in caplog.records if "verify failed" in r.getMessage()]
        assert len(failed) == 1 and "Meeting 1 " in failed[0] and "audio.wav" in failed[0], failed
        assert [r.ok for r in res] == [True] * SOURCES, res
        root = mnt / "SilentSteno"
        assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0
        for i, p in enumerate(srcs, 1):
            assert next(root.glob(f"*Meeting {i} */audio.wav")).read_bytes() == p.read_bytes()


def test_a_zip_whose_bytes_changed_on_the_medium_after_the_write_fails_and_is_not_left_there(tmp_path, monkeypatch):
    """An archive export (a ZIP on a stick) is read back like a folder's files: a bit that flipped on the medium
    after the write fails the export with a clear error, and no ZIP with wrong bytes stays under its name."""
    srcs = _recordings(tmp_path)
    spoiled: list[str] = []
    real_open_read = DirectoryTarget.open_read

    def flaky_open_read(self, rel, *, uncached=False):
        if uncached and rel.endswith(".zip") and not spoiled:
            os.sync()
            at = _image_offset(img, b"STENO-S2-BLK0100")     # inside the ZIP: recordings are stored as they are
            with open(img, "r+b") as raw:
                raw.seek(at + 1000)
                b = raw.read(1)
                raw.seek(at + 1000)
                raw.write(bytes([b[0] ^ 0x10]))
                raw.flush()
                os.fsync(raw.fileno())
            spoiled.append(rel)
        return real_open_read(self, rel, uncached=uncached)

    with loop_fs(tmp_path, "ext4", 128) as (mnt, _dev, img):
        monkeypatch.setattr(DirectoryTarget, "open_read", flaky_open_read)
        lib = FakeLibrary([make_session(i, p) for i, p in enumerate(srcs, 1)])
        cfg = config.from_dict({"recorder": {"db_path": str(tmp_path / "rec" / "db.sqlite")},
                                "export": {"allowed_dirs": [str(mnt)]}})
        with pytest.raises(VerifyError, match=r"meetings\.zip: read back \d+ bytes crc32 "):
            run_export(lib, SimpleSpec(str(mnt / "meetings.zip"), (1, 2, 3), ("audio",), ExportOptions()), cfg)
        assert spoiled, "the medium was not changed"
        assert not (mnt / "meetings.zip").exists(), "a ZIP that failed its read-back is left under its name"


class _Cut:
    """A read handle of a stick whose medium stops answering from ``at`` on while the handle is open (a bad region:
    the loop device made shorter under the mounted filesystem, so the kernel answers reads there EIO); the medium
    comes back whole when the handle is closed, before anything else is done on the stick."""

    def __init__(self, h, img, dev: str, at: int) -> None:
        self._h, self.img, self.dev, self.at = h, img, dev, at
        os.sync()
        with open(img, "r+b") as raw:
            raw.seek(at)
            self._tail = raw.read()
            raw.truncate(at)
            os.fsync(raw.fileno())
        subprocess.run(["losetup", "-c", dev], check=True)
        self.reads, self.failed = 0, []

    def readinto(self, buf) -> int:
        self.reads += 1
        try:
            return self._h.readinto(buf)
        except OSError as e:
            self.failed.append(e)
            raise

    def read(self, n: int) -> bytes:
        return self._h.read(n)

    def close(self) -> None:
        self._h.close()
        self.restore()

    def restore(self) -> None:
        if self._tail is None:
            return
        with open(self.img, "r+b") as raw:
            raw.seek(self.at)
            raw.write(self._tail)
            os.fsync(raw.fileno())
        self._tail = None
        subprocess.run(["losetup", "-c", self.dev], check=True)


def _archive_cfg(tmp_path, mnt):
    return config.from_dict({"recorder": {"db_path": str(tmp_path / "rec" / "db.sqlite")},
                             "export": {"allowed_dirs": [str(mnt)]}})


def test_a_zip_whose_read_back_meets_a_bad_region_of_the_stick_fails_and_is_not_left_there(tmp_path, monkeypatch):
    """A ZIP's read-back that meets a bad region of the stick (the kernel answers EIO there) fails the export with a
    clear error, and no ZIP whose bytes could not be read back stays under its name (nor its temp file)."""
    srcs = _recordings(tmp_path)
    cuts: list[_Cut] = []
    real_open_read = DirectoryTarget.open_read

    def bad_region(self, rel, *, uncached=False):
        h = real_open_read(self, rel, uncached=uncached)
        if uncached and rel.endswith(".zip") and not cuts:
            at = _image_offset(img, b"STENO-S3-BLK0100") & ~4095      # inside the ZIP: the third recording
            cuts.append(_Cut(h, img, dev, at))
            return cuts[-1]
        return h

    with loop_fs(tmp_path, "ext4", 128) as (mnt, dev, img):
        subprocess.run(["mount", "-o", "remount,noatime", str(mnt)], check=True)   # no metadata write past the cut
        monkeypatch.setattr(DirectoryTarget, "open_read", bad_region)
        try:
            with pytest.raises(VerifyError, match=r"meetings\.zip: .*Input/output error.*removed"):
                run_export(FakeLibrary([make_session(i, p) for i, p in enumerate(srcs, 1)]),
                           SimpleSpec(str(mnt / "meetings.zip"), (1, 2, 3), ("audio",), ExportOptions()),
                           _archive_cfg(tmp_path, mnt))
        finally:
            for c in cuts:
                c.restore()
        assert cuts and cuts[0].failed, "the read-back never met the bad region"
        assert sorted(p.name for p in mnt.iterdir()) == ["lost+found"], "a ZIP (or its temp file) is left there"


class _CancelledProgress:
    """A job's progress whose cancel comes once the ZIP's read-back has begun."""

    cancelled = False

    def update(self, force: bool = False, **fields) -> None:
        pass


def test_a_cancel_during_a_zips_read_back_is_heeded_and_no_zip_is_left(tmp_path, monkeypatch):
    """A long read-back (a big ZIP on a slow stick) looks at the job's cancel as the writes do: the job ends
    cancelled, and no ZIP that was not read back whole stays under its name."""
    srcs = _recordings(tmp_path)
    progress = _CancelledProgress()
    reads: list[int] = []
    real_open_read = DirectoryTarget.open_read

    class Reading:
        def __init__(self, h):
            self._h = h

        def readinto(self, buf) -> int:
            n = self._h.readinto(buf)
            reads.append(n)
            progress.cancelled = True           # the person cancels while the ZIP is read back
            return n

        def read(self, n):
            return self._h.read(n)

        def close(self):
            self._h.close()

    def reading(self, rel, *, uncached=False):
        h = real_open_read(self, rel, uncached=uncached)
        return Reading(h) if uncached and rel.endswith(".zip") else h

    with loop_fs(tmp_path, "ext4", 128) as (mnt, _dev, _img):
        monkeypatch.setattr(DirectoryTarget, "open_read", reading)
        with pytest.raises(CancelledJob):
            run_export(FakeLibrary([make_session(i, p) for i, p in enumerate(srcs, 1)]),
                       SimpleSpec(str(mnt / "meetings.zip"), (1, 2, 3), ("audio",), ExportOptions()),
                       _archive_cfg(tmp_path, mnt), progress)
        assert reads, "the ZIP was not read back"
        assert sum(reads) < SOURCES * RECORDING, f"the read-back went on after the cancel ({sum(reads)} bytes read)"
        assert sorted(p.name for p in mnt.iterdir()) == ["lost+found"], "a ZIP (or its temp file) is left there"
