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


async def test_a_stick_unmounted_before_its_export_opens_it_is_a_pulled_stick(stick, tmp_path, demo_library):
    """The USB adapter queues a stick's export into its mount point; the stick is pulled (its mount taken away,
    the empty mount point not yet removed by udisks) before the job opens it. The job fails as a pulled stick,
    the one outcome of a pull at any moment, and nothing is written into the mount point: an empty folder of the
    recorder's own disk (before: the export landed there, read back from that disk, and the job 'completed')."""
    from steno_exportd import events as ev
    from steno_exportd.core import Core, ExportOptions
    from tests.configs import make_config
    import asyncio
    await asyncio.to_thread(demo_library, tmp_path / "library", sessions=2, seed=1)
    core = Core(make_config(tmp_path))
    await core.start()
    try:
        subprocess.run(["umount", "-l", str(stick)], check=True)
        assert not os.path.ismount(stick) and os.listdir(stick) == []
        snap = await core.export_sessions("all", ["txt", "audio"], os.path.join(stick, ""),
                                          ExportOptions(device_id="fs_test_stick", target_name="RECSTICK (loop9p1)"),
                                          trusted=True)
        job = await core.jobs.wait(snap.id, timeout=60)
    finally:
        await core.stop()
    assert os.listdir(stick) == [], "written to the recorder's own disk, not to the stick"
    assert job.state == ev.JobState.FAILED and job.error.startswith("target gone (stick pulled?)"), job.error
