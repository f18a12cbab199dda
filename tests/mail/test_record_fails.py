"""The state database fails to record what the server answered (disk full, a locked state.db): a message the
server took is recorded sent once the write goes through, never queued to go out again; when it cannot be recorded
at all the daemon's mail loop goes on with the next message, the one the server took never sent a second time."""
from __future__ import annotations

import asyncio
import logging
import sqlite3

import aiosmtplib
import pytest

from steno_exportd import events as ev
from tests.mail.conftest import finished
from tests.parts import until

TO = ["alice@example.org"]


def _fail_writes(monkeypatch, outbox, method: str, times: int) -> list[int]:
    """outbox.<method> raises SQLite's 'database or disk is full' its first ``times`` calls; the calls counted."""
    real = getattr(outbox, method)
    calls = [0]

    def failing(*args, **kw):
        calls[0] += 1
        if calls[0] <= times:
            raise sqlite3.OperationalError("database or disk is full")
        return real(*args, **kw)
    monkeypatch.setattr(outbox, method, failing)
    return calls


# _report_sync: the write fails before anything is written; _finish_sync: after the recipients and delivered
# were written, before the state (a retry must not list alice twice)
@pytest.mark.parametrize("method", ["_report_sync", "_finish_sync"])
async def test_an_accepted_message_whose_record_fails_once_is_recorded_sent_and_not_sent_again(method, smtp,
                                                                                               mail_core,
                                                                                               monkeypatch):
    server = await smtp()
    core = await mail_core(server)
    _fail_writes(monkeypatch, core.outbox, method, 1)
    entry = await core.email_sessions([1], ["txt"], TO)
    done = await finished(core, entry.id)
    assert done.state == ev.OutboxState.SENT and done.delivered == tuple(TO), done
    assert done.attempts == 1 and done.error == "", done
    second = await core.email_sessions([1], ["txt"], TO)       # the loop went on: a later message goes out
    assert (await finished(core, second.id)).state == ev.OutboxState.SENT
    assert len(server.received) == 2 and server.handler.data_attempts == 2


async def test_when_nothing_can_be_recorded_the_mail_loop_goes_on_and_sends_nothing_twice(smtp, mail_core,
                                                                                          monkeypatch, caplog):
    """Every record of the first message fails (and the error handler's own record too, before): the message
    stays 'sending' for this run, never sent again while the daemon runs; the next message goes out."""
    server = await smtp()
    core = await mail_core(server)
    caplog.set_level(logging.INFO, logger="steno_exportd")
    calls = _fail_writes(monkeypatch, core.outbox, "_report_sync", 10 ** 6)
    first = await core.email_sessions([1], ["txt"], TO)

    def lines():
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
                and f"message {first.id}" in r.getMessage()]
    await until(lambda: any("cannot be recorded" in line for line in lines()), "the message taken, its record given up",
                in_thread=False)
    assert len(server.received) == 1 and calls[0] > 1
    monkeypatch.undo()
    second = await core.email_sessions([1], ["txt"], TO)
    done = await finished(core, second.id)
    assert done.state == ev.OutboxState.SENT, done
    assert core.outbox.get(first.id).state == ev.OutboxState.SENDING
    assert len(server.received) == 2 and server.handler.data_attempts == 2
    assert len(lines()) == 1, lines()       # one line for the message, no second record of it as failed


async def test_an_unexpected_errors_words_are_escaped_and_cut_in_the_outbox(smtp, mail_core, monkeypatch):
    server = await smtp()
    core = await mail_core(server)

    async def broken(self, *args, **kw):       # aiosmtplib (or this daemon) fails in a way nobody planned for
        raise RuntimeError("bad\x1b[2J\r\nForged: line\x07 " + "z" * 5000)
    monkeypatch.setattr(aiosmtplib.SMTP, "mail", broken)
    entry = await core.email_sessions([1], ["txt"], TO)

    def tried_once():
        e = core.outbox.get(entry.id)
        return e if e.attempts >= 1 and e.state == ev.OutboxState.QUEUED else None
    done = await until(tried_once, "a try that failed", in_thread=False)
    assert "RuntimeError: bad\\x1b[2J" in done.error, repr(done.error[:200])
    assert not any(c in done.error for c in "\x1b\x07\r\n") and len(done.error) <= 1000, repr(done.error[:200])
    assert server.received == []
