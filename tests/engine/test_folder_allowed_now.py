"""A caller's folder export is held to export.allowed_dirs as the folder is when the job runs, not only as its path
was when the job was asked for: between the two a queued job waits, and meanwhile a local user who owns a folder
on the path can swap it for a symlink to somewhere else, or the admin can narrow allowed_dirs. The job refuses,
saying why, and nothing lands outside the allowed folders; a caller's job naming a device (options.device_id) too.
The walk up the folder's parents that checks it opens each parent without reading it (O_PATH): a parent the daemon
(an unprivileged user) may pass through but not list does not refuse the job."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from steno_exportd import config
from steno_exportd import events as ev
from steno_exportd.core import Core
from steno_exportd.engine.jobs import JobSpec
from steno_exportd.engine.export import run_export
from steno_exportd.engine.registry import FolderKind
from steno_exportd.errors import StenoError, TargetError
from steno_exportd.library import Library
from steno_exportd.engine.options import ExportOptions
from tests.configs import make_config
from tests.parts.swap import StoreWatch, race_going

NOT_ALLOWED = "not under an allowed folder"


def _files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


async def test_a_folder_export_whose_parent_flips_to_a_symlink_outside_never_writes_outside(tmp_path, demo_library):
    """A user who owns exports/u flips it, every few milliseconds, between their folder and a symlink to a folder
    outside export.allowed_dirs (holding an 'out' folder of the same name) while exports into exports/u/out run one
    after the other. An export asked for while it pointed inside passed its check; when it ran it followed the
    symlink and wrote every session outside. A watcher holds every file that appears outside (a temp file removed
    afterwards too) and every folder made there: none; every job wrote inside or failed saying why."""
    db = Path(await asyncio.to_thread(demo_library, tmp_path / "rec", sessions=2))
    cfg = make_config(tmp_path, **{"recorder.db_path": str(db), "export.formats": ["txt", "audio"]})
    core = Core(cfg)
    await core.start()
    exports = tmp_path / "exports"
    real = exports / "u.real"
    (real / "out").mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "out").mkdir(parents=True)
    link = exports / "u"
    link.symlink_to(real)
    target = str(link / "out")
    stop = threading.Event()
    flips = [0]

    def flip() -> None:
        while not stop.is_set():
            for to in (outside, real):
                tmp = exports / ".u.swap"
                tmp.symlink_to(to)
                os.replace(tmp, link)
                time.sleep(0.001)
            flips[0] += 1

    flipper = threading.Thread(target=flip, name="test-flipper", daemon=True)
    watch = StoreWatch(outside)
    ends: list[ev.JobSnapshot] = []
    refused = 0
    watch.start()
    flipper.start()
    try:
        start = time.monotonic()
        while race_going(start, flips, ends):
            try:
                job = await core.export_sessions([1, 2], ["txt", "audio"], target)
            except StenoError as e:         # asked for while it pointed outside: refused at once, as before
                assert NOT_ALLOWED in str(e), e
                refused += 1
                continue
            ends.append(await core.jobs.wait(job.id, 60))
            if (real / "out" / "SilentSteno").exists():
                shutil.rmtree(real / "out" / "SilentSteno")     # (each job writes every session again)
    finally:
        stop.set()
        flipper.join(10)
        watch.stop.set()
        watch.join(10)
        seen = sorted(os.path.relpath(path, outside) for path, _fd in watch.held.values())
        watch.close()
        landed = sorted(str(p.relative_to(outside)) for p in outside.rglob("*") if p != outside / "out")
        await core.stop()
    assert flips[0] > 20 and len(ends) >= 5, (flips[0], len(ends))
    assert seen == [] and landed == [], f"{len(set(seen + landed))} files or folders landed outside allowed_dirs: " \
                                        f"{(seen + landed)[:5]}"
    for e in ends:
        assert e.state in (ev.JobState.COMPLETED, ev.JobState.FAILED), e.state
        problems = [e.error] + [r.error for r in e.results if not r.ok]
        if e.state == ev.JobState.FAILED or not all(r.ok for r in e.results):
            assert any(NOT_ALLOWED in p or "no longer the folder" in p for p in problems), problems


def test_a_job_asked_for_before_the_admin_narrowed_allowed_dirs_refuses_when_it_runs(tmp_path, demo_library):
    """A caller's export into exports/team, asked for while export.allowed_dirs held exports; the admin then narrows
    it to exports/public. When the job runs it refuses, naming the rule, and writes nothing into exports/team."""
    db = Path(demo_library(tmp_path / "rec", sessions=1))
    (tmp_path / "exports" / "team").mkdir(parents=True)
    (tmp_path / "exports" / "public").mkdir()
    asked = make_config(tmp_path, **{"recorder.db_path": str(db), "export.formats": ["txt"]})
    now = config.replace(asked, **{"export.allowed_dirs": [str(tmp_path / "exports" / "public")]})
    spec = JobSpec("export", str(tmp_path / "exports" / "team"), "team", (1,), ("txt",), ExportOptions())
    try:
        run_export(Library.from_config(now), spec, now)
    except TargetError as e:
        assert NOT_ALLOWED in str(e) and str(tmp_path / "exports" / "public") in str(e), e
    else:
        raise AssertionError("the export ran into a folder no longer under export.allowed_dirs")
    assert _files_in(tmp_path / "exports" / "team") == []
    # no folder allowed at all: said so, not 'not under an allowed folder now ()'; asked for then, refused at once
    none = config.replace(asked, **{"export.allowed_dirs": []})
    empty = "no folder is allowed (export.allowed_dirs is empty)"
    for run in (lambda: run_export(Library.from_config(none), spec, none),
                lambda: FolderKind().check(spec.target, none, trusted=False)):
        try:
            run()
        except StenoError as e:
            assert empty in str(e) and "()" not in str(e), e
        else:
            raise AssertionError("an export ran while export.allowed_dirs was empty")
    assert _files_in(tmp_path / "exports" / "team") == []
    # the daemon's own (a stick's auto-export, a schedule, the CLI) is not held to allowed_dirs, as before
    res = run_export(Library.from_config(now), dataclasses.replace(spec, trusted=True), now)
    assert [r.ok for r in res] == [True], res



@contextlib.contextmanager
def _tmpfs(mp: Path):
    """A filesystem of its own mounted at ``mp`` (as /dev/shm is under /dev): a folder a device's job may open;
    unmounted at the end."""
    mp.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "steno-test-mount", str(mp)], check=True)
    try:
        yield mp
    finally:
        subprocess.run(["umount", "-l", str(mp)], check=False)


def test_a_callers_job_naming_a_device_is_held_to_allowed_dirs_when_it_runs(tmp_path, demo_library):
    """A caller's export carries options.device_id (the page's and the touchscreen's exports to a stick set it, and
    any caller may send one). The check of its folder when it runs took every job with one for the daemon's own and
    skipped export.allowed_dirs: an export into exports/u/mnt with device_id "x", whose exports/u a local user has
    since made a symlink to a folder outside where 'mnt' is a filesystem's mount point (as /dev/shm is under /dev),
    wrote there. It refuses, naming the rule, and writes nothing there; so does a stick's job after the admin took
    the stick's folder out of allowed_dirs."""
    db = Path(demo_library(tmp_path / "rec", sessions=1))
    exports = tmp_path / "exports"
    exports.mkdir()
    outside = tmp_path / "outside"
    cfg = make_config(tmp_path, **{"recorder.db_path": str(db), "export.formats": ["txt"]})
    with _tmpfs(outside / "mnt") as mnt, _tmpfs(exports / "STICK") as stick:
        (exports / "u").symlink_to(outside)
        forged = JobSpec("export", str(exports / "u" / "mnt"), "mnt", (1,), ("txt",), ExportOptions(device_id="x"),
                         device_id="x")
        narrowed = config.replace(cfg, **{"export.allowed_dirs": [str(tmp_path / "public")]})
        stick_job = JobSpec("export", str(stick), "STICK", (1,), ("txt",), ExportOptions(device_id="fs_ab12"),
                            device_id="fs_ab12")
        for spec, now in ((forged, cfg), (stick_job, narrowed)):
            try:
                run_export(Library.from_config(now), spec, now)
            except TargetError as e:
                assert NOT_ALLOWED in str(e), e
            else:
                raise AssertionError(f"a caller's job naming a device wrote outside export.allowed_dirs: {spec.target}")
        assert _files_in(mnt) == [] and _files_in(stick) == []
        # the stick's job while its folder is allowed: written, as before
        res = run_export(Library.from_config(cfg), stick_job, cfg)
        assert [r.ok for r in res] == [True] and _files_in(stick), res


