"""The mail adapter's loop: take each due message from the core's outbox, send it, report how it went."""
from __future__ import annotations

import asyncio
import importlib
import logging

from steno_exportd.core import Core
from steno_exportd.mail import said
from steno_exportd.outbox.queue import Delivery

log = logging.getLogger(__name__)

# a failed record of what the server answered (state.db locked by a backup, its disk full) is tried again this many
# times, waiting REPORT_WAIT, 2x, 4x... in between (0.1 + 0.2 + 0.4 + 0.8 = 1.5 s in all), the connection held open
REPORT_TRIES = 5
REPORT_WAIT = 0.1


async def _record(core: Core, entry_id: int, result: Delivery) -> bool:
    """Record one try's answer, tried again when the state DB fails; False (one log line) when it never went in.
    The outbox's report is safe to make again (nobody is listed twice)."""
    for n in range(REPORT_TRIES):
        try:
            await core.outbox.report(entry_id, result)
            return True
        except Exception as e:  # noqa: BLE001 - sqlite3.Error, OSError...: the same answer is recorded again
            if n == REPORT_TRIES - 1:
                log.error("message %d: how it went cannot be recorded (%s: %s); it stays 'sending' until the "
                          "daemon restarts", entry_id, type(e).__name__, said(e))
                return False
            await asyncio.sleep(REPORT_WAIT * 2 ** n)
    return False


async def run(core: Core) -> None:
    """Drain the outbox for as long as the daemon runs (reads core.cfg.email at every message).

    A message the server took is never recorded as a failed try (that queued it again: sent twice). When its
    record fails REPORT_TRIES times it stays 'sending' for this run: never sent again while the daemon runs, queued
    again at the next start (as after a stop before the server answered), so nothing is lost; the loop goes on
    with the next message (an exception out of here ended the daemon's task group)."""
    me = asyncio.current_task()
    while True:
        # A stop (this task cancelled) in the loop turns in which a server's answer comes back is dropped by Python
        # 3.11's asyncio.wait_for (the QUIT's in smtp._close, aiosmtplib's around every reply): it returns the
        # answer and the try ends as if no stop came. Taken up here, or this loop waited for the next message for
        # ever, and the daemon's stop with it (a CI run hung 80 minutes in a test's teardown: a stop 3 to 5 turns
        # after the answer to QUIT, tests/mail/test_stop_at_quit.py)
        if me is not None and me.cancelling():
            raise asyncio.CancelledError()
        out = await core.outbox.next_due()
        # smtp imports aiosmtplib (~60 ms here, ~3x on a Pi 4): at the first message, off the loop,
        # not at every daemon start (most recorders never send mail)
        answered = False
        try:
            smtp = await asyncio.to_thread(importlib.import_module, "steno_exportd.mail.smtp")
            # recorded before QUIT: a stop while the server holds its answer to QUIT (after it took the message)
            # must find it sent, not 'sending', which is queued again at the next start
            async with smtp.delivery(core.cfg.email, out) as result:
                answered = True
                await _record(core, out.id, result)
        except Exception as e:  # noqa: BLE001 - error boundary of one message: the loop goes on
            log.exception("sending message %d failed", out.id)
            if not answered:
                await _record(core, out.id, Delivery(error=said(f"{type(e).__name__}: {e}"), transient=True))
        # a stop before the server answered leaves it 'sending' in the state DB: it is queued again at the next start
