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