async def test_a_callers_device_id_must_name_the_stick_mounted_at_the_target(tmp_path, demo_library):
    """options.device_id makes a job a stick's (held to the stick's own filesystem, its free space refreshed, listed
    under the stick). A caller's export into a folder with a device_id of its own choosing (none the daemon knows,
    or a stick mounted elsewhere) was queued as that stick's; it is refused at once, saying so, and nothing is
    written. The page's and the touchscreen's export to a stick, whose device_id is that of the stick mounted at
    the target, runs as before."""
    db = Path(await asyncio.to_thread(demo_library, tmp_path / "rec", sessions=1))
    exports = tmp_path / "exports"
    (exports / "team").mkdir(parents=True)
    cfg = make_config(tmp_path, **{"recorder.db_path": str(db), "export.formats": ["txt"]})
    core = Core(cfg)
    await core.start()
    try:
        with _tmpfs(exports / "STICK") as stick:
            core.devices.change("fs_ab12", label="STICK", fs_type="tmpfs", mount_point=str(stick),
                                state=ev.DeviceState.MOUNTED)
            for did in ("x", "fs_ab12"):
                try:
                    await core.export_sessions([1], ["txt"], str(exports / "team"), {"device_id": did})
                except StenoError as e:
                    assert f"options.device_id {did!r} is not the stick mounted at the target" in str(e), e
                else:
                    raise AssertionError(f"a caller's export into a folder was queued as device {did!r}'s")
            assert core.jobs.list() == [] and _files_in(exports / "team") == []
            job = await core.export_sessions([1], ["txt"], str(stick), {"device_id": "fs_ab12"})
            done = await core.jobs.wait(job.id, 60)
            assert (done.state, done.device_id) == (ev.JobState.COMPLETED, "fs_ab12"), done
            assert _files_in(stick)
    finally:
        await core.stop()

