"""Mails whose documents take seconds to render wait for the render worker without holding the threads the rest
of the daemon runs its short blocking work in; nor does the search indexer, which runs meanwhile."""
from __future__ import annotations

import asyncio
import threading
import time

from steno_exportd import events as ev
from tests.default_threads import DEFAULT_THREADS
from tests.engine.test_cancel_render import _long_session, cpu_seconds, render_workers
from tests.mail.conftest import finished
from tests.recorder_db import RecorderDB

TO = ["alice@example.org"]
PAST = 40               # past meetings of 5,000 lines each: seconds of indexing for search (its duty cycle included)
TOGETHER = 2.0          # seconds the page's blocking calls get to all be running at once (a free thread: milliseconds)


def _past_meetings(rec: RecorderDB) -> None:
    for _ in range(PAST):
        _long_session(rec, 5000)


async def test_mails_with_long_pdfs_and_the_indexer_never_hold_the_threads_the_page_needs(
        default_threads, tmp_path, smtp, mail_core):
    """THREATS: nobody starves other callers. Three mails with a long meeting's PDF are composed (each render seconds
    long, in the one worker) while the search index of the recorder's past meetings is built (as after an update):
    meanwhile as many blocking calls as the loop's default executor has threads (the page's reads, the login check,
    the jobs' bookkeeping) all run at once, none waiting for a mail or the indexer; and none of the callables that
    wait for the render worker or index for seconds ever ran in those threads (tests/default_threads.HOLDERS)."""
    rec = RecorderDB(tmp_path / "rec", threads=True)
    try:
        long = await asyncio.to_thread(_long_session, rec, 6000)
        await asyncio.to_thread(_past_meetings, rec)
        server = await smtp()
        core = await mail_core(server, extra={"recorder": {"db_path": str(rec.path)}}, max_message_mb=20)
        entries = [await core.email_sessions([long], ["pdf"], TO) for _ in range(3)]
        deadline = time.monotonic() + 60
        while cpu_seconds(render_workers()) < 0.3:          # the first mail's PDF is being rendered
            assert time.monotonic() < deadline, "no PDF was rendered for the mails in 60 s"
            await asyncio.sleep(0.05)

        together = threading.Barrier(DEFAULT_THREADS)

        def page_read() -> None:                            # broken when they were not all running in TOGETHER s
            together.wait(TOGETHER)
        asked = time.monotonic()
        indexing = (await core.search("budget")).pending
        outcomes = await asyncio.wait_for(asyncio.gather(*(asyncio.to_thread(page_read) for _ in range(DEFAULT_THREADS)),
                                                         return_exceptions=True), 60)
        answered = time.monotonic()
        still_indexing = (await core.search("budget")).pending
        composing = [e.id for e in entries if core.outbox.get(e.id).state == ev.OutboxState.COMPOSING]
        assert composing, "the mails were composed before the page's calls were made"
        assert indexing and still_indexing, "the past meetings were indexed before the page's calls were made"
        held = [str(c) for c in default_threads.during(asked, answered) if "page_read" not in c.name]
        assert all(o is None for o in outcomes), \
            f"the page's {DEFAULT_THREADS} blocking calls were not all running within {TOGETHER} s while mails " \
            f"were composed (a default thread was held); held meanwhile: {held}"
        holders = default_threads.holders()
        assert not holders, f"waited for the render worker or indexed in the default threads: {holders}"

        for e in entries:
            done = await finished(core, e.id, timeout=120)
            assert done.state == ev.OutboxState.SENT, done.error
        got = [m.attachments() for m in server.received]
        assert len(got) == 3 and all(len(a) == 1 and next(iter(a.values())).startswith(b"%PDF") for a in got), \
            [{n: v[:8] for n, v in a.items()} for a in got]
        assert not default_threads.holders(), default_threads.holders()
    finally:
        rec.close()
