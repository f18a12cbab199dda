"""Recorder files opened the safe way: no symlink followed anywhere inside the data folder, the checked inode
or nothing, a FIFO never hangs."""
from __future__ import annotations

import os

import pytest

from steno_exportd.recordings import SourceChanged, SourceRef


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    (d / "audio").mkdir(parents=True)
    (d / "audio" / "a.wav").write_bytes(b"RIFF" + b"x" * 100)
    (tmp_path / "secret").write_bytes(b"the daemon's own key")
    return d


def test_a_checked_recording_opens_and_reads(data):
    p = data / "audio" / "a.wav"
    st = os.stat(p)
    with SourceRef(p, data, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns).open() as f:
        assert f.size == 104 and f.pread(4, 0) == b"RIFF"


@pytest.mark.parametrize("attack", ["final symlink", "folder symlink", "dotdot", "outside", "fifo", "swapped",
                                    "grown", "gone"])
def test_what_is_not_the_checked_file_is_refused(data, tmp_path, attack):
    p = data / "audio" / "a.wav"
    st = os.stat(p)
    ref = SourceRef(p, data, st.st_dev, st.st_ino, st.st_size)
    if attack == "final symlink":
        p.unlink()
        p.symlink_to(tmp_path / "secret")
        ref = SourceRef(p, data)                            # even with nothing to compare
    elif attack == "folder symlink":
        os.rename(data / "audio", data / "real")
        (data / "audio").symlink_to(tmp_path)
        (tmp_path / "a.wav").write_bytes(b"outside")
        ref = SourceRef(p, data)
    elif attack == "dotdot":
        ref = SourceRef(data / "audio" / ".." / ".." / "secret", data)
    elif attack == "outside":
        ref = SourceRef(tmp_path / "secret", data)
    elif attack == "fifo":
        p.unlink()
        os.mkfifo(p)
        ref = SourceRef(p, data)
    elif attack == "swapped":                               # another file under the same name
        (data / "audio" / "new.wav").write_bytes(b"RIFF" + b"y" * 100)
        os.replace(data / "audio" / "new.wav", p)
    elif attack == "grown":
        with open(p, "ab") as f:
            f.write(b"more")
    elif attack == "gone":
        p.unlink()
    with pytest.raises(SourceChanged):
        ref.open().close()
