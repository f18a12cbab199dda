"""A read-back hashes what the stick's medium holds, not pages the kernel kept of the file.

A stick that lost or changed bytes after they were written must fail its read-back, also when the kernel still
holds the file's good pages: another process has the file mapped (fadvise cannot drop mapped pages), as a
reader of the stick may. Real filesystems in loop images; the "medium" is changed under the filesystem by
writing the loop device's backing image."""
from __future__ import annotations

import mmap
import os

import pytest

from steno_exportd.engine import writer
from steno_exportd.engine.targets import DirectoryTarget
from steno_exportd.errors import VerifyError
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


@pytest.mark.parametrize("fstype", ["ext4", "exfat", "vfat"])
def test_a_read_back_fails_when_the_medium_lost_bytes_the_kernel_still_holds(tmp_path, fstype):
    with loop_fs(tmp_path, fstype, 64) as (mnt, dev, img):
        target = DirectoryTarget(mnt)
        data = _marked(SIZE)
        size, sha, _ = writer.write_bytes(data, target, "audio.wav")
        writer.verify(target, "audio.wav", size, sha)               # the medium holds it: the read-back agrees
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
            with pytest.raises(VerifyError, match="audio.wav: read back"):
                writer.verify(target, "audio.wav", size, sha)
