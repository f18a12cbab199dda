"""Retry and cancel of outbox messages (Core.retry_mail / cancel_mail) against a real aiosmtpd: a message the
server refused for good goes again to everyone it did not reach, a failed notice is composed again, and a cancel
racing the mail adapter leaves each message sent or cancelled, never both."""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from steno_exportd import events as ev
from steno_exportd.errors import BusyError, InvalidArgument
from steno_exportd.outbox.content import Notice
from tests.fakes import FakeLibrary, make_session
from tests.mail.conftest import finished
from tests.parts import until


async def test_a_message_every_recipient_refused_goes_to_them_all_when_retried(smtp, mail_core):
    server = await smtp()
    server.handler.rcpt_answers = {"alice@example.org": "550 5.1.1 no such user here",
                                   "bob@example.org": "553 5.7.1 relaying denied"}
    core = await mail_core(server)
    entry = await core.email_sessions([1], ["txt"], ["Alice Example <alice@example.org>", "bob@example.org"])
    failed = await finished(core, entry.id)
    assert failed.state == ev.OutboxState.FAILED and "every recipient was refused" in failed.error
    assert failed.recipients == () and len(failed.refused) == 2 and server.received == []

    server.handler.rcpt_answers = {}                     # the admin fixed the server
    retried = await core.retry_mail(str(entry.id))        # an id as a web form sends it
    assert retried.state == ev.OutboxState.COMPOSING and retried.error == "" and retried.attempts == 0
    assert retried.recipients == ("Alice Example <alice@example.org>", "bob@example.org")
    assert retried.created >= failed.finished            # a fresh give_up_hours, from the retry
    sent = await finished(core, entry.id)
    assert sent.state == ev.OutboxState.SENT and sent.refused == () and sent.attempts == 1
    [mail] = server.received
    assert sorted(mail.rcpt_tos) == ["alice@example.org", "bob@example.org"]
    assert mail.message["To"] == "Alice Example <alice@example.org>, bob@example.org"
    assert list(core.outbox.dir.iterdir()) == []         # its spool file went when it was sent

    with pytest.raises(InvalidArgument, match=f"message {entry.id} was sent; there is nothing to retry"):
        await core.retry_mail(entry.id)
    for bad in (0, -1, True, "1 OR 1=1", "", "9" * 40, 2**64, None, 1.0):
        with pytest.raises(InvalidArgument, match="no outbox message id"):
            await core.retry_mail(bad)
        with pytest.raises(InvalidArgument, match="no outbox message id"):
            await core.cancel_mail(bad)
    with pytest.raises(InvalidArgument, match="there is no message 4242 in the outbox"):
        await core.cancel_mail(4242)


async def test_a_failed_notice_is_composed_again_from_its_row(smtp, mail_core):
    server = await smtp()
    server.handler.data_answers = ["554 5.6.0 content refused"]
    core = await mail_core(server)
    notice = Notice("export_done", "Export to REC1 done", ("2 sessions", "no errors"), time.time())
    entry = await asyncio.to_thread(core.outbox.queue_notices, [], [notice], ["ops@example.org"])
    core.outbox.notice_queued(entry)
    failed = await finished(core, entry.id)
    assert failed.state == ev.OutboxState.FAILED and "554 5.6.0" in failed.error

    await core.retry_mail(entry.id)
    assert (await finished(core, entry.id)).state == ev.OutboxState.SENT
    [mail] = server.received
    assert mail.message["Subject"] == "[steno] Export to REC1 done" and "2 sessions" in mail.text()
    assert mail.message["Auto-Submitted"] == "auto-generated"


