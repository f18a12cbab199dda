"""An archive's folder as it is when the archive is written, not only when its job was asked for: between the two a
queued job waits (behind another export), and meanwhile its folder can become another one (a symlink swapped in, a
folder renamed, a stick remounted). The archive never lands in the recorder's own data folder."""
from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from steno_exportd import events as ev
from steno_exportd.core import Core
from steno_exportd.engine.targets import TEMP_PREFIX, DirectoryTarget
from steno_exportd.errors import StenoError
from tests.configs import make_config
from tests.parts.swap import StoreWatch, race_going


def _flipper(drop: Path, recorder: Path, real: Path) -> tuple[threading.Thread, threading.Event, list[int]]:
    """``drop``, a symlink to the new folder ``real``, and a thread (not started) that flips it between the recorder's
    data folder and ``real`` every few milliseconds until its event is set; [flips made so far]."""
    real.mkdir()
    drop.symlink_to(real)
    stop = threading.Event()
    flips = [0]

    def flip() -> None:
        while not stop.is_set():
            for to in (recorder, real):
                tmp = drop.with_name(".drop.swap")
                tmp.symlink_to(to)
                os.replace(tmp, drop)
                time.sleep(0.001)
            flips[0] += 1
    return threading.Thread(target=flip, name="test-flipper", daemon=True), stop, flips


class _Held(DirectoryTarget):
    """A folder export that waits at its first folder until the test lets it go: the job the archive queues behind."""

    def __init__(self, root: Path, go: threading.Event, started: threading.Event) -> None:
        super().__init__(root)
        self._go, self._started = go, started

    def mkdir(self, rel: str) -> None:
        self._started.set()
        self._go.wait(30)
        super().mkdir(rel)


def _new_in(folder: Path, before: set[str]) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if str(p.relative_to(folder)) not in before)


@pytest.fixture
def recording(tmp_path, demo_library):
    """The recorder's database (a demo library's copy) held open as the recorder holds it while it runs, so its
    WAL's -wal and -shm files are there before a test looks at the folder and stay there: the daemon's reads made
    them and its last close removed them, and a watcher took them for files of ours (once in 20 runs here)."""
    db = Path(demo_library(tmp_path / "rec", sessions=2))
    recorder = sqlite3.connect(db)
    recorder.execute("SELECT count(*) FROM sqlite_master").fetchone()
    assert Path(f"{db}-wal").exists() and Path(f"{db}-shm").exists()
    yield db
    recorder.close()


async def _core(tmp_path, db: Path):
    cfg = make_config(tmp_path, **{"recorder.db_path": str(db), "export.max_concurrent_jobs": 1,
                                   "export.formats": ["txt", "audio"]})
    core = Core(cfg)
    await core.start()
    return core, db.parent


async def test_an_archive_whose_folder_became_the_recorders_while_it_waited_is_not_written_there(tmp_path, recording):
    """A ZIP asked for into an allowed folder, queued behind another export; while it waits, its folder is swapped
    for a symlink to the recorder's data folder. The check made when it was asked for passed; the write followed the
    symlink and the ZIP (every recording in it) landed beside the recorder's database. It is refused when it runs,
    and nothing of it is in the recorder's folder."""
    core, recorder = await _core(tmp_path, recording)
    drop = tmp_path / "exports" / "drop"
    drop.mkdir()
    first = tmp_path / "exports" / "first"
    first.mkdir()
    go, started = threading.Event(), threading.Event()
    try:
        before = {str(p.relative_to(recorder)) for p in recorder.rglob("*")}
        held = await core.export_sessions([1], ["txt"], _Held(first, go, started), trusted=True)
        assert await asyncio.to_thread(started.wait, 30)
        job = await core.export_sessions([1, 2], ["txt", "audio"], str(drop / "meetings.zip"))
        assert job.state == ev.JobState.QUEUED
        drop.rename(tmp_path / "exports" / "drop.old")      # the folder becomes the recorder's
        drop.symlink_to(recorder)
        go.set()
        assert (await core.jobs.wait(held.id, 30)).state == ev.JobState.COMPLETED
        done = await core.jobs.wait(job.id, 60)
        landed = _new_in(recorder, before)
        assert landed == [], f"the archive was written into the recorder's data folder: {landed}"
        assert done.state == ev.JobState.FAILED, (done.state, done.results)
        assert "refusing to export into the recorder's data folder" in done.error, done.error
    finally:
        go.set()
        await core.stop()


