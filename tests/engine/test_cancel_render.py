"""Cancel while a PDF renders in the worker process (issue 15): the job ends within a second, the worker
is stopped (reportlab cannot be interrupted: killed) and replaced, nothing is left under a final name."""
from __future__ import annotations

import asyncio
import time

import psutil
import pytest

from steno_exportd import events as ev
from steno_exportd.core import Core
from tests.engine.test_results_truth import cfg_for
from tests.recorder_db import RecorderDB


def _long_session(rec: RecorderDB, entries: int) -> int:
    """A session whose PDF takes several seconds to render (~0.6 ms an entry here)."""
    with rec.conn:
        rec.conn.execute("BEGIN")
        sid = rec.session(title="A long meeting")
        for i in range(entries):
            rec.entry(sid, i * 2.0, i * 2.0 + 1.5, f"sentence {i}: what was said about the budget and the plan",
                      speaker_id=f"S{i % 3}")
    return sid


def render_workers() -> set[int]:
    """The render worker processes of this process (multiprocessing's spawned children)."""
    out: set[int] = set()
    for child in psutil.Process().children():
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                out.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return out


def cpu_seconds(pids: set[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def rec(tmp_path):
    r = RecorderDB(tmp_path / "rec", threads=True)
    yield r
    r.close()


async def test_cancel_while_rendering_stops_the_worker_within_a_second(tmp_path, rec):
    long = await asyncio.to_thread(_long_session, rec, 15_000)
    short = await asyncio.to_thread(_long_session, rec, 5)
    out = tmp_path / "out"
    out.mkdir()
    core = Core(cfg_for(tmp_path, rec))
    await core.start()
    try:
        snap = await core.export_sessions([long], ["txt", "pdf"], str(out))
        # rendering: planned, and the PDF in the worker for a second of CPU (of ~4 s on a quiet machine)
        deadline = time.monotonic() + 60
        while True:
            j = core.jobs.get(snap.id)
            workers = await asyncio.to_thread(render_workers)
            if j.state == ev.JobState.RUNNING and j.files_total and workers and \
                    await asyncio.to_thread(cpu_seconds, workers) >= 1.0:
                break
            assert not j.state.finished and time.monotonic() < deadline, f"never saw the PDF render: {j}"
            await asyncio.sleep(0.02)
        assert not core.jobs.get(snap.id).state.finished, "still rendering when cancelled"
        t0 = time.monotonic()
        core.jobs.cancel(snap.id)
        done = await core.jobs.wait(snap.id, 60)
        took = time.monotonic() - t0
        assert done.state == ev.JobState.CANCELLED, done
        assert took < 1.0 * 1.5, f"cancel while rendering took {took:.2f} s (target 1 s; 1.5 s for a busy machine)"
        assert all(gone(pid) for pid in workers), "the render worker was left rendering a cancelled job"
        root = out / "SilentSteno"
        final = [p for p in root.rglob("*") if not any(part.endswith(".partial") for part in
                                                        p.relative_to(root).parts)
                 and p.name not in ("SHA256SUMS", "manifest.json", ".steno-manifest.json")]
        assert not [p for p in final if p.suffix in (".pdf", ".txt")], f"under a final name: {final}"

        # the next render gets a new worker
        again = await core.jobs.wait((await core.export_sessions([short], ["pdf"], str(out))).id, 60)
        assert again.state == ev.JobState.COMPLETED, again.error
        assert [p for p in root.rglob("*.pdf") if ".partial" not in str(p)]
        assert render_workers() and not render_workers() & workers
    finally:
        await core.stop()
    assert not [pid for pid in render_workers() if not gone(pid)], "Core.stop leaves no render worker"
