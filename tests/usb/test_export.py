"""End to end with real udevd, udisksd and loop-image sticks: insert, mount, export, eject."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys

import pytest

from steno_exportd.usb import manager as usb
from steno_exportd.events import DeviceState as S, JobState
from steno_exportd.usb.udisks import UDisks
from tests.fakes import FakeCore, make_session, summary
from tests.parts import require_tool, until
from tests.parts.udev import Stick
from tests.usb.helpers import StateLog, by_label, loop_attached, make_cfg, prepare, stick_files, wait_state

pytestmark = pytest.mark.real


def mounted_in_proc(mount_point: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == mount_point for line in f)


@pytest.mark.parametrize("fs", ["vfat", "exfat", "ext4"])
async def test_insert_exports_new_sessions_and_ejects(sticks, tmp_path, fs):
    core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=2, file_size=512 * 1024, chunk_delay=0.05)
    stick = await asyncio.to_thread(sticks, fs)
    log = StateLog(core)
    async with usb.running(core):
        await asyncio.to_thread(stick.insert)
        dev = await wait_state(core, stick.label, S.EXPORTING)
        # mounted by udisks2: the whole system sees it, and so does udisks
        assert dev.mount_point and mounted_in_proc(dev.mount_point)
        ud = await UDisks.connect()
        try:
            assert dev.mount_point in (await ud.info(dev.device)).mount_points
        finally:
            await ud.close()
        dev = await wait_state(core, stick.label, S.SAFE_TO_REMOVE, S.ERROR)
        assert dev.state == S.SAFE_TO_REMOVE, dev.error
        assert not mounted_in_proc(dev.mount_point or "/nonexistent")
        assert not loop_attached(stick), "Loop.Delete (the power-off stand-in) should detach the loop"
        assert [ids for _, ids in core.written] == [[1, 2]]
        assert all(j.state == JobState.COMPLETED for j in core.jobs.list())

        # the same stick again: nothing new is written, it is still ejected
        await asyncio.to_thread(stick.insert)
        await until(lambda: not loop_attached(stick), "second eject", 20)
        await wait_state(core, stick.label, S.SAFE_TO_REMOVE, timeout=5)
        assert len(core.written) == 1

        # a new session in the library, the stick again: only that one
        core.library.add(make_session(3))
        await asyncio.to_thread(stick.insert)
        await until(lambda: len(core.written) == 2, "export of the new session", 20)
        await until(lambda: not loop_attached(stick), "third eject", 20)
        await wait_state(core, stick.label, S.SAFE_TO_REMOVE, timeout=5)
        assert core.written[1][1] == [3]
    await log.close()
    seq = log.states[stick.label]
    assert seq[:5] == ["detected", "mounting", "mounted", "exporting", "verifying"] or \
        seq[:4] == ["detected", "mounting", "mounted", "exporting"], seq
    assert seq[-2:] == ["ejecting", "safe_to_remove"], seq
    names = await asyncio.to_thread(stick_files, stick, lambda root: sorted(os.listdir(root / "SilentSteno")))
    assert names == sorted([summary(i).uuid for i in (1, 2, 3)] + ["manifest.json"])


async def test_cold_plug_stick_present_at_start(sticks, tmp_path):
    core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=1)
    stick = await asyncio.to_thread(sticks, "ext4")
    await asyncio.to_thread(stick.insert)
    await asyncio.to_thread(os.system, "udevadm settle -t 10")
    async with usb.running(core):
        dev = await wait_state(core, stick.label, S.SAFE_TO_REMOVE, S.ERROR)
        assert dev.state == S.SAFE_TO_REMOVE, dev.error
    assert [ids for _, ids in core.written] == [[1]]


async def test_removal_mid_export_fails_job_then_next_insertion_completes(sticks, tmp_path):
    core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=2, file_size=8 << 20, chunk_delay=0.05)
    stick = await asyncio.to_thread(sticks, "exfat")  # a FUSE filesystem: killing its helper is how a yank looks here
    async with usb.running(core) as mgr:
        await asyncio.to_thread(stick.insert)
        await wait_state(core, stick.label, S.EXPORTING)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(stick.yank)
        await wait_state(core, stick.label, S.REMOVED)
        job = await until(lambda: next((j for j in core.jobs.list() if j.state.finished), None), "the job to finish",
                          30)
        assert job.state == JobState.FAILED and job.error, job
        assert core.written == []
        assert by_label(core, stick.label).state == S.REMOVED
        assert mgr.watcher is not None and mgr.watcher.monitor is not None   # still watching
        # the next insertion completes the export
        core.chunk_delay = 0
        core.file_size = 64 * 1024
        await asyncio.to_thread(stick.insert)
        await wait_state(core, stick.label, S.SAFE_TO_REMOVE, timeout=30)
        assert [ids for _, ids in core.written] == [[1, 2]]


async def test_noexport_marker_mounts_but_never_writes(sticks, tmp_path):
    core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=1)
    stick = await asyncio.to_thread(sticks, "vfat")
    await asyncio.to_thread(prepare, stick, {".steno-noexport": b""})
    async with usb.running(core):
        await asyncio.to_thread(stick.insert)
        await wait_state(core, stick.label, S.MOUNTED)
        # the adapter's decision comes after the mount (the stick's marker read): waited for, not slept on
        dev = await until(lambda: (d := by_label(core, stick.label)).skip_reason and d, "the stick's decision", 20,
                          in_thread=False)
        assert dev.state == S.MOUNTED and mounted_in_proc(dev.mount_point)
        assert dev.skip_reason == ".steno-noexport on the stick"
        assert core.jobs.list() == []
        # eject on request (what D-Bus and the web page call): a short tracked job
        job = await core.eject(dev.id)
        assert job.operation == "eject" and job.state == JobState.COMPLETED and job.device_id == dev.id
        assert by_label(core, stick.label).state == S.SAFE_TO_REMOVE
        assert not mounted_in_proc(dev.mount_point)


async def test_stick_config_file_chooses_formats_and_bad_one_is_refused(sticks, tmp_path):
    core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=1)
    good, bad = await asyncio.to_thread(sticks, "ext4"), await asyncio.to_thread(sticks, "ext4")
    await asyncio.to_thread(prepare, good, {"steno-export.toml": b'formats = ["txt"]\neject_after = false\n'})
    await asyncio.to_thread(prepare, bad, {"steno-export.toml": b'formats = ["exe"]\n'})
    async with usb.running(core):
        await asyncio.to_thread(good.insert)
        await asyncio.to_thread(bad.insert)
        dev = await wait_state(core, bad.label, S.MOUNTED, S.ERROR)
        # the bad stick's file is read after its mount: its decision is waited for (the good stick's job may end
        # before it)
        await until(lambda: by_label(core, bad.label).skip_reason or by_label(core, bad.label).state == S.ERROR,
                    "the bad stick's decision", 20, in_thread=False)
        await until(lambda: core.jobs.list() and core.jobs.list()[0].state.finished, "the job", 20)
        job = core.jobs.list()[0]
        assert job.formats == ("txt",)
        # eject_after = false on that stick: it stays mounted once the adapter has seen the job end
        assert (await wait_state(core, good.label, S.MOUNTED, S.SAFE_TO_REMOVE, S.ERROR)).state == S.MOUNTED
        assert len(core.jobs.list()) == 1                         # nothing for the bad one
        assert "steno-export.toml on the stick is invalid" in by_label(core, bad.label).skip_reason
        assert by_label(core, good.label).skip_reason == ""
        await core.eject(by_label(core, good.label).id)
        await core.eject(dev.id)


async def test_a_hostile_stick_config_file_is_said_in_one_bounded_printable_line(sticks, tmp_path, caplog):
    """A stick's steno-export.toml whose keys carry a forged log line and a terminal escape, and thousands of
    unknown keys within its 64 KiB: the stick is left alone, and why is one line, bounded. The key was quoted raw:
    the log (journald splits it at the newline, a '<2>' before a line is its priority) got a forged CRITICAL line and
    an escape sequence, and the stick's reason (a D-Bus property, the page) held every one of 3,000 problems."""
    caplog.set_level(logging.INFO, "steno_exportd.usb.manager")
    core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=1)
    stick = await asyncio.to_thread(sticks, "ext4")
    forged = '"x\\n<2>CRITICAL steno_exportd.daemon: stick accepted\\u001b[2J" = 1\n'.encode()
    many = b"".join(b"k%d = 1\n" % i for i in range(3000))
    await asyncio.to_thread(prepare, stick, {"steno-export.toml": forged + many})
    async with usb.running(core):
        await asyncio.to_thread(stick.insert)
        await until(lambda: by_label(core, stick.label).skip_reason if by_label(core, stick.label) else "",
                    "the stick's decision", 20, in_thread=False)
        reason = by_label(core, stick.label).skip_reason
        assert not core.jobs.list()
        await core.eject(by_label(core, stick.label).id)
    assert "steno-export.toml on the stick is invalid" in reason, reason
    assert reason.isprintable() and len(reason) <= 1000, (len(reason), reason[:300])
    assert "unknown key" in reason and "more" in reason, reason[-200:]
    said = [r.getMessage() for r in caplog.records if "not exporting" in r.getMessage()]
    assert len(said) == 1 and said[0].isprintable() and len(said[0]) <= 1200, said