async def test_an_archive_folder_flipped_to_the_recorders_and_back_never_gets_a_byte_there(tmp_path, recording):
    """The same swap as a race: a thread flips the archive's folder between a real folder and a symlink to the
    recorder's data folder every few milliseconds while ZIPs are written into it, one after the other. A watcher
    holds every file that appears in the recorder's folder (a temp file removed afterwards too): none is ours. Every
    job either wrote its ZIP into the real folder or failed, saying why."""
    core, recorder = await _core(tmp_path, recording)
    drop = tmp_path / "exports" / "drop"
    real = tmp_path / "exports" / "real"
    flipper, stop, flips = _flipper(drop, recorder, real)

    watch = StoreWatch(recorder)
    ends: list[ev.JobSnapshot] = []
    names: list[str] = []
    refused = 0
    watch.start()
    flipper.start()
    try:
        start, i = time.monotonic(), 0
        while race_going(start, flips, ends) and i < 400:
            try:        # asked for while it is the recorder's: refused at once, as before
                job = await core.export_sessions([1, 2], ["txt", "audio"], str(drop / f"m{i}.zip"))
            except StenoError as e:
                assert "not under an allowed folder" in str(e) or "recorder's data folder" in str(e), e
                refused += 1
            else:
                ends.append(await core.jobs.wait(job.id, 60))
                names.append(f"m{i}.zip")
            i += 1
    finally:
        stop.set()
        flipper.join(10)
        watch.stop.set()
        watch.join(10)
        ours = sorted(path for path, _fd in watch.held.values()
                      if os.path.basename(path).startswith(TEMP_PREFIX) or path.endswith(".zip"))
        watch.close()
        await core.stop()
    assert flips[0] > 20 and len(ends) >= 5, (flips[0], len(ends))
    assert ours == [], f"{len(ours)} of our files appeared in the recorder's data folder: {ours[:5]}"
    assert {e.state for e in ends} <= {ev.JobState.COMPLETED, ev.JobState.FAILED}, [e.state for e in ends]
    for e in ends:
        if e.state == ev.JobState.FAILED:
            assert "recorder's data folder" in e.error or "no longer the folder" in e.error, e.error
    written = sorted(p.name for p in real.iterdir())
    assert written == sorted(n for n, e in zip(names, ends) if e.state == ev.JobState.COMPLETED), written


async def test_a_folder_export_whose_folder_flips_to_the_recorders_never_writes_there(tmp_path, recording):
    """The same flip under a folder export: its folder is checked when the job starts (FolderKind.open), then every
    file's open walked from its path again, comparing the filesystem only: a symlink to the recorder's data folder
    (the same disk) put in its place mid-export took the session folders there. A watcher holds every file that
    appears in the recorder's folder: none is ours; every job wrote into the real folder or failed saying why."""
    core, recorder = await _core(tmp_path, recording)
    drop = tmp_path / "exports" / "drop"
    real = tmp_path / "exports" / "real"
    flipper, stop, flips = _flipper(drop, recorder, real)

    before = {str(p.relative_to(recorder)) for p in recorder.rglob("*")}
    watch = StoreWatch(recorder)
    ends: list[ev.JobSnapshot] = []
    watch.start()
    flipper.start()
    try:
        start = time.monotonic()
        while race_going(start, flips, ends):
            try:
                job = await core.export_sessions([1, 2], ["txt", "audio"], str(drop))
            except StenoError as e:
                assert "not under an allowed folder" in str(e) or "recorder's data folder" in str(e), e
                continue
            ends.append(await core.jobs.wait(job.id, 60))
            if (real / "SilentSteno").exists():
                shutil.rmtree(real / "SilentSteno")       # (each job writes every session again)
    finally:
        stop.set()
        flipper.join(10)
        watch.stop.set()
        watch.join(10)
        ours = sorted(os.path.relpath(path, recorder) for path, _fd in watch.held.values()
                      if os.path.relpath(path, recorder) not in before)
        watch.close()
        landed = _new_in(recorder, before)
        await core.stop()
    assert flips[0] > 20 and len(ends) >= 5, (flips[0], len(ends))
    assert ours == [] and landed == [], f"our files appeared in the recorder's data folder: {(ours + landed)[:5]}"
    for e in ends:
        assert e.state in (ev.JobState.COMPLETED, ev.JobState.FAILED), e.state
        problems = [e.error] + [r.error for r in e.results if not r.ok]
        if e.state == ev.JobState.FAILED or not all(r.ok for r in e.results):
            assert any("recorder's data folder" in p or "no longer the folder" in p for p in problems), problems
