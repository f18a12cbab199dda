"""An export job reads the meetings it was asked for: the recorder's database restored between the request (the keys
resolved on the listing) and the job's reads (another meeting under the same session id) fails that session, saying
why, and never writes the other meeting under this one's name."""
from __future__ import annotations

import asyncio
import io
import threading
import zipfile
from pathlib import Path

from steno_exportd import events as ev
from steno_exportd.core import Core
from steno_exportd.engine.export import SimpleSpec, run_export
from steno_exportd.engine.options import ExportOptions
from steno_exportd.errors import NotFoundError
from tests.configs import make_config
from tests.fakes import library as fake_library
from tests.recorder_db import restored_pair, restoring, rounds


def _written(path: Path) -> bytes:
    """Every byte an export left at ``path``: a folder's files, or the entries of a ZIP."""
    if path.suffix == ".zip":
        if not path.exists():
            return b""
        with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as z:
            return b"".join(z.read(n) for n in z.namelist())
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())


async def test_an_export_job_never_writes_another_meeting_while_the_database_is_restored(tmp_path):
    """Exports to folders and ZIP files of a meeting named by its uuid or short id (as the page's "Send to", D-Bus
    StartExport and steno-exportctl ask, through Core.export_sessions) while the recorder's database is restored again
    and again: each job writes that meeting, or fails that session saying it is another meeting now; none writes
    the other one (the job read its sessions by number: a restore after the request exported the other meeting)."""
    lib = tmp_path / "swapped"
    sid, uuid, fine, secret = restored_pair(lib)
    out = tmp_path / "exports"
    core = Core(make_config(tmp_path, **{"recorder.db_path": str(lib / "silent_steno.db")}))
    await core.start()
    stop, swaps = threading.Event(), [0]
    asked = {"queued": 0, "absent": 0}
    jobs: list[tuple[int, Path]] = []
    swapper = threading.Thread(target=restoring, args=(lib, stop, swaps))
    swapper.start()
    try:
        try:
            for i in rounds(36, swaps):
                key = uuid if i % 3 else uuid.replace("-", "")[:8]      # its uuid, or its short id
                target = out / (f"m{i}.zip" if i % 4 == 3 else f"j{i}")
                if target.suffix != ".zip":
                    target.mkdir()
                try:
                    snap = await core.export_sessions([key], ["txt", "json", "audio"], str(target))
                except NotFoundError as e:      # the database of the moment is b's, which has no such meeting
                    assert "no session" in str(e), e
                    asked["absent"] += 1
                    continue
                asked["queued"] += 1
                jobs.append((snap.id, target))
                await asyncio.sleep(0.01 * (i % 3))     # (some asked while others run, some after a restore)
            done = [await core.jobs.wait(jid, 120) for jid, _ in jobs]
        finally:
            stop.set()
            await asyncio.to_thread(swapper.join)
    finally:
        await core.stop()
    counts = {"right": 0, "wrong": 0, "gone": 0, "other": 0}
    odd = []
    for snap, (_, target) in zip(done, jobs):
        written = _written(target)
        if b"layoffs" in written or b"Board meeting" in written or secret in written:
            got = "wrong"
        elif snap.state == ev.JobState.COMPLETED and b"Lunch is on Friday" in written and fine in written:
            got = "right"
        elif (snap.state == ev.JobState.FAILED and [r.error for r in snap.results if not r.ok]
              and all("is another meeting now" in r.error and r.uuid == uuid for r in snap.results)):
            got = "gone"
        else:
            got = "other"
        counts[got] += 1
        if got in ("wrong", "other"):
            odd.append((str(target.name), str(snap.state), snap.error, [r.title for r in snap.results]))
    assert swaps[0] > 100 and counts["right"] > 0 and asked["queued"] > 0, (swaps, counts, asked)
    assert counts["wrong"] == 0, (counts, odd[:5])
    assert counts["other"] == 0, (counts, odd[:5])
    assert sum(counts.values()) == asked["queued"], (counts, asked)


def test_a_replaced_session_fails_alone_and_the_others_are_exported(tmp_path):
    """A job's sessions with the uuids they had when it was asked for: the one whose id names another meeting now is
    that session's failed result saying so, the others are written (a folder, and a ZIP)."""
    lib = fake_library(tmp_path, 3)
    cfg = make_config(tmp_path)
    meetings = sorted(lib.list_sessions(), key=lambda s: s.id)
    uuids = (meetings[0].uuid, "0badc0de-0000-4000-8000-000000000000", meetings[2].uuid)
    for target in (tmp_path / "folder", tmp_path / "meetings.zip"):
        if target.suffix != ".zip":
            target.mkdir()
        spec = SimpleSpec(str(target), tuple(s.id for s in meetings), ("txt",), ExportOptions(),
                          session_uuids=uuids)
        results = {r.session_id: r for r in run_export(lib, spec, cfg)}
        assert [results[s.id].ok for s in meetings] == [True, False, True], results
        r = results[meetings[1].id]
        assert f"session {meetings[1].id} is another meeting now" in r.error and r.uuid == uuids[1], r
        assert (results[meetings[0].id].title, results[meetings[2].id].title) == (meetings[0].title, meetings[2].title)
        written = _written(target)
        assert meetings[0].title.encode() in written and meetings[2].title.encode() in written
        assert meetings[1].title.encode() not in written


async def test_a_job_stored_before_uuids_were_kept_resumes(tmp_path):
    """A job interrupted by a restart and stored by a version that kept no uuids resumes (each session read by its
    id, as then); one stored now keeps them."""
    import json
    import sqlite3

    lib = fake_library(tmp_path, 2)
    out = tmp_path / "exports"
    core = Core(make_config(tmp_path), library=lib)
    await core.start()
    try:
        first = await core.jobs.wait((await core.export_sessions([1, 2], ["txt"], str(out))).id, 60)
        assert first.state == ev.JobState.COMPLETED, first.error
        spec = next(d["spec"] for d in await asyncio.to_thread(core.state.jobs) if d["id"] == first.id)
        assert spec["session_uuids"] == [s.uuid for s in (lib.get_session(1), lib.get_session(2))]
        del spec["session_uuids"]                   # as a version before stored it
        db = sqlite3.connect(core.state.path)
        with db:
            db.execute("UPDATE jobs SET spec = ?, state = 'interrupted' WHERE id = ?", (json.dumps(spec), first.id))
        db.close()
        again = await core.jobs.wait((await core.jobs.resume(first.id)).id, 60)
        assert again.state == ev.JobState.COMPLETED and len(again.results) == 2, (again.error, again.results)
    finally:
        await core.stop()
