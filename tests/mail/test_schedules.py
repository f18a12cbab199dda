"""A schedule whose target is email: at its time (the test's clock) the sessions arrive at a real SMTP server."""
from __future__ import annotations

import asyncio

import pytest

from steno_exportd import events as ev
from tests.mail.conftest import finished
from tests.parts import until
from tests.test_schedules import Clock, local

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


async def test_an_email_schedule_mails_the_sessions_at_its_time(smtp, mail_core):
    server = await smtp("starttls")
    clock = Clock(local(2026, 11, 23, 6, 0))
    schedule = {"name": "weekly-digest", "interval_minutes": 60, "target": "email:Bob Example <bob@example.org>",
                "sessions": "since_days", "since_days": 36500, "formats": ["txt", "json"]}
    core = await mail_core(server, extra={"schedules": [schedule]}, clock=clock)
    [s] = core.schedules.list()
    assert s.next_run == local(2026, 11, 23, 7, 0)
    clock.t = local(2026, 11, 23, 6, 59, 59)
    assert await core.schedules.tick() == [] and core.outbox.list() == []

    clock.t = local(2026, 11, 23, 7, 0, 1)
    core.schedules.poke()
    entries = await until(lambda: core.outbox.list(), "a scheduled message", in_thread=False)
    done = await finished(core, entries[0].id)
    assert done.state == ev.OutboxState.SENT, done.error
    exportable = [x for x in (await core.listing()).sessions if x.exportable]
    assert sorted(done.sessions) == sorted(x.id for x in exportable) and len(exportable) >= 2
    [mail] = server.received
    assert mail.rcpt_tos == ["bob@example.org"] and mail.message["To"] == "Bob Example <bob@example.org>"
    names = sorted(mail.attachments())
    assert len(names) == 2 * len(exportable)
    for x in exportable:                         # several sessions: each file named after its session
        assert sum(n.startswith(x.short_id) for n in names) == 2
    assert core.schedules.list()[0].last_result == f"{len(exportable)} session(s): message {done.id}"
    assert core.schedules.list()[0].next_run == local(2026, 11, 23, 8, 0, 1)
    await asyncio.sleep(0)
    assert len(core.outbox.list()) == 1
