"""Push jobs through the core ("smb:<remote>"): a real smbd, a real core on a demo library."""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess

import pytest

from steno_exportd import demo, events
from steno_exportd.core import Core
from steno_exportd.engine.options import ExportOptions
from steno_exportd.engine.targets import MARKER, TEMP_PREFIX
from steno_exportd.errors import NotFoundError
from steno_exportd.library import Library
from steno_exportd.smb.push import SmbKind
from tests import parts
from tests.configs import make_config
from tests.parts import sha256sum_check, until
from tests.recorder_db import add_session_like, sessions_with_audio


@pytest.fixture
async def push_core(office, tmp_path, demo_library):
    smbd, remote, root, _ = office
    lib = tmp_path / "library"
    await asyncio.to_thread(demo_library, lib, sessions=7, seed=6, small=False)
    cfg = make_config(tmp_path, smb={"recorder_folder": "rec-1", "remotes": [dataclasses.asdict(remote)]})
    core = Core(cfg)
    core.targets.register(SmbKind())            # as the daemon does
    await core.start()
    yield core, root, lib
    await core.stop()


def with_audio(lib):
    return sessions_with_audio(lib / demo.DB_NAME)


async def finished(core, job_id, timeout=120):
    return await core.jobs.wait(job_id, timeout)


async def test_push_job_lands_verified_and_the_second_is_incremental(push_core):
    core, root, lib = push_core
    ids = with_audio(lib)[:3]
    seen = []

    async def follow():
        async for e in core.events.subscribe():
            if isinstance(e, events.JobUpdated):
                seen.append(e.job)
    watcher = asyncio.create_task(follow())
    job = await core.export_sessions(ids, ["txt", "json", "audio"], "smb:office", ExportOptions())
    assert job.operation == "push" and job.target == "smb:office"
    done = await finished(core, job.id)
    watcher.cancel()
    assert done.state == events.JobState.COMPLETED, done.error
    nas = root / "nas" / "rec-1"
    assert not await asyncio.to_thread(sha256sum_check, nas)
    assert len(list(nas.rglob("transcript.txt"))) == 3 and (nas / "manifest.json").is_file()
    assert any(0 < j.bytes_done < j.bytes_total for j in seen if j.id == job.id)
    hist = core.state.history(None, 100)
    assert any(h["target"] == "smb:office" for h in hist)
    stamps = {p: p.stat().st_mtime_ns for p in nas.rglob("*") if p.is_file() and p.suffix != ".json"
              and p.name != "SHA256SUMS"}
    again = await finished(core, (await core.export_sessions(ids, ["txt", "json", "audio"], "smb:office",
                                                             ExportOptions())).id)
    assert again.state == events.JobState.COMPLETED
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps          # nothing re-sent
    assert all(r.ok and r.skipped for r in again.results)
    state = pathlib.Path(core.cfg.state.dir)            # nothing staged on the recorder: no second copy
    kept = {p.relative_to(state).as_posix(): p.stat().st_size for p in state.rglob("*") if p.is_file()}
    dbs = ("state.db", "search.db", "access.db", "cache/hashes.db")
    assert set(kept) <= {f"{db}{wal}" for db in dbs for wal in ("", "-wal", "-shm")} | {"recorder-id", "board-id"}, kept
    assert kept.get("board-id", 0) <= 64, kept          # (an id for its claims where the board has no serial)
    assert not (state / "push").exists()


async def test_two_pushes_to_one_remote_at_once_both_land(push_core):
    core, root, lib = push_core
    ids = with_audio(lib)
    a = await core.export_sessions(ids[:2], ["txt", "json"], "smb:office", ExportOptions())
    b = await core.export_sessions(ids[2:4], ["txt", "json"], "smb:office", ExportOptions())
    for j in (a, b):
        done = await finished(core, j.id)
        assert done.state == events.JobState.COMPLETED, done.error
    nas = root / "nas" / "rec-1"
    assert len(list(nas.rglob("transcript.txt"))) == 4
    assert not await asyncio.to_thread(sha256sum_check, nas)
    assert not [p for p in nas.rglob(".steno-tmp-*")]