async def test_stick_without_filesystem_is_reported(sticks, tmp_path):
    core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=1)
    stick = await asyncio.to_thread(sticks, None)
    async with usb.running(core):
        await asyncio.to_thread(stick.insert)
        dev = await until(lambda: next((d for d in core.devices.list() if d.device == stick.part), None),
                          "the unusable stick to be reported", 10)
        assert dev.state == S.ERROR and "no filesystem" in dev.error
        assert stick.mount_points() == []


async def test_read_only_stick(sticks, tmp_path):
    core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=1)
    stick = await asyncio.to_thread(sticks, "ext4", read_only=True)
    async with usb.running(core):
        await asyncio.to_thread(stick.insert)
        dev = await wait_state(core, stick.label, S.ERROR)
        assert "read-only" in dev.error
        assert core.jobs.list() == []
        assert mounted_in_proc(dev.mount_point)
        await core.eject(dev.id)
        assert by_label(core, stick.label).state == S.SAFE_TO_REMOVE


async def test_full_stick_fails_with_reason(sticks, tmp_path):
    core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=1, file_size=8 << 20)
    stick = await asyncio.to_thread(sticks, "ext4", size_mb=16)
    await asyncio.to_thread(prepare, stick, {"filler": b"\0" * (9 << 20)})
    async with usb.running(core):
        await asyncio.to_thread(stick.insert)
        dev = await wait_state(core, stick.label, S.ERROR, S.SAFE_TO_REMOVE)
        assert dev.state == S.ERROR and "No space left" in dev.error, dev
        assert core.written == []