async def test_a_cancel_racing_the_mail_adapter_leaves_each_message_sent_or_cancelled(smtp, mail_core):
    server = await smtp("none", auth=False)
    core = await mail_core(server)
    outcome: dict[int, asyncio.Task] = {}

    async def cancel(entry_id: int) -> str:
        try:
            await core.cancel_mail(entry_id)
            return "cancelled"
        except BusyError:                      # claimed by the mail adapter first: being sent
            return "busy"
        except InvalidArgument:                # already sent
            return "too late"

    # every message is cancelled the moment it is queued, when the mail adapter is woken to claim it too
    events = core.events.subscribe()
    first = asyncio.ensure_future(events.__anext__())
    await asyncio.sleep(0)                     # the subscription exists once its generator has run

    async def follow() -> None:
        e = await first
        while True:
            if isinstance(e, ev.OutboxUpdated) and e.entry.state == ev.OutboxState.QUEUED \
                    and e.entry.id not in outcome:
                outcome[e.entry.id] = asyncio.create_task(cancel(e.entry.id))
            e = await events.__anext__()
    follower = asyncio.create_task(follow())
    try:
        n = 30
        ids = [(await core.email_sessions([1 + i % 3], ["txt"], [f"r{i}@example.org"])).id for i in range(n)]
        done = [await finished(core, i) for i in ids]
        await until(lambda: len(outcome) == n, "a cancel for every message", in_thread=False)
        said = {i: await outcome[i] for i in ids}
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await events.aclose()

    states = {e.id: e.state for e in done}
    sent = [i for i in ids if states[i] == ev.OutboxState.SENT]
    cancelled = [i for i in ids if states[i] == ev.OutboxState.CANCELLED]
    assert len(sent) + len(cancelled) == n, states
    assert all(said[i] == "cancelled" for i in cancelled) and all(said[i] != "cancelled" for i in sent), said
    # a cancelled message never reached the server: only the sent ones did, each once
    assert server.handler.data_attempts == len(sent) == len(server.received)
    assert sorted(m.rcpt_tos[0] for m in server.received) == sorted(f"r{ids.index(i)}@example.org" for i in sent)
    assert list(core.outbox.dir.iterdir()) == []         # no spool file left behind by either outcome
    assert cancelled, f"no cancel won its race: {said}"


class HeldLibrary(FakeLibrary):
    """A library whose sessions load only once the test lets them (then, if told, fail to)."""

    def __init__(self, sessions) -> None:
        super().__init__(sessions)
        self.loading = threading.Event()
        self.release = threading.Event()
        self.fail = False

    def get_session(self, key, uuid=None):
        self.loading.set()
        assert self.release.wait(30), "never released"
        if self.fail:
            raise OSError("the recorder's disk went away")
        return super().get_session(key, uuid)


@pytest.mark.parametrize("then_fails", [False, True])
async def test_a_message_cancelled_while_it_is_composed_stays_cancelled_and_leaves_no_file(smtp, mail_core,
                                                                                             then_fails):
    lib = HeldLibrary([make_session(1)])
    server = await smtp()
    core = await mail_core(server, library=lib)
    entry = await core.email_sessions([1], ["txt"], ["alice@example.org"])
    await asyncio.to_thread(lib.loading.wait, 30)
    with pytest.raises(BusyError, match="being composed right now"):
        await core.retry_mail(entry.id)
    assert (await core.cancel_mail(entry.id)).state == ev.OutboxState.CANCELLED
    lib.fail = then_fails
    events = core.events.subscribe()
    update = asyncio.ensure_future(events.__anext__())
    await asyncio.sleep(0)                      # subscribed once its generator has run
    lib.release.set()
    try:
        while True:                             # what the compose reports once it ends (written, or failed)
            e = await asyncio.wait_for(update, 30)
            if isinstance(e, ev.OutboxUpdated) and e.entry.id == entry.id:
                break
            update = asyncio.ensure_future(events.__anext__())
    finally:
        await events.aclose()
    assert e.entry.state == ev.OutboxState.CANCELLED and e.entry.error == "cancelled"
    assert core.outbox.get(entry.id).state == ev.OutboxState.CANCELLED
    assert list(core.outbox.dir.iterdir()) == []        # the message written meanwhile is gone
    assert server.handler.data_attempts == 0 and server.received == []