async def test_unknown_remote_and_a_wrong_password(push_core, tmp_path):
    core, root, lib = push_core
    with pytest.raises(NotFoundError, match="known: office"):
        await core.export_sessions(with_audio(lib)[:1], ["txt"], "smb:nas2", ExportOptions())
    pw = next(iter(core.cfg.smb.remotes)).password_file
    with open(pw, "w") as f:
        f.write("wrong password\n")
    done = await finished(core, (await core.export_sessions(with_audio(lib)[:1], ["txt"], "smb:office",
                                                            ExportOptions())).id)
    assert done.state == events.JobState.FAILED
    assert "smb:office" in done.error and ("password" in done.error.lower() or "logon" in done.error.lower())
    assert not list((root / "nas").rglob("transcript.txt"))


@pytest.fixture
async def slow_core(office, tmp_path, demo_library):
    """A core whose remote is bandwidth-limited (4 MiB/s): a push takes long enough to cancel."""
    smbd, remote, root, _ = office
    lib = tmp_path / "library"
    await asyncio.to_thread(demo_library, lib, sessions=5, seed=6, small=False)
    cfg = make_config(tmp_path, smb={"recorder_folder": "rec-1",
                                     "remotes": [dict(dataclasses.asdict(remote), bandwidth_limit_kbps=4096)]})
    core = Core(cfg)
    core.targets.register(SmbKind())
    await core.start()
    yield core, root, lib
    await core.stop()


def biggest_recording(lib):
    l = Library(lib / demo.DB_NAME)
    try:
        found = [l.get_session(s.id) for s in l.list_sessions(exportable_only=True)]
        return max((s for s in found if s.audio is not None), key=lambda s: s.audio.size)
    finally:
        l.close()


async def test_cancel_mid_push_leaves_no_file_under_a_final_name(slow_core):
    core, root, lib = slow_core
    big = biggest_recording(lib)
    assert big.audio.size > 20_000_000            # ~5 s at the limit
    job = await core.export_sessions([big.id], ["txt", "audio"], "smb:office", ExportOptions())
    ext = big.audio.path.suffix

    nas = root / "nas" / "rec-1"

    def pushing_audio():
        j = core.jobs.get(job.id)
        assert not j.state.finished, j.error
        return j.current_file.endswith(ext) and j.bytes_done > 0 and \
            any(p.stat().st_size > 0 for p in nas.rglob(f"{TEMP_PREFIX}*{ext}"))
    for _ in range(600):
        if pushing_audio():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the push never reached the recording: {core.jobs.get(job.id)}")
    mid = core.jobs.get(job.id)
    assert 0 < mid.bytes_done < mid.bytes_total
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    core.jobs.cancel(job.id)
    done = await finished(core, job.id)
    assert loop.time() - t0 < 3, "cancel waited for the whole file"
    assert done.state == events.JobState.CANCELLED
    on_nas = [p for p in nas.rglob("*") if p.is_file()]
    assert not [p for p in on_nas if p.name.startswith(TEMP_PREFIX)], "a temp file was left"
    assert not [p for p in on_nas if p.suffix == ext], "the cut recording sits under its final name"
    landed = {p.name: p.read_bytes() for p in on_nas if p.parent != nas}
    # the transcript went before the recording; the folder (still <folder>.partial) holds our marker
    assert sorted(landed) == [MARKER, "transcript.txt"], landed
    remote = dataclasses.replace(core.cfg.smb.remotes[0], bandwidth_limit_kbps=0)    # the rerun at full speed
    await core.reload(dataclasses.replace(core.cfg, smb=dataclasses.replace(core.cfg.smb, remotes=[remote])))
    again = await finished(core, (await core.export_sessions([big.id], ["txt", "audio"], "smb:office",
                                                             ExportOptions())).id)
    assert again.state == events.JobState.COMPLETED, again.error
    assert not await asyncio.to_thread(sha256sum_check, nas)
    # what did land before the cancel was complete: the same bytes as the finished push's
    assert [p.read_bytes() for p in nas.rglob("transcript.txt")] == [landed["transcript.txt"]]
    recording = next(nas.rglob(f"*{ext}"))
    assert await asyncio.to_thread(lambda: hashlib.sha256(recording.read_bytes()).digest()) == \
        await asyncio.to_thread(lambda: hashlib.sha256(big.audio.path.read_bytes()).digest())
    assert not list(nas.rglob("*.partial"))