async def test_two_sticks_at_once_each_get_a_job(sticks, tmp_path):
    core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=2)
    a, b = await asyncio.to_thread(sticks, "exfat"), await asyncio.to_thread(sticks, "ext4")
    async with usb.running(core):
        await asyncio.to_thread(a.insert)
        await asyncio.to_thread(b.insert)
        for s in (a, b):
            dev = await wait_state(core, s.label, S.SAFE_TO_REMOVE, S.ERROR, timeout=30)
            assert dev.state == S.SAFE_TO_REMOVE, dev.error
    assert len(core.jobs.list()) == 2
    assert len({t for t, _ in core.written}) == 2
    assert {j.device_id for j in core.jobs.list()} == {by_label(core, s.label).id for s in (a, b)}


async def test_system_disk_never_touched(sticks, tmp_path):
    core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=1)
    stick = await asyncio.to_thread(sticks, "ext4")
    async with usb.running(core) as mgr:
        await asyncio.to_thread(stick.insert)
        await wait_state(core, stick.label, S.SAFE_TO_REMOVE)
        root_dev = os.stat("/").st_dev
        assert mgr.watcher is not None
        from steno_exportd.usb.udev import system_disks
        assert system_disks(["/"]) <= mgr.watcher.excluded
        for d in core.devices.list():
            assert d.device.startswith("/dev/loop"), d
            assert os.stat(d.device).st_rdev != root_dev if os.path.exists(d.device) else True


async def test_eject_during_export_cancels_the_job_first(sticks, tmp_path):
    core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=1, file_size=8 << 20, chunk_delay=0.05)
    stick = await asyncio.to_thread(sticks, "ext4")
    async with usb.running(core):
        await asyncio.to_thread(stick.insert)
        dev = await wait_state(core, stick.label, S.EXPORTING)
        await core.eject(dev.id)
        assert by_label(core, stick.label).state == S.SAFE_TO_REMOVE
        assert core.jobs.list()[0].state == JobState.CANCELLED
        assert core.written == []
        await asyncio.sleep(0.3)
        assert by_label(core, stick.label).state == S.SAFE_TO_REMOVE


