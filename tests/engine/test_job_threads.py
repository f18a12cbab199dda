"""Export jobs run in threads of their own, never in the loop's default executor: the page's reads, the login
check and the jobs' own bookkeeping run there, in few threads (min(32, cores + 4): 6 on 2 cores, 8 on a Pi 5); and a job's
thread that will not end does not stop the daemon's clean-up."""
from __future__ import annotations

import asyncio
import logging
import threading
import time

from steno_exportd import events as ev
from steno_exportd.engine.jobs import JobManager, JobSpec
from steno_exportd.engine.state import StateDB
from tests.configs import make_config
from tests.default_threads import DEFAULT_THREADS, HOLDERS, callable_name


async def test_more_running_exports_than_default_threads_all_run_and_never_stall_the_page(default_threads, tmp_path):
    """THREATS: nobody starves other callers. export.max_concurrent_jobs set above the number of the loop's default
    threads: every job runs at once (before, only as many as those threads ran, the rest waited), and meanwhile the
    page's short blocking work still gets a thread at once (before, none was left while exports ran). The jobs'
    work is held open until the test has looked."""
    jobs_at_once = DEFAULT_THREADS + 2
    cfg = make_config(tmp_path, **{"export.max_concurrent_jobs": jobs_at_once})
    release = threading.Event()
    running: list[int] = []

    def export(lib, spec, cfg, progress, job_id):       # an export that lasts until the test has looked
        running.append(job_id)
        release.wait(60)
        return []
    state = StateDB(tmp_path / "state.db")
    jobs = JobManager(cfg, ev.EventBus(), state, lambda: None, runner=export)
    await jobs.start()
    try:
        snaps = []
        for i in range(jobs_at_once):
            try:
                snaps.append(await asyncio.wait_for(jobs.submit(JobSpec("export", "dir", f"to-{i}")), 10))
            except TimeoutError:
                raise AssertionError(f"asking for export {i + 1} waited 10 s for a thread while {len(running)} "
                                     f"exports ran") from None
        deadline = time.monotonic() + 10
        while len(running) < jobs_at_once and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert len(running) == jobs_at_once, f"{len(running)} of {jobs_at_once} exports ran at once"
        asked = time.monotonic()
        await asyncio.wait_for(asyncio.to_thread(time.sleep, 0), 10)    # what a page's read asks for
        waited = time.monotonic() - asked
        assert waited < 0.5, f"the page waited {waited:.1f} s for a thread while {len(running)} exports ran"
        release.set()
        for s in snaps:
            done = await jobs.wait(s.id, timeout=30)
            assert done.state == ev.JobState.COMPLETED, done.error
        held = default_threads.holders(HOLDERS + (callable_name(export),))
        assert not held, f"exports ran in the loop's default threads: {held}"
    finally:
        release.set()
        await jobs.stop()
        state.close()


async def test_stop_with_a_job_that_refuses_to_stop_still_cleans_up_and_names_it(tmp_path, caplog):
    """A job whose thread ignores its cancel (a read stuck on a dying store) past stop()'s bound: stop() ends its
    clean-up all the same (it raised TimeoutError and skipped it: workers left running, no job marked, the hash
    cache open, and the core's own stop skipped everything after the jobs) and says which job in one log line.
    The bound (120 s) is stop()'s own parameter, shortened here."""
    cfg = make_config(tmp_path, **{"export.max_concurrent_jobs": 1})
    release, began = threading.Event(), threading.Event()

    def stubborn(lib, spec, cfg, progress, job_id):     # an export that never looks at its cancel
        began.set()
        release.wait(60)
        return []
    state = StateDB(tmp_path / "state.db")
    jobs = JobManager(cfg, ev.EventBus(), state, lambda: None, runner=stubborn)
    await jobs.start()
    try:
        stuck = await jobs.submit(JobSpec("export", "dir", "STUCKSTICK"))
        queued = await jobs.submit(JobSpec("export", "dir", "NEXTSTICK"))
        assert await asyncio.to_thread(began.wait, 10), "the stubborn job never ran"
        with caplog.at_level(logging.INFO, logger="steno_exportd.engine.jobs"):
            await asyncio.wait_for(jobs.stop(timeout=0.5), 10)
        said = [r.getMessage() for r in caplog.records if r.name == "steno_exportd.engine.jobs"]
        assert len([m for m in said if f"job {stuck.id} " in m]) == 1, said
        [line] = [m for m in said if f"job {stuck.id} " in m]
        assert "STUCKSTICK" in line and "did not stop" in line, line
        assert [jobs.get(stuck.id).state, jobs.get(queued.id).state] == [ev.JobState.CANCELLED] * 2
        assert jobs.hashes is None, "the hash cache was left open"
        workers = [t for t in asyncio.all_tasks() if t.get_name() == "steno-job-worker" and not t.done()]
        assert not workers, f"{len(workers)} job workers still running after stop()"
    finally:
        release.set()
        deadline = time.monotonic() + 10        # the stubborn thread ends once released (no leaked thread)
        while any(t.name.startswith("steno-job") for t in threading.enumerate()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await jobs.stop()
        state.close()
