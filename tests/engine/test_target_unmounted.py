"""A stick unmounted under an export (udisks, a lazy unmount, a dead FUSE helper's mount taken away) leaves its
mount point in place: an empty folder on the recorder's own disk. Nothing more is written there: the files would
fill the recorder's disk, pass their read-back (read from that disk) and the stick would lack them."""
from __future__ import annotations

import os
import subprocess

import pytest

from steno_exportd.engine.targets import DirectoryTarget
from steno_exportd.engine.writer import write_bytes
from steno_exportd.errors import TargetError
from tests.parts import require_root

pytestmark = pytest.mark.real


@pytest.fixture
def stick(tmp_path):
    """A real mount (tmpfs) standing in for a stick's filesystem; unmounted at the end if still there."""
    require_root()
    mp = tmp_path / "media" / "RECSTICK"
    mp.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mp)], check=True)
    try:
        yield mp
    finally:
        subprocess.run(["umount", "-l", str(mp)], check=False, capture_output=True)


def test_nothing_is_written_to_the_mount_point_once_the_stick_is_unmounted(stick):
    target = DirectoryTarget(stick)
    target.mkdir("SilentSteno/one")
    write_bytes(b"first session\n", target, "SilentSteno/one/transcript.txt")
    assert (stick / "SilentSteno" / "one" / "transcript.txt").read_bytes() == b"first session\n"
    subprocess.run(["umount", "-l", str(stick)], check=True)
    assert not os.path.ismount(stick) and os.listdir(stick) == []
    with pytest.raises(TargetError, match="no longer the filesystem the export began on"):
        target.mkdir("SilentSteno/two")
    with pytest.raises(TargetError, match="no longer the filesystem"):
        write_bytes(b"second session\n", target, "transcript.txt")
    assert target.lstat("SilentSteno") is None and not target.exists("manifest.json")
    assert os.listdir(stick) == [], "written to the recorder's own disk, not to the stick"


def test_a_folder_made_later_is_held_to_the_filesystem_it_was_first_opened_on(tmp_path):
    """A local export folder that does not exist yet when the target is made: the first open fixes its filesystem."""
    require_root()
    root = tmp_path / "later"
    target = DirectoryTarget(root)
    root.mkdir()
    write_bytes(b"x", target, "a.txt")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)], check=True)
    try:
        with pytest.raises(TargetError, match="no longer the filesystem"):
            write_bytes(b"y", target, "b.txt")
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
    assert sorted(os.listdir(root)) == ["a.txt"]