async def test_allow_list_leaves_other_sticks_alone(sticks, tmp_path):
    core = FakeCore(make_cfg(tmp_path, **{"usb.allow_labels": ["RECOFFICE"]}), write_files=True, n_sessions=1)
    other, office = await asyncio.to_thread(sticks, "ext4"), await asyncio.to_thread(sticks, "ext4", label="RECOFFICE")
    async with usb.running(core):
        await asyncio.to_thread(other.insert)
        await asyncio.to_thread(office.insert)
        await wait_state(core, office.label, S.SAFE_TO_REMOVE)
        dev = by_label(core, other.label)
        assert dev.state == S.DETECTED and "allow-list" in dev.error
        assert other.mount_points() == []
    assert [t for t, _ in core.written] == [by_label(core, office.label).mount_point or t
                                            for t, _ in core.written]
    assert len(core.written) == 1


async def test_several_partitions_pick_preferred_label_else_largest(sticks, tmp_path):
    stick = await asyncio.to_thread(sticks, "ext4", part_sizes_mb=[20, 40], labels=["RECSMALL", "RECBIG"])
    core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=1)
    async with usb.running(core):
        await asyncio.to_thread(stick.insert)
        await wait_state(core, "RECBIG", S.SAFE_TO_REMOVE)
        assert by_label(core, "RECSMALL") is None
    await asyncio.to_thread(stick.cleanup)
    core = FakeCore(make_cfg(tmp_path, **{"usb.prefer_labels": ["RECSMALL"]}), write_files=True, n_sessions=1)
    async with usb.running(core):
        await asyncio.to_thread(stick.insert)
        await wait_state(core, "RECSMALL", S.SAFE_TO_REMOVE)
        assert by_label(core, "RECBIG") is None


async def test_unusable_stick_removed_is_reported_removed(sticks, tmp_path):
    core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=1)
    stick = await asyncio.to_thread(sticks, None)
    async with usb.running(core):
        await asyncio.to_thread(stick.insert)
        dev = await until(lambda: next((d for d in core.devices.list() if d.device == stick.part), None),
                          "the unusable stick", 10)
        await asyncio.to_thread(stick.remove)
        await until(lambda: core.devices.get(dev.id).state == S.REMOVED, "removed", 10)