async def test_a_push_job_cut_by_a_drop_resumes_the_recording_in_the_next_job(slow_core, office, monkeypatch,
                                                                              caplog):
    """The NAS goes away mid-recording (smbd killed): the job fails; the next job sends only the rest."""
    import logging

    from steno_exportd.smb import target as smbtarget
    from tests import parts
    monkeypatch.setattr(smbtarget, "RESUME_MIN", 1024 * 1024)         # 64 MiB in the product
    monkeypatch.setattr(smbtarget, "RESUME_BACKOFF", 1024 * 1024)
    core, root, lib = slow_core
    smbd = office[0]                                                  # the same smbd as slow_core's
    big = biggest_recording(lib)
    nas = root / "nas" / "rec-1"

    def cut_at_8mb():
        for p in nas.rglob(f"{TEMP_PREFIX}*{big.audio.path.suffix}"):
            try:
                if p.stat().st_size >= 8 * 1024 * 1024:
                    return p
            except FileNotFoundError:
                pass
        return None
    job = await core.export_sessions([big.id], ["txt", "audio"], "smb:office", ExportOptions())
    await until(cut_at_8mb, timeout=60, what="8 MB of the recording on the NAS")
    await asyncio.to_thread(smbd.kill)
    failed = await finished(core, job.id)
    assert failed.state == events.JobState.FAILED, failed.error
    assert not [p for p in nas.rglob(f"*{big.audio.path.suffix}") if not p.name.startswith(TEMP_PREFIX)]
    await asyncio.to_thread(smbd.start)
    remote = dataclasses.replace(core.cfg.smb.remotes[0], bandwidth_limit_kbps=0)
    await core.reload(dataclasses.replace(core.cfg, smb=dataclasses.replace(core.cfg.smb, remotes=[remote])))
    with caplog.at_level(logging.INFO, logger="steno_exportd"):
        again = await finished(core, (await core.export_sessions([big.id], ["txt", "audio"], "smb:office",
                                                                 ExportOptions())).id)
    assert again.state == events.JobState.COMPLETED, again.error
    assert again.bytes_done == again.bytes_total
    said = [r.getMessage() for r in caplog.records if "not sent again" in r.getMessage()]
    assert said and float(said[0].split("(")[1].split(" MB")[0]) >= 6.0, said    # >= 8 MB cut - 1 MB back
    assert not await asyncio.to_thread(sha256sum_check, nas)
    assert not [p for p in nas.rglob(TEMP_PREFIX + "*")], "a temp file was left"


async def test_push_on_new_pushes_only_sessions_newer_than_the_first_start(office, tmp_path, demo_library):
    from steno_exportd.smb import triggers as schedule

    smbd, remote, root, _ = office
    db = await asyncio.to_thread(demo_library, tmp_path / "library")      # a copy: the test adds sessions to it
    cfg = make_config(tmp_path, smb={"recorder_folder": "rec-1",
                                     "remotes": [dict(dataclasses.asdict(remote), push_on_new=True, formats=["txt"])]})
    nas = root / "nas" / "rec-1"

    async def run_once(core, expect_jobs):
        task = asyncio.create_task(schedule.run_push_on_new(core))
        await asyncio.sleep(0)
        try:
            marks = tmp_path / "state" / "push" / "on-new.json"
            before = marks.read_text() if marks.exists() else ""
            await core.refresh_library()
            # the event handled: the mark moved, or the jobs are queued
            await until(lambda: len(core.jobs.list()) >= expect_jobs and marks.exists() and (expect_jobs or not before),
                        "push on new to act", timeout=5, interval=0.02, in_thread=False)
            for j in core.jobs.list():
                assert (await finished(core, j.id)).state == events.JobState.COMPLETED
            pushed = max((max(j.sessions) for j in core.jobs.list()), default=0)
            await parts.until(lambda: json.loads(marks.read_text())["office"] >= pushed, in_thread=False,
                              what="the mark past the pushed sessions")
            return [j for j in core.jobs.list()]
        finally:
            task.cancel()

    core = Core(cfg)
    core.targets.register(SmbKind())
    await core.start()
    try:
        assert await run_once(core, 0) == []                   # first start: the old sessions stay home
        add_session_like(db, title="Recorded while running")
        jobs = await run_once(core, 1)
        assert [j.operation for j in jobs] == ["push"] and len(jobs[0].sessions) == 1
    finally:
        await core.stop()
    add_session_like(db, title="Recorded while the daemon was down")
    core = Core(cfg)                                            # a restart: every session looks added
    core.targets.register(SmbKind())
    await core.start()
    try:
        jobs = await run_once(core, 1)
        assert len(jobs) == 1 and len(jobs[0].sessions) == 1
    finally:
        await core.stop()
    names = sorted(p.parent.name for p in nas.rglob("transcript.txt"))
    assert len(names) == 2, names
    assert [n for n in names if "Recorded while running" in n] and [n for n in names if "daemon was down" in n], names


