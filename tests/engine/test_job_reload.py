"""export.max_concurrent_jobs changed by a reload holds for the jobs asked for after it: lowered, no more exports run
at once than it allows (the workers beyond it retire when they are next given a job); raised, more do."""
from __future__ import annotations

import asyncio
import threading

from steno_exportd import config
from steno_exportd import events as ev
from steno_exportd.engine.jobs import JobManager, JobSpec
from steno_exportd.engine.state import StateDB
from tests.configs import make_config


async def _at_once(tmp_path, first: int, then: int, jobs_asked: int) -> tuple[int, list]:
    """The most exports seen running at once, and the jobs' end states, after a reload from ``first`` to ``then``."""
    cfg = make_config(tmp_path, **{"export.max_concurrent_jobs": first})
    lock = threading.Lock()
    now, most = [0], [0]
    go = threading.Event()

    def export(lib, spec, cfg, progress, job_id):       # runs until the test lets the exports go
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        go.wait(30)
        with lock:
            now[0] -= 1
        return []
    state = StateDB(tmp_path / "state.db")
    jobs = JobManager(cfg, ev.EventBus(), state, lambda: None, runner=export)
    await jobs.start()
    try:
        jobs.reload(config.replace(cfg, **{"export.max_concurrent_jobs": then}))
        snaps = [await jobs.submit(JobSpec("export", "dir", f"to-{i}")) for i in range(jobs_asked)]
        for _ in range(200):                    # until as many run as may (more would have started by then too)
            if sum(jobs.get(s.id).state == ev.JobState.RUNNING for s in snaps) >= min(then, jobs_asked):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        go.set()
        ends = [(await jobs.wait(s.id, 30)).state for s in snaps]
        return most[0], ends
    finally:
        go.set()
        await jobs.stop()
        state.close()


async def test_a_lowered_maximum_of_exports_at_once_holds_after_a_reload(tmp_path):
    most, ends = await _at_once(tmp_path, 3, 1, 3)
    assert most == 1, f"{most} exports ran at once with export.max_concurrent_jobs lowered to 1 by a reload"
    assert ends == [ev.JobState.COMPLETED] * 3, ends


async def test_a_raised_maximum_of_exports_at_once_holds_after_a_reload(tmp_path):
    most, ends = await _at_once(tmp_path, 1, 3, 4)
    assert most == 3, f"{most} exports ran at once with export.max_concurrent_jobs raised to 3 by a reload"
    assert ends == [ev.JobState.COMPLETED] * 4, ends


async def test_a_lowered_maximum_holds_for_a_job_asked_for_while_exports_beyond_it_still_run(tmp_path):
    """Three exports at once allowed, three asked for; the first ends, then a reload lowers it to one while the other
    two still run (never cut). A fourth job asked for now waits until they ended: never three at once again."""
    cfg = make_config(tmp_path, **{"export.max_concurrent_jobs": 3})
    lock = threading.Lock()
    running: set[str] = set()
    alongside: dict[str, set[str]] = {}         # each export: the others it ran beside when it started
    ends = {n: threading.Event() for n in "abcd"}

    def export(lib, spec, cfg, progress, job_id):
        with lock:
            alongside[spec.target_name] = set(running)
            running.add(spec.target_name)
        ends[spec.target_name].wait(30)
        with lock:
            running.discard(spec.target_name)
        return []
    state = StateDB(tmp_path / "state.db")
    jobs = JobManager(cfg, ev.EventBus(), state, lambda: None, runner=export)
    await jobs.start()
    try:
        a, b, c = [await jobs.submit(JobSpec("export", "dir", n)) for n in "abc"]
        for _ in range(200):
            if len(alongside) == 3:
                break
            await asyncio.sleep(0.05)
        ends["a"].set()
        assert (await jobs.wait(a.id, 30)).state == ev.JobState.COMPLETED
        jobs.reload(config.replace(cfg, **{"export.max_concurrent_jobs": 1}))
        d = await jobs.submit(JobSpec("export", "dir", "d"))
        await asyncio.sleep(0.5)
        assert jobs.get(d.id).state == ev.JobState.QUEUED, \
            f"a job asked for after the reload to 1 runs beside {sorted(alongside.get('d', ()))}"
        ends["b"].set()
        ends["c"].set()
        ends["d"].set()
        assert [(await jobs.wait(s.id, 30)).state for s in (b, c, d)] == [ev.JobState.COMPLETED] * 3
        assert alongside["d"] == set(), alongside
    finally:
        for e in ends.values():
            e.set()
        await jobs.stop()
        state.close()
