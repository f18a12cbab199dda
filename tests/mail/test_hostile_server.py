"""An SMTP server that is hostile or broken: its words (terminal escapes, line breaks, 24 KB of them) reach the
outbox, D-Bus, the page and the log escaped and short; a server that took the message is told QUIT, and when it
holds its answer to QUIT it never gets the message twice because the daemon stopped meanwhile."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from steno_exportd import config, events as ev
from steno_exportd.core import Core
from steno_exportd.mail import sender
from tests.mail.conftest import finished, through_scripted
from tests.parts import until
from tests.parts.smtp import Handler, free_port

TO = ["alice@example.org", "bob@example.org"]
# a reply of 8 continuation lines of 3,000 characters each, with a terminal escape that clears the screen and
# one that retitles the window: under aiosmtplib's 32 KiB for one reply, so it reaches the daemon whole
EVIL = "".join(f"-\x1b[2J\x1b]2;owned\x07 {'y' * 3000}\r\n550" for _ in range(8)) + " 5.1.1 no\x1b[0m such user"


def _clean(text: str) -> bool:
    return not any(c in text for c in "\x1b\x07\r\n") and len(text) <= 1000


async def test_a_servers_escapes_and_long_replies_are_escaped_and_cut_everywhere(smtp, mail_core, caplog):
    server = await smtp("none", False)
    server.handler.rcpt_answers = {"bob@example.org": "550" + EVIL}
    server.handler.data_answers = ["451" + EVIL.replace("550", "451").replace("5.1.1", "4.3.0")]
    caplog.set_level(logging.INFO, logger="steno_exportd")
    core = await mail_core(server)
    entry = await core.email_sessions([1], ["txt"], TO)

    def tried_once():
        e = core.outbox.get(entry.id)
        return e if e.attempts >= 1 and e.state == ev.OutboxState.QUEUED else None
    tried = await until(tried_once, "a try the server deferred", in_thread=False)
    assert "451" in tried.error and _clean(tried.error), repr(tried.error[:200])
    done = await finished(core, entry.id)
    assert done.state == ev.OutboxState.SENT and done.delivered == ("alice@example.org",), done
    [refused] = done.refused
    assert refused.startswith("bob@example.org: 550") and _clean(refused), repr(refused[:200])
    assert "\\x1b[2J" in refused           # shown, escaped: a person sees what the server sent
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("steno_exportd")]
    assert any("451" in line for line in lines), lines
    assert all(_clean(line) for line in lines), [line[:200] for line in lines if not _clean(line)]


class _QuitHolding(SMTP):
    """aiosmtpd that accepts the message (250 to its final dot) and then answers QUIT only when released."""

    quits: threading.Event
    release: threading.Event

    async def smtp_QUIT(self, arg: str) -> None:
        self.quits.set()
        while not self.release.is_set():
            await asyncio.sleep(0.05)
        await super().smtp_QUIT(arg)


class QuitHoldingServer(Controller):
    def __init__(self) -> None:
        self.quits, self.release = threading.Event(), threading.Event()
        super().__init__(Handler(), hostname="127.0.0.1", port=free_port(), data_size_limit=None)

    def factory(self) -> SMTP:
        s = _QuitHolding(self.handler, **self.SMTP_kwargs)
        s.quits, s.release = self.quits, self.release
        return s


async def test_a_message_the_server_took_is_not_sent_again_after_a_stop_while_it_holds_quit(tmp_path,
                                                                                          demo_library):
    server = QuitHoldingServer()
    await asyncio.to_thread(server.start)
    data = {"recorder": {"db_path": str(demo_library)}, "state": {"dir": str(tmp_path / "state")},
            "http": {"enabled": False},
            "email": dict(enabled=True, smtp_host="127.0.0.1", smtp_port=server.port, security="none",
                          sender="steno@recorder.example", retry_initial_seconds=0.2, retry_max_seconds=1.0,
                          timeout=10.0)}
    try:
        core = Core(config.from_dict(data), clock=time.time)
        await core.start()
        mailer = asyncio.create_task(sender.run(core))
        try:
            entry = await core.email_sessions([1], ["txt"], TO[:1])
            # the server has the message and said so (250); it now holds the QUIT that follows
            # (before, the connection was dropped without one: the StreamWriter DATA was written through closed
            # aiosmtplib's transport when it went)
            await until(server.quits.is_set, "the QUIT after the accepted message", timeout=30, in_thread=False)
            assert len(server.handler.received) == 1
        finally:
            mailer.cancel()               # the daemon stops (systemctl restart) while QUIT waits for its answer
            with contextlib.suppress(asyncio.CancelledError):
                await mailer
            await core.stop()
        server.release.set()

        again = Core(config.from_dict(data), clock=time.time)
        await again.start()
        mailer = asyncio.create_task(sender.run(again))
        try:
            after = again.outbox.get(entry.id)
            # the server said 250: the message is sent, and stays sent (not queued to go out a second time)
            assert after.state == ev.OutboxState.SENT and after.delivered == tuple(TO[:1]), after
        finally:
            mailer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mailer
            await again.stop()
        assert len(server.handler.received) == 1
    finally:
        server.release.set()
        await asyncio.to_thread(server.stop)


async def test_a_server_offering_only_auth_mechanisms_the_daemon_lacks_fails_at_once_naming_them(tmp_path, smtp,
                                                                                                   mail_core):
    """A lie or a mismatch in EHLO: AUTH offered, but only as mechanisms aiosmtplib does not speak. Another try
    gets the same EHLO: the message fails at once with what to change, not tried again for email.give_up_hours."""
    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx.example ESMTP\r\n")
        try:
            while line := await reader.readline():
                if line[:4].upper() in (b"EHLO", b"HELO"):
                    writer.write(b"250-mx.example\r\n250-AUTH GSSAPI X-\x1bWEIRD\r\n250 8BITMIME\r\n")
                elif line[:4].upper() == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"502 not here\r\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
    done, _ = await through_scripted(talk, smtp, mail_core, "steno", TO[:1])
    assert done.state == ev.OutboxState.FAILED and done.attempts == 1, done
    assert "GSSAPI" in done.error and "PLAIN" in done.error and "email.username" in done.error, done.error
    assert _clean(done.error), repr(done.error)
