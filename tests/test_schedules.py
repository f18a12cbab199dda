"""Scheduled exports with the real core, a real recorder library and real folder targets; the clock is the
test's (moved, never slept on)."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import sqlite3

import pytest

from steno_exportd import config
from steno_exportd import events as ev
from steno_exportd.core import Core
from steno_exportd.errors import ConfigError
from tests.parts import until
from steno_exportd.smb.push import SmbKind
from tests.recorder_db import add_session_like


def local(*args) -> float:
    """Unix time of a local wall-clock time (cron expressions are local time)."""
    return dt.datetime(*args).timestamp()


class Clock:
    """The scheduler's clock: tests set it, then poke the scheduler."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def library(demo_library, tmp_path):
    """A copy of the demo library (tests add sessions to it)."""
    return demo_library(tmp_path / "library", sessions=3)


@pytest.fixture
async def make_core(tmp_path, library):
    cores: list[Core] = []

    async def start(schedules: list[dict], clock: Clock, extra: dict | None = None) -> Core:
        core = Core(cfg_for(tmp_path, library, schedules, extra), clock=clock)
        core.targets.register(SmbKind())        # as the daemon does
        await core.start()
        cores.append(core)
        return core

    yield start
    for core in cores:
        await core.stop()


def cfg_for(tmp_path, library, schedules: list[dict], extra: dict | None = None) -> config.Config:
    data = {"recorder": {"db_path": str(library)}, "state": {"dir": str(tmp_path / "state")},
            "http": {"enabled": False}, "usb": {"enabled": False}, "schedules": schedules}
    data.update(extra or {})
    return config.from_dict(data)


def exported(folder) -> set[str]:
    """Session folder names an export wrote under folder/SilentSteno."""
    root = folder / "SilentSteno"
    return {p.name for p in root.iterdir() if p.is_dir()} if root.exists() else set()


async def jobs_done(core: Core, n: int) -> list[ev.JobSnapshot]:
    """The core's first n jobs, each finished."""
    await until(lambda: len(core.jobs.list()) >= n, f"{n} job(s) queued", in_thread=False)
    out = [await core.jobs.wait(j.id, 60) for j in sorted(core.jobs.list(), key=lambda j: j.id)]
    assert all(j.state == ev.JobState.COMPLETED for j in out), [(j.id, j.state, j.error) for j in out]
    return out


async def test_a_cron_schedule_fires_at_its_time_and_the_export_lands(make_core, tmp_path, library):
    out = tmp_path / "out"
    out.mkdir()
    clock = Clock(local(2026, 11, 23, 1, 30))
    core = await make_core([{"name": "nightly", "cron": "0 2 * * *", "target": str(out), "sessions": "new",
                             "since_days": 36500, "formats": ["txt", "json"]}], clock)
    [s] = core.schedules.list()
    assert (s.name, s.when, s.next_run, s.last_run) == ("nightly", "0 2 * * *", local(2026, 11, 23, 2, 0), 0.0)

    clock.t = local(2026, 11, 23, 1, 59, 59)
    assert await core.schedules.tick() == []
    assert core.jobs.list() == [] and not out.joinpath("SilentSteno").exists()

    clock.t = local(2026, 11, 23, 2, 0, 1)      # the scheduler's own loop notices the time
    core.schedules.poke()
    [job] = await jobs_done(core, 1)
    listing = await core.listing()
    expected = {s.id for s in listing.sessions if s.exportable}
    assert set(job.sessions) == expected and job.formats == ("txt", "json")
    assert len(exported(out)) == len(expected)
    assert all(len(list((out / "SilentSteno" / d).iterdir())) == 2 for d in exported(out))
    await until(lambda: core.schedules.list()[0].last_run == clock.t, "last run recorded", in_thread=False)
    [s] = core.schedules.list()
    assert s.next_run == local(2026, 11, 24, 2, 0) and s.last_result == f"{len(expected)} session(s): job {job.id}"

    # the next night: "new" takes only what was recorded since the last run
    clock.t = local(2026, 11, 24, 2, 0, 3)
    assert await core.schedules.tick() == ["nightly"]
    assert len(core.jobs.list()) == 1 and core.schedules.list()[0].last_result == "nothing new"
    await asyncio.to_thread(add_session_like, library, None, "Recorded on Tuesday")
    clock.t = local(2026, 11, 25, 2, 0, 3)
    assert await core.schedules.tick() == ["nightly"]
    jobs = await jobs_done(core, 2)
    new_id = max(s.id for s in (await core.listing()).sessions)
    assert jobs[1].sessions == (new_id,)
    assert len(exported(out)) == len(expected) + 1


