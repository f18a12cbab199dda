"""Retention: the state DB, the outbox, the download audit log and the caches keep the newest rows within their
limits, and never a job that is still queued or running (nor its history)."""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time

from steno_exportd import config, events as ev, retention
from steno_exportd.access.store import PRUNE_EVERY, AccessStore
from steno_exportd.core import Core
from steno_exportd.engine.hashcache import HashCache
from steno_exportd.engine.state import StateDB
from steno_exportd.retention import Keep
from steno_exportd.web.cache import RenderCache

DAY = 86400


def job(i: int, state: ev.JobState, created: float) -> ev.JobSnapshot:
    return ev.JobSnapshot(id=i, operation="export", target="/x", state=state, created=created, started=created,
                          finished=created + 1 if state.finished else 0)


def test_state_db_keeps_the_newest_and_never_a_running_job(tmp_path):
    db = StateDB(tmp_path / "state.db")
    db.open()
    now = time.time()
    for i in range(1, 31):                              # jobs 1..30, one a day: 30 is the newest
        db.save_job(job(i, ev.JobState.COMPLETED if i % 3 else ev.JobState.FAILED, now - (31 - i) * DAY))
        db.save_result(i, ev.SessionResult(i, f"u{i}", "t", True))
        db.add_history(i, "/x", "", f"u{i}", [(f"f{i}", 1, "h")])
    db.save_job(job(31, ev.JobState.RUNNING, now - 400 * DAY))     # an old job that still runs
    db.add_history(31, "/x", "", "u31", [("f31", 1, "h")])
    db.save_job(job(32, ev.JobState.QUEUED, now - 400 * DAY))
    db.save_job(job(33, ev.JobState.INTERRUPTED, now - 400 * DAY))    # a restart cut it: it can be resumed
    with sqlite3.connect(tmp_path / "state.db") as c:            # history rows as old as their jobs
        c.execute("UPDATE history SET exported_at = exported_at - (32 - job_id) * ?", (DAY,))
        c.execute("UPDATE history SET exported_at = ? WHERE job_id = 31", (now - 400 * DAY,))

    counts = db.prune(Keep(days=10, rows=5), Keep(days=20, rows=12))
    ids = [d["id"] for d in db.jobs()]
    assert ids == [26, 27, 28, 29, 30, 31, 32, 33]      # the 5 newest (within 10 days) and the live ones
    assert counts == {"jobs": 25, "history": 18}
    assert all(db.results(i) for i in range(26, 31)) and not any(db.results(i) for i in range(1, 26))
    kept = sorted(h["job_id"] for h in db.history())
    assert kept == list(range(19, 32))                  # the 12 newest history rows, and the running job's
    db.close()


async def test_outbox_prunes_sent_and_failed_never_waiting(tmp_path):
    cfg = config.from_dict({"state": {"dir": str(tmp_path / "state")}, "email": {"enabled": True},
                            "retention": {"outbox_days": 7, "outbox_max": 3}})
    core = Core(cfg, library=object())
    await core.start()
    try:
        seen: list[ev.Event] = []

        async def follow():
            async for e in core.events.subscribe():
                seen.append(e)
        t = asyncio.create_task(follow())
        await asyncio.sleep(0)
        ob = core.outbox
        now = time.time()
        ids = []
        for i, state in enumerate(["sent", "failed", "queued", "sent", "sent", "failed", "sent", "queued"]):
            e = await asyncio.to_thread(ob._insert, "notice", ev.OutboxState.QUEUED, f"m{i}", ["a@example.org"], {})
            await asyncio.to_thread(ob._x, "UPDATE outbox SET state=?, created=? WHERE id=?",
                                    (state, now - (8 - i) * DAY, e.id))
            ids.append(e.id)
        ob._entries.update({i: await asyncio.to_thread(ob._row, i) for i in ids})
        counts = await retention.prune(core)
        left = [e.id for e in ob.list()]
        # finished ones: only those within 7 days, at most the 3 newest (ids 5, 6, 7); queued ones (3, 8) stay
        assert sorted(left) == [ids[2], ids[4], ids[5], ids[6], ids[7]], left
        assert counts["outbox"] == 3
        await asyncio.sleep(0.05)
        assert sorted(e.entry_id for e in seen if isinstance(e, ev.OutboxRemoved)) == [ids[0], ids[1], ids[3]]
        t.cancel()
    finally:
        await core.stop()


