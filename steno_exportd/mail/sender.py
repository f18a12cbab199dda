"""The mail adapter's loop: take each due message from the core's outbox, send it, report how it went."""
from __future__ import annotations

import asyncio
import importlib
import logging

from steno_exportd.core import Core
from steno_exportd.outbox.queue import Delivery

log = logging.getLogger(__name__)


async def run(core: Core) -> None:
    """Drain the outbox for as long as the daemon runs (reads core.cfg.email at every message)."""
    while True:
        out = await core.outbox.next_due()
        # smtp imports aiosmtplib (~60 ms here, ~3x on a Pi 4): at the first message, off the loop,
        # not at every daemon start (most recorders never send mail)
        reported = False
        try:
            smtp = await asyncio.to_thread(importlib.import_module, "steno_exportd.mail.smtp")
            # recorded before QUIT: a stop while the server holds its answer to QUIT (after it took the message)
            # must find it sent, not 'sending', which is queued again at the next start
            async with smtp.delivery(core.cfg.email, out) as result:
                await core.outbox.report(out.id, result)
                reported = True
        except Exception as e:  # noqa: BLE001 - error boundary of one message: the loop goes on
            log.exception("sending message %d failed", out.id)
            if not reported:
                await core.outbox.report(out.id, Delivery(error=f"{type(e).__name__}: {e}", transient=True))
        # a stop before the server answered leaves it 'sending' in the state DB: it is queued again at the next start
