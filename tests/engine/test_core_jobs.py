"""Core API: validation, queued jobs, events, cancel, state DB across restarts."""
from __future__ import annotations

import asyncio
import sqlite3

import pytest

from steno_exportd import events as ev
from steno_exportd.core import Core, ExportOptions
from steno_exportd.errors import InvalidArgument, NotFoundError
from tests.configs import make_config
from tests.fakes import library
from tests.parts import until


@pytest.fixture
def core_env(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cfg = make_config(tmp_path, export={"allowed_dirs": [str(out)], "formats": ["txt", "json", "audio"]})
    lib = library(tmp_path, 4)
    return cfg, lib, out


async def test_export_job_runs_and_publishes(core_env):
    cfg, lib, out = core_env
    core = Core(cfg, library=lib)
    await core.start()
    seen: list[ev.Event] = []

    async def follow():
        async for e in core.events.subscribe():
            seen.append(e)

    t = asyncio.create_task(follow())
    await asyncio.sleep(0)
    try:
        snap = await core.export_sessions([1, 2], ["txt", "audio"], str(out), ExportOptions())
        assert snap.state == ev.JobState.QUEUED
        done = await core.jobs.wait(snap.id, timeout=30)
        assert done.state == ev.JobState.COMPLETED, done.error
        assert len(done.results) == 2 and all(r.ok for r in done.results)
        assert core.jobs.get(snap.id).state == ev.JobState.COMPLETED
        assert any(isinstance(e, ev.JobUpdated) and e.job.state == ev.JobState.COMPLETED for e in seen)
        assert core.status_text().startswith("idle")
        hist = core.state.history()
        assert len(hist) == 4 and all(h["sha256"] for h in hist)
    finally:
        t.cancel()
        await core.stop()
        await core.stop()   # idempotent


async def test_validation_errors(core_env, tmp_path):
    cfg, lib, out = core_env
    core = Core(cfg, library=lib)
    await core.start()
    try:
        with pytest.raises(NotFoundError):
            await core.export_sessions([99], ["txt"], str(out))
        with pytest.raises(NotFoundError):
            await core.export_sessions([1], ["nope"], str(out))
        with pytest.raises(NotFoundError):
            await core.export_sessions([1], ["pdf"], str(out), ExportOptions(template="nope"))
        with pytest.raises(InvalidArgument):
            await core.export_sessions([1], ["txt"], str(tmp_path))
        with pytest.raises(NotFoundError):
            await core.eject("dev1")
        snap = await core.export_sessions([1], ["txt"], str(tmp_path / "out"), trusted=True)
        assert (await core.jobs.wait(snap.id, 30)).state == ev.JobState.COMPLETED
    finally:
        await core.stop()


async def _restarted_with_running_job(cfg, lib, job_id: int, target, extra: str = "") -> Core:
    """A core started after one that stopped with export job ``job_id`` to ``target`` still 'running' in its state
    database (a power cut); ``extra``: more of the stored spec's JSON."""
    core = Core(cfg, library=lib)
    await core.start()
    await core.stop()
    db = sqlite3.connect(core.state.path)
    db.execute("INSERT INTO jobs(id, operation, target, state, spec, created) VALUES (?, 'export', ?, 'running', ?, 1)",
               (job_id, str(target), '{"operation": "export", "target": "%s", "target_name": "x", "session_ids": [1], '
                                     '"formats": ["txt"], "options": {}, "device_id": ""%s}' % (target, extra)))
    db.commit()
    db.close()
    core2 = Core(cfg, library=lib)
    await core2.start()
    return core2


async def test_interrupted_jobs_marked_on_restart(core_env):
    cfg, lib, out = core_env
    core2 = await _restarted_with_running_job(cfg, lib, 77, out)
    try:
        assert core2.jobs.get(77).state == ev.JobState.INTERRUPTED
        snap = await core2.jobs.resume(77)
        assert (await core2.jobs.wait(snap.id, 30)).state == ev.JobState.COMPLETED
    finally:
        await core2.stop()


async def test_a_resumed_job_is_held_to_allowed_dirs_whatever_its_stored_spec_says(core_env, tmp_path):
    """A job's ``trusted`` (the daemon's own or the CLI's: not held to export.allowed_dirs) never comes back from the
    state database: a row saying trusted (written by an older version, or by anyone who can write that file) resumes
    as a caller's job, checked again when it runs: it fails, and nothing is written outside the allowed folders."""
    cfg, lib, out = core_env
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    core2 = await _restarted_with_running_job(cfg, lib, 78, elsewhere, ', "trusted": true')
    try:
        assert core2.jobs.get(78).state == ev.JobState.INTERRUPTED
        snap = await core2.jobs.resume(78)
        done = await core2.jobs.wait(snap.id, 30)
        assert done.state == ev.JobState.FAILED and "allowed" in done.error, done
        assert list(elsewhere.iterdir()) == []
    finally:
        await core2.stop()


async def test_switches_publish_status(core_env):
    cfg, lib, out = core_env
    core = Core(cfg, library=lib)
    q = core.events.subscribe()
    task = asyncio.ensure_future(q.__anext__())
    await asyncio.sleep(0)
    core.set_sharing(True)
    e = await asyncio.wait_for(task, 5)
    assert e == ev.StatusChanged("samba_enabled", True) and core.sharing_enabled
    await q.aclose()


async def test_cancel_mid_copy_leaves_no_partial_file_under_a_final_name(core_env, tmp_path):
    cfg, _, out = core_env
    (tmp_path / "big").mkdir()
    lib = await asyncio.to_thread(library, tmp_path / "big", 3, audio_size=60_000_000)
    core = Core(cfg, library=lib)
    await core.start()
    try:
        snap = await core.export_sessions([1, 2, 3], ["txt", "audio"], str(out))
        await until(lambda: core.jobs.get(snap.id).bytes_done > 0, "the first bytes copied", 5, 0.01, in_thread=False)
        core.jobs.cancel(snap.id)
        done = await core.jobs.wait(snap.id, 60)
        assert done.state in (ev.JobState.CANCELLED, ev.JobState.COMPLETED)
    finally:
        await core.stop()
    root = out / "SilentSteno"
    for folder in [d for d in root.iterdir() if d.is_dir() and not d.name.endswith(".partial")]:
        for f in folder.iterdir():
            assert not f.name.startswith(".steno-tmp")
    if (root / "SHA256SUMS").exists():
        import subprocess
        assert (await asyncio.to_thread(subprocess.run, ["sha256sum", "-c", "--quiet", "SHA256SUMS"],
                                        cwd=root)).returncode == 0
    # the rerun completes what was cancelled
    core2 = Core(cfg, library=lib)
    await core2.start()
    try:
        snap = await core2.export_sessions([1, 2, 3], ["txt", "audio"], str(out))
        assert (await core2.jobs.wait(snap.id, 60)).state == ev.JobState.COMPLETED
    finally:
        await core2.stop()
    assert not [p for p in root.iterdir() if p.name.endswith(".partial")]


async def test_devices_registry_and_history(core_env):
    cfg, lib, out = core_env
    core = Core(cfg, library=lib)
    await core.start()
    try:
        q = core.events.subscribe()
        task = asyncio.ensure_future(q.__anext__())
        await asyncio.sleep(0)
        snap = ev.DeviceSnapshot("u1", "u1", "STICK", "vfat", "/dev/sdz1", 100, 50, str(out), ev.DeviceState.MOUNTED)
        core.devices.update(snap)
        assert (await asyncio.wait_for(task, 5)) == ev.DeviceUpdated(snap)
        assert core.devices.get("u1") == snap and core.status_text().endswith("1 stick")
        assert core.state.devices()[0]["label"] == "STICK"
        core.devices.remove("u1")
        assert (await asyncio.wait_for(q.__anext__(), 5)) == ev.DeviceRemoved("u1")
        await q.aclose()
        with pytest.raises(NotFoundError):
            core.devices.get("u1")
        ejected = []

        async def ejector(dev_id):
            ejected.append(dev_id)

        core.devices.update(snap)
        core.set_ejector(ejector)
        job = await core.eject("u1")
        assert job.operation == "eject" and job.state == ev.JobState.COMPLETED and ejected == ["u1"]
    finally:
        await core.stop()


async def test_stop_cancels_a_running_job_safely(core_env, tmp_path):
    cfg, _, out = core_env
    (tmp_path / "big").mkdir()
    lib = await asyncio.to_thread(library, tmp_path / "big", 2, audio_size=80_000_000)
    core = Core(cfg, library=lib)
    await core.start()
    snap = await core.export_sessions([1, 2], ["audio"], str(out))
    await until(lambda: core.jobs.get(snap.id).state == ev.JobState.RUNNING, "the job running", 5, 0.01,
                in_thread=False)
    await asyncio.wait_for(core.stop(), 60)
    assert core.jobs.get(snap.id).state.finished
    for p in (out / "SilentSteno").rglob("*"):
        assert not (p.is_file() and p.name == "audio.wav" and p.stat().st_size != 80_000_000)


async def test_a_job_without_verify_is_not_history_and_the_next_verifying_job_sends_its_files_again(core_env):
    """History holds verified files only (StateDB.add_history): a no-verify job's files are not listed there, and a
    later job that verifies does not skip them as already there: it writes and verifies them, then lists them."""
    cfg, lib, out = core_env
    core = Core(cfg, library=lib)
    await core.start()
    try:
        nov = await core.jobs.wait((await core.export_sessions([1, 2], ["txt", "audio"], str(out),
                                                               ExportOptions(verify=False))).id, timeout=30)
        assert nov.state == ev.JobState.COMPLETED, nov.error
        assert all(r.ok and not r.skipped for r in nov.results)
        assert core.state.history() == []
        ver = await core.jobs.wait((await core.export_sessions([1, 2], ["txt", "audio"], str(out),
                                                               ExportOptions(verify=True))).id, timeout=30)
        assert ver.state == ev.JobState.COMPLETED, ver.error
        assert [r.skipped for r in ver.results] == [False, False]
        hist = core.state.history()
        assert len(hist) == 4 and {h["job_id"] for h in hist} == {ver.id} and all(h["sha256"] for h in hist)
        again = await core.jobs.wait((await core.export_sessions([1, 2], ["txt", "audio"], str(out),
                                                                 ExportOptions(verify=False))).id, timeout=30)
        assert [r.skipped for r in again.results] == [True, True]       # verified once: nothing to send
        assert len(core.state.history()) == 4
    finally:
        await core.stop()
