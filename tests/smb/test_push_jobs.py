"""Push jobs through the core ("smb:<remote>"): a real smbd, a real core on a demo library."""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import pathlib

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
    assert set(kept) <= {f"{db}{wal}" for db in dbs for wal in ("", "-wal", "-shm")} | {"recorder-id"}, kept
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