async def test_finished_jobs_in_memory_are_bounded(tmp_path):
    core = Core(config.from_dict({"state": {"dir": str(tmp_path / "state")}}), library=object())
    await core.start()
    try:
        async def nothing():
            return None
        for _ in range(retention.JOBS_IN_MEMORY + 30):
            await core.jobs.run_operation("eject", "stick", nothing)
        assert len(core.jobs.list()) == retention.JOBS_IN_MEMORY + 30
        await retention.prune(core)
        listed = [j.id for j in core.jobs.list()]
        assert len(listed) == retention.JOBS_IN_MEMORY and min(listed) == 31
    finally:
        await core.stop()


def test_audit_log_stays_within_its_limit(tmp_path):
    store = AccessStore(tmp_path / "access.db", Keep(days=30, rows=100))
    store.open()
    for i in range(3 * PRUNE_EVERY):
        store.audit(1, "192.168.1.5", f"download {i}", "web")
    rows = store.audit_log(1, limit=10_000)
    assert 100 <= len(rows) <= 100 + PRUNE_EVERY
    assert rows[0]["what"] == f"download {3 * PRUNE_EVERY - 1}"
    store.close()
    again = AccessStore(tmp_path / "access.db", Keep(days=30, rows=100))     # opening prunes at once
    again.open()
    assert len(again.audit_log(1, limit=10_000)) == 100
    again.close()


async def test_the_daemons_audit_log_follows_the_retention_config(tmp_path):
    """[retention] audit_max reaches the one audit log (core.access), at start and in every pruning."""
    core = Core(config.from_dict({"state": {"dir": str(tmp_path / "state")}, "retention": {"audit_max": 50}}),
                library=object())
    await core.start()
    try:
        store = core.access.store
        for i in range(120):        # fewer than PRUNE_EVERY: only retention.prune brings it down
            await asyncio.to_thread(store.audit, 1, "192.168.1.5", f"download {i}", "web")
        counts = await retention.prune(core)
        rows = await asyncio.to_thread(store.audit_log, 1, 10_000)
        assert counts["audit"] == 70 and len(rows) == 50 and rows[0]["what"] == "download 119"
    finally:
        await core.stop()


def test_hash_cache_keeps_the_newest_entries(tmp_path):
    cache = HashCache(tmp_path / "hashes.db", max_entries=100)
    files = []
    for i in range(250):
        p = tmp_path / f"f{i}"
        p.write_bytes(str(i).encode())
        cache.put(p, i, f"{i:064x}")
        files.append(p)
    assert cache.get(files[-1]) == (249, f"{249:064x}") and cache.get(files[150]) is not None
    assert cache.get(files[149]) is None
    assert cache._db.execute("SELECT COUNT(*) FROM hashes").fetchone()[0] == 100
    cache.close()


def test_render_cache_applies_its_bound_at_start_and_drops_crash_leftovers(tmp_path):
    root = tmp_path / "render"
    cache = RenderCache(root, 10_000)
    keys = [RenderCache.key("s", i) for i in range(5)]
    for k in keys:
        cache.put(k, b"x" * 1500)
    stale = root / keys[0][:2] / f".{keys[0]}.1.2.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = root / keys[1][:2] / f".{keys[1]}.3.4.tmp"
    fresh.write_bytes(b"being written")
    smaller = RenderCache(root, 3000)
    assert not stale.exists() and fresh.exists()            # a write in progress is left alone
    assert sum(1 for k in keys if smaller.get(k)) == 2
    off = RenderCache(root, 0)
    assert not any(off.get(k) for k in keys)
    assert json.dumps(sorted(p.name for p in root.rglob("*") if p.is_file())) == json.dumps([fresh.name])