async def test_watch_without_udisks_says_so_and_keeps_retrying(tmp_path, caplog):
    import logging
    import subprocess
    d = tmp_path / "bus"
    d.mkdir()
    conf = d / "bus.conf"
    from tests.usb.test_udisks_contract import CONF
    conf.write_text(CONF.format(sock=d / "s"))
    proc = subprocess.Popen(["dbus-daemon", "--config-file", str(conf), "--nofork", "--print-address=1"],
                            stdout=subprocess.PIPE, text=True)
    try:
        addr = proc.stdout.readline().strip()
        assert addr.startswith("unix:"), "private dbus-daemon did not start"
        core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=1)
        caplog.set_level(logging.DEBUG, "steno_exportd.usb.manager")
        task = asyncio.create_task(usb.watch(core, addr, retry_seconds=0.05))
        await until(lambda: sum("udisks2 is not running" in r.getMessage() for r in caplog.records) >= 3,
                    "retries", 10)
        assert not task.done()
        assert [r.levelname for r in caplog.records if "unavailable" in r.getMessage()][:2] == ["ERROR", "DEBUG"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        proc.terminate()
        proc.wait(10)


async def test_auto_export_switched_on_at_runtime_overrides_the_file(sticks, tmp_path):
    """usb.auto_export.enabled = false in the file, then `steno-exportctl auto-export on`: a stick exports."""
    core = FakeCore(make_cfg(tmp_path, **{"usb.auto_export.enabled": False, "usb.auto_export.eject_after": False}),
                    write_files=True, n_sessions=1)
    core.auto_export = True                 # what core.set_auto_export(True) leaves
    stick = await asyncio.to_thread(sticks, "ext4")
    async with usb.running(core):
        await asyncio.to_thread(stick.insert)
        await until(lambda: core.jobs.list() and core.jobs.list()[0].state.finished, "the export", 20)
        dev = await wait_state(core, stick.label, S.MOUNTED)
        await core.eject(dev.id)
    assert core.written and core.written[0][1] == [1]


async def test_change_event_burst_is_debounced(sticks, tmp_path):
    import subprocess
    core = FakeCore(make_cfg(tmp_path, **{"usb.auto_export.eject_after": False}), write_files=True, n_sessions=1)
    stick = await asyncio.to_thread(sticks, "ext4")
    log = StateLog(core)
    async with usb.running(core) as mgr:
        await asyncio.to_thread(stick.insert)
        await until(lambda: core.jobs.list() and core.jobs.list()[0].state.finished, "the export", 20)
        dev = await wait_state(core, stick.label, S.MOUNTED)
        evaluated = []
        orig = mgr.watcher._evaluate
        mgr.watcher._evaluate = lambda disk: (evaluated.append(disk), orig(disk))
        for _ in range(10):
            await asyncio.to_thread(subprocess.run, ["udevadm", "trigger", "--action=change", stick.part])
        await asyncio.sleep(0.2 + 0.5)          # settle_seconds + margin
        assert evaluated.count(stick.loop.rsplit("/", 1)[1]) <= 2, evaluated
        assert len(core.jobs.list()) == 1
        assert by_label(core, stick.label).state == S.MOUNTED
        await core.eject(dev.id)
    await log.close()
    assert log.states[stick.label].count("detected") == 1


def _links(root, n: int) -> None:
    """``n`` names in root: hard links (no inode, no data; ext4 takes 65,000 per file)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(n):
            if i % 60_000 == 0:
                src = f"x{i}"
                os.close(os.open(src, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
            os.link(src, f"{i:07d}-meeting-notes", src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


_MOUNT = ("import asyncio, sys\n"
          "from steno_exportd.usb.udisks import UDisks\n"
          "async def main():\n"
          "    ud = await UDisks.connect()\n"
          "    try:\n"
          "        print(await ud.mount(sys.argv[1]), end='')\n"
          "    finally:\n"
          "        await ud.close()\n"
          "asyncio.run(main())\n")


async def test_a_mounted_stick_of_many_root_entries_is_checked_without_reading_them_all(sticks, tmp_path):
    """A stick whose root holds 60,000 entries (a million works as well), already mounted: each mount of it checks
    the mount is alive before using it, and that check listed the whole root (os.listdir: some 470 getdents64
    calls here, a million names in memory on a bigger stick). Now the check reads the root's first entries only:
    counted by strace, at most 2 getdents64 calls on the mount point."""
    require_tool("strace")
    stick = await asyncio.to_thread(sticks, "ext4")
    await asyncio.to_thread(prepare, stick, {}, lambda root: _links(root, 60_000))
    await asyncio.to_thread(stick.insert)
    await asyncio.to_thread(subprocess.run, ["udevadm", "settle", "-t", "10"], check=False)
    ud = await UDisks.connect()
    try:
        mp = await ud.mount(stick.part)
        trace = tmp_path / "getdents.trace"
        p = await asyncio.to_thread(
            subprocess.run, ["strace", "-f", "-qq", "-P", mp, "-e", "trace=getdents64", "-o", str(trace),
                             sys.executable, "-c", _MOUNT, stick.part], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and p.stdout == mp, p.stderr[-2000:]
        calls = [line for line in trace.read_text().splitlines() if "getdents64(" in line]
        assert len(calls) <= 2, f"{len(calls)} getdents64 calls on {mp}"
    finally:
        await ud.unmount(stick.part)
        await ud.close()


async def test_the_late_removal_of_a_sticks_old_node_leaves_it_at_its_new_one(sticks, tmp_path):
    """An eject of a loop 'stick' (udisks' Loop.Delete) leaves its partitions behind, gone only when that loop is
    next used: the removal of the old node comes late, while the stick is back at a new node. It must not mark the
    stick removed nor stop its export there (a cancelled insertion that exported nothing and said nothing)."""
    core = FakeCore(make_cfg(tmp_path, **{"usb.auto_export.enabled": False}), write_files=True, n_sessions=2,
                    file_size=4 << 20, chunk_delay=0.05)
    stick = await asyncio.to_thread(sticks, "ext4")
    blocker = tmp_path / "blocker.img"
    blocker.write_bytes(b"\0" * (1 << 20))
    blocked = ""
    log = StateLog(core)
    try:
        async with usb.running(core) as mgr:
            await asyncio.to_thread(stick.insert)
            dev = await wait_state(core, stick.label, S.MOUNTED)
            assert await mgr.eject(dev.id) == "loop_delete"
            await until(lambda: not loop_attached(stick), "the loop to be deleted", 20)
            old = os.path.basename(stick.loop)
            assert os.path.exists(f"/sys/class/block/{old}p1"), "Loop.Delete left no partition behind"
            # the old loop is taken by something else, so the stick comes back on another one
            blocked = subprocess.run(["losetup", f"/dev/{old}", str(blocker)], check=True, capture_output=True) \
                and f"/dev/{old}"
            core.set_auto_export(True)
            await asyncio.to_thread(stick.insert)
            assert os.path.basename(stick.loop) != old
            await wait_state(core, stick.label, S.EXPORTING)
            seen = len(log.states[stick.label])
            # the old node goes now (partx -d: what the next user of that loop does first)
            await asyncio.to_thread(subprocess.run, ["partx", "-d", f"/dev/{old}"], check=True, capture_output=True)
            await wait_state(core, stick.label, S.SAFE_TO_REMOVE, S.REMOVED, S.ERROR, timeout=30)
            await log.close()
            after = log.states[stick.label][seen:]
            assert str(S.REMOVED) not in after and after[-1] == str(S.SAFE_TO_REMOVE), after
            assert [ids for _, ids in core.written] == [[1, 2]]
    finally:
        if blocked:
            subprocess.run(["losetup", "-d", blocked], check=False)


async def _with_a_clone_plugged_in_mid_export(sticks, tmp_path, fs: str, test):
    """A stick exporting, then its clone (same filesystem UUID: a dd copy) plugged in beside it; ``test(mgr, core,
    stick, clone, dev)`` runs then, with the clone present."""
    core = FakeCore(make_cfg(tmp_path), write_files=True, n_sessions=2, file_size=8 << 20, chunk_delay=0.05)
    stick = await asyncio.to_thread(sticks, fs)
    clone = Stick(image=tmp_path / "clone.img", label=stick.label, fs=fs)
    await asyncio.to_thread(shutil.copyfile, stick.image, clone.image)
    try:
        async with usb.running(core) as mgr:
            await asyncio.to_thread(stick.insert)
            dev = await wait_state(core, stick.label, S.EXPORTING)
            await asyncio.to_thread(clone.insert)
            # (sync point only: the manager has had the clone's insertion)
            await until(lambda: os.path.realpath(clone.part) in map(os.path.realpath, mgr._by_node),
                        "the manager to see the clone", 20, in_thread=False)
            assert by_label(core, stick.label).state in (S.EXPORTING, S.VERIFYING)
            await test(mgr, core, stick, clone, dev)
    finally:
        await asyncio.to_thread(clone.cleanup)


async def test_an_eject_with_a_clone_plugged_in_ejects_the_stick_it_exports_to(sticks, tmp_path):
    """Two sticks cloned from one image share the filesystem UUID. The clone plugged in while the first one exports
    is not the stick the user ejects: 'safe to remove' must mean the exported-to stick is unmounted."""
    async def test(mgr, core, stick, clone, dev):
        how = await mgr.eject(dev.id)
        assert not mounted_in_proc(dev.mount_point), f"{how}, safe to remove, but the stick is still mounted"
        assert not loop_attached(stick) and loop_attached(clone), "the clone was powered off instead"
        assert by_label(core, stick.label).state == S.SAFE_TO_REMOVE
    await _with_a_clone_plugged_in_mid_export(sticks, tmp_path, "ext4", test)


async def test_a_pull_mid_export_with_a_clone_plugged_in_is_a_removal(sticks, tmp_path):
    """The stick being exported to is pulled while its clone (same UUID) is plugged in: that is its removal (not an
    export error on a stick still listed)."""
    async def test(mgr, core, stick, clone, dev):
        await asyncio.to_thread(stick.yank)
        await wait_state(core, stick.label, S.REMOVED, timeout=30)     # (its export fails first: an 'error' on the way)
    await _with_a_clone_plugged_in_mid_export(sticks, tmp_path, "exfat", test)