async def test_push_on_new_sends_a_session_whose_push_failed_with_the_next_one(office, tmp_path, demo_library):
    """The NAS is down when a new session appears: that push fails; the next new session takes it along."""
    from steno_exportd.smb import triggers as schedule

    smbd, remote, root, _ = office
    db = await asyncio.to_thread(demo_library, tmp_path / "library", sessions=3, seed=6)   # a copy: sessions are added
    cfg = make_config(tmp_path, smb={"recorder_folder": "rec-2",
                                     "remotes": [dict(dataclasses.asdict(remote), push_on_new=True, formats=["txt"])]})
    marks = tmp_path / "state" / "push" / "on-new.json"
    core = Core(cfg)
    core.targets.register(SmbKind(sleep=lambda s: None))      # retries without the backoff wait
    await core.start()
    task = asyncio.create_task(schedule.run_push_on_new(core))
    await asyncio.sleep(0)
    try:
        await core.refresh_library()
        await parts.until(marks.exists, in_thread=False, what="the first look recorded")
        first_mark = json.loads(marks.read_text())["office"]
        await asyncio.to_thread(smbd.kill)
        add_session_like(db, title="Recorded while the NAS was down")
        await core.refresh_library()
        await parts.until(lambda: core.jobs.list(), in_thread=False, what="a push queued")
        failed = await finished(core, core.jobs.list()[0].id)
        assert failed.state == events.JobState.FAILED and "smb:office" in failed.error, failed.error
        await asyncio.sleep(0.2)                                  # the trigger has seen it fail
        assert json.loads(marks.read_text())["office"] == first_mark
        await asyncio.to_thread(smbd.start)
        add_session_like(db, title="Recorded when it was back")
        await core.refresh_library()
        await parts.until(lambda: len(core.jobs.list()) == 2, in_thread=False, what="a second push queued")
        second = await finished(core, max(j.id for j in core.jobs.list()))
        assert second.state == events.JobState.COMPLETED, second.error
        assert len(second.sessions) == 2 and failed.sessions[0] in second.sessions
        await parts.until(lambda: json.loads(marks.read_text())["office"] == max(second.sessions), in_thread=False,
                          what="the mark past both")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await core.stop()
    names = sorted(p.parent.name for p in (root / "nas" / "rec-2").rglob("transcript.txt"))
    assert len(names) == 2 and "NAS was down" in names[0] + names[1] and "it was back" in names[0] + names[1], names


async def test_a_share_the_user_may_not_write_fails_the_push_saying_permission_denied(office, tmp_path, demo_library):
    """The NAS lets the recorder's user log on to a share but not write there: the job's headline says it is a
    permission problem (what the page, D-Bus and steno-exportctl show), not a bare "failed"."""
    smbd, remote, root, _ = office
    lib = tmp_path / "library"
    await asyncio.to_thread(demo_library, lib, sessions=2, seed=6, small=True)
    cfg = make_config(tmp_path, smb={"recorder_folder": "rec-1",
                                     "remotes": [dict(dataclasses.asdict(remote), share="ro")]})
    core = Core(cfg)
    core.targets.register(SmbKind())
    await core.start()
    try:
        done = await finished(core, (await core.export_sessions(with_audio(lib)[:1], ["txt"], "smb:office",
                                                                ExportOptions())).id)
    finally:
        await core.stop()
    assert done.state == events.JobState.FAILED
    assert done.error.startswith("permission denied on the target: smb:office: access denied on "), done.error
    assert not list((root / "ro").rglob("*"))



@pytest.fixture(params=["says its free space", "says it has a terabyte free"])
def full_nas(request, smb_tmp, smbd_factory):
    """An office NAS whose share is a 24 MiB filesystem (tmpfs), and a recorder of three meetings (recordings of 30,
    3 and 3 MiB: the first alone more than the share holds, the others fit). "says it has a terabyte free": the share answers the
    free-space question with a terabyte (smb.conf's dfree command, as a NAS with quotas or thin provisioning may),
    so the push finds the share full only when a write fails."""
    from tests.parts.smbd import start_office_nas
    from tests.smb.recorder import make_recorder
    parts.require_root()
    nas = smb_tmp / "nas"
    nas.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "steno-small-nas", str(nas)], check=True)
    smbd = db = None
    try:
        extra = ""
        if request.param == "says it has a terabyte free":
            dfree = smb_tmp / "dfree"
            dfree.write_text("#!/bin/sh\necho 1073741824 1073741824\n")     # total, free: in 1 KiB blocks
            os.chmod(dfree, 0o755)
            extra = f"dfree command = {dfree}"
        smbd, remote = start_office_nas(smb_tmp, smbd_factory, extra_global=extra)
        db = make_recorder(smb_tmp / "rec", sizes=(30 << 20, 3 << 20, (3 << 20) + 1000))
        yield remote, nas, db, request.param
    finally:
        if db is not None:
            db.close()
        if smbd is not None:
            smbd.stop()                 # (its children have the share's folder open)
        if subprocess.run(["umount", str(nas)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(nas)], check=False)


