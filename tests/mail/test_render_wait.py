"""Mails whose documents take seconds to render wait for the render worker without holding the threads the rest
of the daemon runs its short blocking work in."""
from __future__ import annotations

import asyncio
import os
import time

from steno_exportd import events as ev
from tests.engine.test_cancel_render import _long_session, cpu_seconds, render_workers
from tests.mail.conftest import finished
from tests.recorder_db import RecorderDB

TO = ["alice@example.org"]
HOLD = 0.5      # seconds each of the daemon's other blocking calls takes (a page's read on a slow SD card)


async def test_mails_with_long_pdfs_never_hold_the_threads_the_page_and_jobs_need(tmp_path, smtp, mail_core):
    """THREATS: nobody starves other callers. Three mails with a long meeting's PDF are composed (each render
    seconds long, in the one worker): meanwhile as many blocking calls as the loop's default executor has threads
    (the page's reads, the login check, the jobs' bookkeeping) all start at once, none waits for the mails."""
    rec = RecorderDB(tmp_path / "rec", threads=True)
    try:
        long = await asyncio.to_thread(_long_session, rec, 6000)
        server = await smtp()
        core = await mail_core(server, extra={"recorder": {"db_path": str(rec.path)}}, max_message_mb=20)
        entries = [await core.email_sessions([long], ["pdf"], TO) for _ in range(3)]
        deadline = time.monotonic() + 60
        while cpu_seconds(render_workers()) < 0.3:          # the first mail's PDF is being rendered
            assert time.monotonic() < deadline, "no PDF was rendered for the mails in 60 s"
            await asyncio.sleep(0.05)

        # the size asyncio gives the loop's default executor (ThreadPoolExecutor's default: 6 on 2 cores)
        threads = min(32, (os.cpu_count() or 1) + 4)
        asked = time.monotonic()

        def other_work() -> float:
            began = time.monotonic() - asked
            time.sleep(HOLD)
            return began
        waits = await asyncio.wait_for(asyncio.gather(*(asyncio.to_thread(other_work) for _ in range(threads))), 120)
        composing = [e.id for e in entries if core.outbox.get(e.id).state == ev.OutboxState.COMPOSING]
        assert composing, "the mails were composed before the other work was asked for"
        # one of them started only when another's HOLD was over: a thread was held by a mail waiting for the worker
        assert max(waits) < HOLD / 2, \
            f"blocking calls waited for a thread while mails were composed: {sorted(round(w, 2) for w in waits)} s"

        for e in entries:
            done = await finished(core, e.id, timeout=120)
            assert done.state == ev.OutboxState.SENT, done.error
        got = [m.attachments() for m in server.received]
        assert len(got) == 3 and all(len(a) == 1 and next(iter(a.values())).startswith(b"%PDF") for a in got), \
            [{n: v[:8] for n, v in a.items()} for a in got]
    finally:
        rec.close()