def _as_nobody(prepare: str, work: str) -> str:
    """Python ``work`` run in a process of its own as the unprivileged user 65534 (the daemon runs as its own user,
    without capabilities; the tests run as root, who reads any folder), after ``prepare`` (its imports) ran as root
    (this Python and its library may be in root's home, which that user cannot read): "ok", or the error it ended
    with. A new process, not a fork of this one: a lock one of pytest's threads held at the fork would hang the
    child."""
    drop = "import os\nos.setgroups([])\nos.setgid(65534)\nos.setuid(65534)\n"
    p = subprocess.run([sys.executable, "-c", f"{prepare}\n{drop}{work}\nprint('ok')"], capture_output=True,
                       text=True, timeout=60, cwd="/", env=dict(os.environ, PYTHONPATH=os.getcwd()))
    if p.returncode != 0:
        return (p.stderr.strip().splitlines() or [f"exit code {p.returncode}"])[-1]
    return p.stdout.strip()


def test_a_target_under_a_folder_the_daemon_may_pass_through_but_not_list_is_exported_into(tmp_path):
    """export.allowed_dirs names /home/alice/exports; /home/alice is 0711 (the daemon's user may pass through, not
    list it). The job's check of its folder opened each parent for reading and refused every export there: 'the
    target folder cannot be checked: Permission denied'."""
    base = Path(tempfile.mkdtemp(prefix="steno-allowed-", dir="/tmp"))     # (pytest's own folder is root's, 0700)
    try:
        home = base / "alice"
        exports = home / "exports"
        exports.mkdir(parents=True)
        os.chmod(base, 0o755)
        os.chmod(home, 0o711)
        os.chown(exports, 65534, 65534)
        (base / "rec").mkdir()
        said = _as_nobody(f"""
from steno_exportd import config
from steno_exportd.engine.registry import FolderKind
class P:
    cancelled = False
    def update(self, *a, **k):
        pass
cfg = config.from_dict({{"recorder": {{"db_path": {str(base / "rec" / "silent_steno.db")!r}}},
                        "export": {{"allowed_dirs": [{str(exports)!r}]}}}})
""", f"""
with FolderKind().open({str(exports)!r}, cfg, P()) as t:
    t.mkdir("SilentSteno")
""")
        assert said == "ok", said
        assert stat.S_ISDIR(os.lstat(exports / "SilentSteno").st_mode)
    finally:
        shutil.rmtree(base)