async def test_a_message_retried_after_a_restore_never_carries_the_meeting_that_took_its_sessions_number(
        smtp, mail_core, tmp_path):
    """A message for a meeting failed (the server refused its recipients); meanwhile the recorder's database was
    restored from a backup made before that meeting, and a new meeting took its number (ids count on from the
    backup's). The message retried is composed again: it must fail saying why, and the server receives nothing
    of the new meeting, which nobody asked to send."""
    import contextlib
    import os
    import sqlite3

    from steno_exportd import demo
    from tests.recorder_db import add_session_like

    lib = tmp_path / "lib"
    demo.generate(lib, sessions=3, seed=5, small=True)
    db, backup = lib / "silent_steno.db", lib / "backup.db"
    with sqlite3.connect(db) as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    asked = add_session_like(db, title="All-hands, fine to send")
    server = await smtp()
    server.handler.rcpt_answers = {"alice@example.org": "550 5.1.1 no such user here"}
    core = await mail_core(server, extra={"recorder": {"db_path": str(db)}})
    sid = next(s.id for s in (await core.listing()).sessions if s.uuid == asked)
    entry = await core.email_sessions([sid], ["txt"], ["alice@example.org"])
    assert (await finished(core, entry.id)).state == ev.OutboxState.FAILED

    os.replace(backup, db)                  # the restore (the recorder stopped: its WAL goes with the old file)
    for tail in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{db}{tail}")
    other = await asyncio.to_thread(add_session_like, db, None, "Board meeting: layoffs")
    for _ in range(100):
        taken = [s.id for s in (await core.listing()).sessions if s.uuid == other]
        if taken:
            break
        await asyncio.sleep(0.05)
    assert taken == [sid], (taken, sid)     # the number is the new meeting's now

    server.handler.rcpt_answers = {}
    await core.retry_mail(entry.id)
    failed = await finished(core, entry.id)
    assert failed.state == ev.OutboxState.FAILED, failed
    assert "no longer on this recorder" in failed.error, failed.error
    assert server.received == []


async def test_no_more_than_max_waiting_messages_wait_however_they_are_asked_for(smtp, mail_core):
    """email.MAX_WAITING bounds the messages that wait (each composed renders documents): asked for at once from
    many callers, or cancelled and asked for again with a retry, never more wait."""
    from steno_exportd.outbox.queue import MAX_WAITING
    down = await smtp("none", auth=False)
    await asyncio.to_thread(down.stop)           # its port refuses: every message stays queued, backing off
    core = await mail_core(down, retry_initial_seconds=3600, retry_max_seconds=3600)

    def waiting() -> int:
        return sum(1 for e in core.outbox.list() if not e.state.finished)

    async def ask(i: int) -> str:
        try:
            await core.email_sessions([1 + i % 3], ["txt"], [f"r{i}@example.org"])
            return "stored"
        except InvalidArgument as e:
            assert "messages waiting to be sent" in str(e), e
            return "refused"

    said = await asyncio.gather(*(ask(i) for i in range(MAX_WAITING + 50)))   # many callers at once
    assert said.count("stored") == MAX_WAITING and waiting() == MAX_WAITING, (said.count("stored"), waiting())

    first = [e.id for e in core.outbox.list()]
    busy = list(first)
    for _ in range(200):                         # (some are being tried: each try is refused at once)
        for i in list(busy):
            with contextlib.suppress(BusyError):
                await core.cancel_mail(i)
                busy.remove(i)
        if not busy:
            break
        await asyncio.sleep(0.05)
    cancelled = [e.id for e in core.outbox.list() if e.state == ev.OutboxState.CANCELLED]
    assert len(cancelled) == MAX_WAITING, (len(cancelled), busy)
    said = await asyncio.gather(*(ask(i) for i in range(MAX_WAITING)))
    assert waiting() == MAX_WAITING, waiting()

    async def retry(i: int) -> str:
        try:
            await core.retry_mail(i)
            return "retried"
        except InvalidArgument as e:
            assert "messages waiting to be sent" in str(e), e
            return "refused"
    said = await asyncio.gather(*(retry(i) for i in cancelled))
    assert said.count("retried") == 0 and waiting() == MAX_WAITING, (said.count("retried"), waiting())