@pytest.fixture
async def full_nas_core(full_nas, tmp_path):
    remote, nas, db, how = full_nas
    cfg = make_config(tmp_path, **{"recorder.db_path": str(db.path),
                                   "smb": {"recorder_folder": "rec-1", "remotes": [dataclasses.asdict(remote)]}})
    core = Core(cfg)
    core.targets.register(SmbKind())            # as the daemon does
    await core.start()
    try:
        yield core, nas / "rec-1", db, how
    finally:
        await core.stop()


async def test_a_push_bigger_than_the_shares_free_space_says_target_full_and_leaves_nothing_half_there(
        full_nas_core):
    """A push of more than the NAS's share holds: the job fails with the share full as its problem ("target full",
    what the touchscreen and the web page show), the meetings that fit land whole and checked, and of the one that
    does not fit nothing stands under a final name on the share (no file, no folder of its name), nor does the
    manifest (or SHA256SUMS) claim it. Where the share said it had room, the write that found it full left no temp
    file filling it: the last meeting landed (the one written beside that write, while the cut file still filled
    the share, may be found full too: sent by the next push)."""
    core, folder, db, how = full_nas_core

    def sessions():
        lib = Library.from_config(core.cfg)
        try:
            return {s.title: (s.id, s.uuid) for s in lib.list_sessions(exportable_only=True)}
        finally:
            lib.close()
    meetings = await asyncio.to_thread(sessions)
    assert sorted(meetings) == ["Meeting 1", "Meeting 2", "Meeting 3"]      # Meeting 1: the 30 MiB recording
    ids = sorted(i for i, _ in meetings.values())
    done = await finished(core, (await core.export_sessions(ids, ["txt", "html", "audio"], "smb:office",
                                                            ExportOptions())).id)
    assert done.state == events.JobState.FAILED, (done.state, done.error)
    failed = [r for r in done.results if not r.ok]
    said = [(r.title, r.ok, r.problem, r.error) for r in done.results]
    if how == "says its free space":        # known before a byte is sent
        assert [(r.title, r.problem) for r in failed] == [("Meeting 1", "full")], said
        assert "target full: needs 30 MiB" in failed[0].error, said
    else:
        assert [(r.title, r.problem) for r in failed] in ([("Meeting 1", "full")],
                                                          [("Meeting 1", "full"), ("Meeting 2", "full")]), said
        assert failed[0].error == "share \\\\127.0.0.1\\push is full", said
    assert done.error.startswith(f"target full: {len(failed)} of 3 sessions not written ({failed[0].error})"), \
        done.error
    landed = {r.title for r in done.results if r.ok}
    # on the NAS: those that landed, whole and listed; of the others nothing under a final name, nor in the manifest
    assert not await asyncio.to_thread(sha256sum_check, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    recorded = {u: s["folder"] for u, s in manifest["sessions"].items()}
    assert "Meeting 3" in landed and set(recorded) == {meetings[t][1] for t in landed}, (recorded, said)
    listed = {line.split("  ", 1)[1] for line in (folder / "SHA256SUMS").read_text().splitlines()}
    assert len([rel for rel in listed if rel.endswith("audio.flac")]) == len(landed), sorted(listed)
    final = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
             and not p.name.startswith(TEMP_PREFIX) and p.name != MARKER
             and not any(q.name.endswith(".partial") for q in p.relative_to(folder).parents)}
    assert final - {"manifest.json", "SHA256SUMS", ".steno-push-owner.json"} == listed, sorted(final - listed)
    big = hashlib.sha256((db.root / "audio" / "meeting-1.flac").read_bytes()).hexdigest()
    assert not [rel for rel in final if hashlib.sha256((folder / rel).read_bytes()).hexdigest() == big]
    folders = {p.name for p in folder.iterdir() if p.is_dir()}
    assert {f for f in folders if not f.endswith(".partial")} == set(recorded.values()), sorted(folders)