async def test_the_last_run_is_kept_in_the_state_db_and_a_missed_run_runs_once_at_start(make_core, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    sched = [{"name": "nightly", "cron": "0 2 * * *", "target": str(out), "sessions": "all", "formats": ["txt"]},
             {"name": "no-catch-up", "cron": "0 3 * * *", "target": str(out), "sessions": "all",
              "formats": ["txt"], "catch_up": False}]
    clock = Clock(local(2026, 11, 23, 1, 0))
    core = await make_core(sched, clock)
    clock.t = local(2026, 11, 23, 2, 0, 2)
    assert await core.schedules.tick() == ["nightly"]
    await jobs_done(core, 1)
    await core.stop()

    # off for three nights: each schedule missed three runs
    clock = Clock(local(2026, 11, 26, 9, 15))
    core = await make_core(sched, clock)
    jobs = await jobs_done(core, 1)                  # the start itself ran the missed nightly, once
    assert len(jobs) == 1
    by_name = {s.name: s for s in core.schedules.list()}
    assert by_name["nightly"].last_run == clock.t and by_name["nightly"].next_run == local(2026, 11, 27, 2, 0)
    assert by_name["no-catch-up"].last_run == 0.0 and by_name["no-catch-up"].next_run == local(2026, 11, 27, 3, 0)
    assert "skipped the run(s) missed since 2026-11-23 03:00" in by_name["no-catch-up"].last_result
    assert await core.schedules.tick() == []      # once, not once per missed night
    clock.t = local(2026, 11, 26, 23, 0)
    assert await core.schedules.tick() == []
    assert len(core.jobs.list()) == 1


async def test_a_reload_adds_changes_and_removes_schedules(make_core, tmp_path, library):
    out = tmp_path / "out"
    out.mkdir()
    a = {"name": "a", "cron": "0 2 * * *", "target": str(out), "sessions": "all", "formats": ["txt"]}
    b = {"name": "b", "interval_minutes": 90, "target": str(out), "sessions": "all", "formats": ["json"]}
    clock = Clock(local(2026, 11, 23, 1, 0))
    core = await make_core([a], clock)
    seen: list[ev.SchedulesChanged] = []

    async def follow():
        async for e in core.events.subscribe():
            if isinstance(e, ev.SchedulesChanged):
                seen.append(e)
    follower = asyncio.create_task(follow())
    await asyncio.sleep(0)

    clock.t = local(2026, 11, 23, 1, 10)
    await core.reload(cfg_for(tmp_path, library, [b]))                # a removed, b added
    assert [(s.name, s.next_run) for s in core.schedules.list()] == [("b", local(2026, 11, 23, 2, 40))]
    await until(lambda: seen and [s.name for s in seen[-1].schedules] == ["b"], "SchedulesChanged", in_thread=False)
    rows = await asyncio.to_thread(core.state.schedules)
    assert set(rows) == {"b"}

    clock.t = local(2026, 11, 23, 2, 0, 5)                             # a's old time: nothing
    assert await core.schedules.tick() == []
    clock.t = local(2026, 11, 23, 2, 40, 5)
    assert await core.schedules.tick() == ["b"]
    [job] = await jobs_done(core, 1)
    assert job.formats == ("json",)

    changed = dict(b, interval_minutes=0, cron="30 4 * * *")          # b changed: starts afresh from now
    await core.reload(cfg_for(tmp_path, library, [changed]))
    [s] = core.schedules.list()
    assert (s.when, s.next_run) == ("30 4 * * *", local(2026, 11, 23, 4, 30))
    await core.reload(cfg_for(tmp_path, library, []))
    assert core.schedules.list() == [] and await asyncio.to_thread(core.state.schedules) == {}
    clock.t = local(2026, 11, 23, 4, 30, 5)
    assert await core.schedules.tick() == [] and len(core.jobs.list()) == 1
    follower.cancel()


async def test_an_smb_remotes_schedule_is_run_by_the_same_scheduler(make_core, tmp_path):
    remote = {"name": "office", "server": "127.0.0.1", "port": 1, "share": "s", "schedule": "15 1 * * *",
              "formats": ["txt"], "timeout": 1}
    clock = Clock(local(2026, 11, 23, 0, 0))
    core = await make_core([], clock, {"smb": {"remotes": [remote]}})
    [s] = core.schedules.list()
    assert (s.name, s.target, s.sessions, s.next_run) == ("smb:office", "smb:office", "all",
                                                          local(2026, 11, 23, 1, 15))
    clock.t = local(2026, 11, 23, 1, 15, 2)
    assert await core.schedules.tick() == ["smb:office"]
    [job] = core.jobs.list()
    assert (job.operation, job.target) == ("push", "smb:office")
    await core.jobs.wait(job.id, 60)      # nothing listens on port 1: the push fails, the schedule stays


async def test_a_run_that_cannot_queue_says_why_and_loses_nothing(make_core, tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    clock = Clock(local(2026, 11, 23, 1, 0))
    core = await make_core([{"name": "x", "cron": "0 2 * * *", "target": str(gone), "sessions": "new",
                             "since_days": 36500, "formats": ["txt"]}], clock)
    gone.rmdir()
    clock.t = local(2026, 11, 23, 2, 0, 1)
    assert await core.schedules.tick() == ["x"]
    [s] = core.schedules.list()
    assert s.last_result.startswith("error: target folder does not exist") and core.jobs.list() == []
    gone.mkdir()                                  # the sessions not delivered are still "new" next time
    clock.t = local(2026, 11, 24, 2, 0, 1)
    assert await core.schedules.tick() == ["x"]
    [job] = await jobs_done(core, 1)
    assert len(job.sessions) == len([x for x in (await core.listing()).sessions if x.exportable])


@pytest.mark.parametrize("entry, message", [
    ({"cron": "0 25 * * *"}, "invalid cron expression '0 25 * * *'"),
    ({"cron": "* * *"}, "cron expression needs 5 fields"),
    ({"cron": "0 2 * * *", "interval_minutes": 5}, "give either cron or interval_minutes"),
    ({"cron": ""}, "give either cron or interval_minutes"),
    ({"target": "relative/folder"}, "an absolute folder, FILE.zip/.tar.gz, smb:<remote>, rclone:<remote> or email:<addresses>"),
    ({"target": "smb:nowhere"}, "no SMB remote named 'nowhere'"),
    ({"target": "email:alice@"}, "schedules[0].target: "),
    ({"target": "email:bob@example.org\r\nBcc: eve@example.org"}, "schedules[0].target: "),
    ({"target": "email:"}, "'email:' with no address needs email.recipients"),
    ({"name": ""}, "schedules[0].name: required"),
    ({"name": "smb:office"}, "not starting with 'smb:'"),
])
def test_a_bad_schedule_is_a_clear_config_error(entry, message, tmp_path):
    good = {"name": "n", "cron": "0 2 * * *", "target": str(tmp_path), "formats": ["txt"]}
    data = {"schedules": [dict(good, **entry)], "email": {"enabled": True}}
    with pytest.raises(ConfigError) as e:
        config.from_dict(data)
    assert any(message in p for p in e.value.problems), e.value.problems


def test_two_schedules_with_one_name_are_refused(tmp_path):
    s = {"name": "n", "cron": "0 2 * * *", "target": str(tmp_path)}
    with pytest.raises(ConfigError) as e:
        config.from_dict({"schedules": [s, s]})
    assert "schedules[1].name: duplicate schedule name 'n'" in e.value.problems


async def test_the_state_db_row_survives_and_unknown_rows_are_dropped(make_core, tmp_path):
    clock = Clock(local(2026, 11, 23, 1, 0))
    core = await make_core([{"name": "keep", "cron": "0 2 * * *", "target": str(tmp_path), "formats": ["txt"]}],
                           clock)
    await core.stop()
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    with db:
        db.execute("INSERT INTO schedules(name, spec, slot) VALUES ('old', '[]', 0)")
    db.close()
    core = await make_core([{"name": "keep", "cron": "0 2 * * *", "target": str(tmp_path), "formats": ["txt"]}],
                           clock)
    assert set(await asyncio.to_thread(core.state.schedules)) == {"keep"}
    assert dataclasses.asdict(core.schedules.list()[0])["next_run"] == local(2026, 11, 23, 2, 0)


async def test_tags_and_since_days_choose_what_a_run_takes(make_core, tmp_path, library):
    """Three meetings: tagged board 2 days ago, tagged board+hr 20 days ago, untagged yesterday."""
    now = local(2026, 11, 23, 1, 0)
    when = {1: now - 2 * 86400, 2: now - 20 * 86400, 3: now - 86400}
    tags = {1: '["board"]', 2: '["hr", "board"]', 3: '[]'}
    db = sqlite3.connect(library)
    with db:
        for sid in (1, 2, 3):
            db.execute("UPDATE sessions SET start_time = ?, tags = ? WHERE id = ?",
                       (dt.datetime.fromtimestamp(when[sid], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f"),
                        tags[sid], sid))
    db.close()
    outs = {name: tmp_path / name for name in ("board", "board-week", "week", "hr")}
    for out in outs.values():
        out.mkdir()
    sched = [{"name": "board", "cron": "0 2 * * *", "target": str(outs["board"]), "sessions": "all",
              "tags": ["board"], "formats": ["txt"]},
             {"name": "board-week", "cron": "0 2 * * *", "target": str(outs["board-week"]),
              "sessions": "since_days", "since_days": 7, "tags": ["board"], "formats": ["txt"]},
             {"name": "week", "cron": "0 2 * * *", "target": str(outs["week"]), "sessions": "since_days",
              "since_days": 7, "formats": ["txt"]},
             {"name": "hr", "cron": "0 2 * * *", "target": str(outs["hr"]), "sessions": "new", "since_days": 30,
              "tags": ["hr", "sales"], "formats": ["txt"]}]
    clock = Clock(now)
    core = await make_core(sched, clock)
    assert {s.id for s in (await core.listing()).sessions if s.exportable} >= {1, 2, 3}
    clock.t = local(2026, 11, 23, 2, 0, 1)
    assert await core.schedules.tick() == ["board", "board-week", "week", "hr"]
    jobs = await jobs_done(core, 4)
    by_target = {j.target: set(j.sessions) for j in jobs}
    assert by_target == {str(outs["board"]): {1, 2}, str(outs["board-week"]): {1}, str(outs["week"]): {1, 3},
                         str(outs["hr"]): {2}}
    assert {name: len(exported(out)) for name, out in outs.items()} == {"board": 2, "board-week": 1, "week": 2,
                                                                         "hr": 1}


async def test_a_stop_that_comes_with_a_wake_ends_the_scheduler(make_core, tmp_path):
    """A stop of the daemon as a reload wakes the scheduler's waiting loop (the same moment: the wake is set, then
    the loop's task cancelled) ends that loop. Python 3.11's wait_for returns the wake's result and drops the cancel
    when both come at once: the scheduler's loop went round and waited again, and the stop waited forever."""
    core = await make_core([], Clock(1_000_000.0))
    for _ in range(5):
        await asyncio.sleep(0.01)          # the loop waits for its wake (with a timeout: the next recheck)
    core.schedules._wake.set()             # a reload, as the daemon stops
    done, _ = await asyncio.wait([asyncio.create_task(core.schedules.stop())], timeout=5)
    assert done, "the scheduler's stop did not end: its loop lost the cancel that came with a wake"
