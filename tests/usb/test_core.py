"""The USB adapter on the real Core (library, engine, manifest) with a copy of a demo library."""
from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from steno_exportd.core import Core
from steno_exportd.engine import targets
from steno_exportd.usb import manager as usb
from steno_exportd.events import DeviceState as S, JobState
from tests.parts import sha256sum_check, until
from tests.recorder_db import add_session_like
from tests.usb.helpers import by_label, loop_attached, make_cfg, stick_files, wait_state

pytestmark = pytest.mark.real


@pytest.fixture
async def real_core(tmp_path, demo_library):
    db = await asyncio.to_thread(demo_library, tmp_path / "library", sessions=2, seed=1, small=False)
    cfg = make_cfg(tmp_path, **{"usb.auto_export.formats": ["txt", "html", "audio"]})
    core = Core(cfg)
    await core.start()
    try:
        yield core, db
    finally:
        await core.stop()


async def test_real_core_exports_new_sessions_then_only_the_added_one(sticks, real_core):
    core, db = real_core
    stick = await asyncio.to_thread(sticks, "exfat", size_mb=256)
    async with usb.running(core):
        await asyncio.to_thread(stick.insert)
        dev = await wait_state(core, stick.label, S.SAFE_TO_REMOVE, S.ERROR, timeout=120)
        assert dev.state == S.SAFE_TO_REMOVE, dev.error
        first = [j for j in core.jobs.list() if j.state.finished]
        assert len(first) == 1
        warned = [r for r in first[0].results if r.status == "ok with warnings"]
        # the demo library has one session whose recording is missing: exported without it, reported, and
        # the job is not "failed" (everything it could write is there), so the stick is ejected
        assert first[0].state == JobState.COMPLETED and len(warned) == 1, first[0].error
        assert "no usable audio file" in warned[0].warnings[0] and "without" in first[0].error
        assert all(f.ok or f.source_problem for f in warned[0].files)
        exported = {r.uuid for r in first[0].results if r.ok and not r.skipped}
        assert exported and not loop_attached(stick)

        await asyncio.to_thread(stick.insert)                                   # the same stick again: nothing new
        await until(lambda: not loop_attached(stick), "second eject", 60)
        await wait_state(core, stick.label, S.SAFE_TO_REMOVE, timeout=5)
        assert len(core.jobs.list()) == 1

        new_uuid = add_session_like(db)                  # a copy of the demo DB, never the recorder's
        await core.refresh_library()
        await asyncio.to_thread(stick.insert)
        await until(lambda: len(core.jobs.list()) == 2 and core.jobs.list()[-1].state.finished,
                    "the export of the added session", 120)
        job = max(core.jobs.list(), key=lambda j: j.id)
        assert job.state == JobState.COMPLETED, job.error
        assert {r.uuid for r in job.results if r.ok and not r.skipped} == {new_uuid}
        await wait_state(core, stick.label, S.SAFE_TO_REMOVE, timeout=60)
    # what a person sees on the stick: the files, checkable with sha256sum -c
    def check(root):
        top = root / core.cfg.export.root_folder
        return sha256sum_check(top), sorted(os.listdir(top))
    problems, names = await asyncio.to_thread(stick_files, stick, check)
    assert not problems
    assert "manifest.json" in names and "SHA256SUMS" in names


async def test_real_core_pull_mid_export_records_nothing(sticks, real_core, monkeypatch):
    core, db = real_core
    stick = await asyncio.to_thread(sticks, "exfat", size_mb=256)
    # mid-export: no file is written until the pull has begun (its FUSE helper killed), so the export cannot end
    # before the pull, on a slow machine neither; the pull may still come before the job opens the stick or while it
    # writes
    pulled = threading.Event()
    write = targets._DirWrite.write

    def held(self, data):
        deadline = time.monotonic() + 60
        while not pulled.is_set() and stick.fuse_helpers() and time.monotonic() < deadline:
            time.sleep(0.01)
        pulled.set()
        return write(self, data)
    monkeypatch.setattr(targets._DirWrite, "write", held)
    async with usb.running(core):
        await asyncio.to_thread(stick.insert)
        await wait_state(core, stick.label, S.EXPORTING, timeout=60)
        try:
            await asyncio.to_thread(stick.yank)
        finally:
            pulled.set()                # the next insertion's export (its own FUSE helper) is not held
        job = await until(lambda: next((j for j in core.jobs.list() if j.state.finished), None), "job end", 60)
        assert job.state == JobState.FAILED and job.error.startswith("target gone"), job.error
        # the adapter learns of the job's end through the core's events, a moment after the job list shows it
        dev = await until(lambda: (d := by_label(core, stick.label)).state not in (S.EXPORTING, S.VERIFYING) and d,
                          "the adapter to see the job's end", 30, in_thread=False)
        assert dev.state in (S.REMOVED, S.ERROR), dev
        # the job can fail on the dead mount before udev reports the removal: wait for it
        await wait_state(core, stick.label, S.REMOVED, timeout=30)
        await asyncio.to_thread(stick.insert)                                   # the next insertion completes it
        dev = await wait_state(core, stick.label, S.SAFE_TO_REMOVE, S.ERROR, timeout=120)
        assert dev.state == S.SAFE_TO_REMOVE, dev.error
        last = max(core.jobs.list(), key=lambda j: j.id)
        # every file written and verified, except the recording of the demo session that lacks it
        assert last.state == JobState.COMPLETED, last.error
        assert all(f.ok or f.source_problem for r in last.results for f in r.files), last.error
        assert [r.status for r in last.results if r.warnings] == ["ok with warnings"]


@pytest.mark.parametrize("suffix", [".zip", ".tgz"])
async def test_a_stick_labelled_like_an_archive_is_exported_into_not_beside(sticks, real_core, suffix):
    """A stick's author chose its label: udisks mounts an ext4 stick labelled 'REC1234.zip' at
    /media/root/REC1234.zip. That is the stick's folder, never an archive to write beside it: nothing is written
    into the folder that holds the mount point (outside the stick, the recorder's own disk), and the export
    lands on the stick as on any other."""
    import threading
    import uuid as uuidlib
    core, db = real_core
    stick = await asyncio.to_thread(sticks, "ext4", label="REC" + uuidlib.uuid4().hex[:4].upper() + suffix,
                                    size_mb=256)
    seen: set[str] = set()
    stop = threading.Event()

    def watch(parent: str) -> None:
        while not stop.is_set():
            try:
                seen.update(n for n in os.listdir(parent) if n.startswith(".steno"))
            except OSError:
                pass
            stop.wait(0.002)
    watcher = None
    async with usb.running(core):
        await asyncio.to_thread(stick.insert)
        dev = await wait_state(core, stick.label, S.MOUNTED, S.EXPORTING, S.SAFE_TO_REMOVE, S.ERROR, timeout=60)
        if dev.mount_point:
            watcher = threading.Thread(target=watch, args=(os.path.dirname(dev.mount_point),), daemon=True)
            watcher.start()
        dev = await wait_state(core, stick.label, S.SAFE_TO_REMOVE, S.ERROR, timeout=120)
        stop.set()
        if watcher is not None:
            await asyncio.to_thread(watcher.join)
        assert not seen, f"written beside the stick's mount point: {seen}"
        assert dev.state == S.SAFE_TO_REMOVE, dev.error
        job = max(core.jobs.list(), key=lambda j: j.id)
        assert job.state == JobState.COMPLETED and job.operation == "export", job.error
    names = await asyncio.to_thread(stick_files, stick, lambda root: sorted(os.listdir(root / "SilentSteno")))
    assert "manifest.json" in names and "SHA256SUMS" in names
