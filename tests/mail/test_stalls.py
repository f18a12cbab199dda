"""An SMTP server that stops reading in the middle of DATA, or answers every step slowly for ever: the try ends
(after email.timeout, or at its limit) with a reason a person can read, the message stays queued and goes out
whole, once, when the server takes it."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from steno_exportd import events as ev
from tests.fakes import FakeLibrary, make_session
from tests.mail.conftest import finished
from tests.parts import until
from tests.parts.smtp import Handler, free_port

TO = ["alice@example.org"]


class _Stalling(SMTP):
    """aiosmtpd that, while ``stalls`` lasts, says 354 to DATA and then reads nothing more (a server stuck on
    its disk, or a middlebox holding the connection)."""

    stalls: list[int]
    release: threading.Event

    async def smtp_DATA(self, arg: str) -> None:
        if self.stalls and self.envelope is not None and self.envelope.rcpt_tos:
            self.stalls.pop()
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            self.transport.pause_reading()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
            self.transport.close()
            return
        await super().smtp_DATA(arg)


class StallingServer(Controller):
    def __init__(self, stalls: int) -> None:
        self.stalls, self.release = [1] * stalls, threading.Event()
        super().__init__(Handler(), hostname="127.0.0.1", port=free_port(), data_size_limit=None)

    def factory(self) -> SMTP:
        s = _Stalling(self.handler, **self.SMTP_kwargs)
        s.stalls, s.release = self.stalls, self.release
        return s

    def email_config(self, **extra) -> dict:
        return dict(enabled=True, smtp_host="127.0.0.1", smtp_port=self.port, security="none",
                    sender="steno@recorder.example", retry_initial_seconds=0.2, retry_max_seconds=1.0, **extra)


async def test_a_server_that_stops_reading_mid_data_times_out_with_a_reason_and_gets_it_later(tmp_path,
                                                                                              mail_core):
    audio = tmp_path / "a.wav"
    # larger than what the kernel's socket buffers take in (a few MB each way): the sender must wait on the server
    audio.write_bytes(b"RIFF" + bytes(range(256)) * (24 * 4096))
    server = StallingServer(stalls=1)
    await asyncio.to_thread(server.start)
    try:
        core = await mail_core(None, library=FakeLibrary([make_session(1, audio)]),
                               **server.email_config(timeout=1.0, max_message_mb=50))
        entry = await core.email_sessions([1], ["txt", "audio"], TO)

        def tried_once():
            e = core.outbox.get(entry.id)
            return e if e.attempts >= 1 and e.state == ev.OutboxState.QUEUED else None
        tried = await until(tried_once, "a try that timed out", timeout=60, in_thread=False)
        assert "stopped reading the message" in tried.error and "1 s" in tried.error, repr(tried.error)
        server.release.set()
        done = await finished(core, entry.id, timeout=60)
        assert done.state == ev.OutboxState.SENT, done.error
        [mail] = server.handler.received
        got, sent = await asyncio.to_thread(lambda: (hashlib.sha256(mail.attachments()["audio.wav"]).digest(),
                                                     hashlib.sha256(audio.read_bytes()).digest()))
        assert got == sent and mail.rcpt_tos == TO
    finally:
        server.release.set()
        await asyncio.to_thread(server.stop)


async def test_a_server_answering_every_step_slowly_for_ever_ends_the_try_at_its_limit_and_gets_it_once_later(
        tmp_path, mail_core, caplog, monkeypatch):
    """A broken or hostile SMTP server answers every command just within email.timeout, its replies a line at a
    time (and its answer to the message's final dot one line every second for ever). No step ever timed out: the
    try lasted the sum of its steps' timeouts (a recording mailed at email.timeout = 600: over 12 hours) and held
    the outbox, which sends one message at a time. Now one try must reach its final dot within a fixed allowance
    (5 minutes; here 6 s, the server as slow in proportion) plus the message's size at 16 KiB/s: past that it ends
    as a failed try, one log line saying why, tried again later; the server never had the whole message, so it
    gets it once, at the next try."""
    from steno_exportd.mail import smtp as smtp_module
    monkeypatch.setattr(smtp_module, "TRY_ALLOWANCE", 6.0)
    connections: list[int] = []
    received: list[bytes] = []

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        slow = not connections
        connections.append(1)

        async def reply(*lines: str) -> None:
            for i, line in enumerate(lines):
                if slow:
                    await asyncio.sleep(1.0)
                writer.write(f"{line[:3]}{'-' if i < len(lines) - 1 else ' '}{line[4:]}\r\n".encode())
                await writer.drain()
        try:
            await reply("220 mx.example slow ESMTP", "220 go on")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    await reply("250 mx.example", "250 8BITMIME")
                elif verb == b"DATA":
                    await reply("354 go ahead")
                    data = b""
                    while (got := await reader.readline()) not in (b".\r\n", b""):
                        data += got
                    if slow:                    # its answer to the final dot: a line every second, never its end
                        while True:
                            await asyncio.sleep(1.0)
                            writer.write(b"250-still thinking\r\n")
                            await writer.drain()
                    received.append(data)
                    await reply("250 2.0.0 queued")
                elif verb == b"QUIT":
                    await reply("221 bye")
                    break
                else:
                    await reply("250 ok")
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(talk, "127.0.0.1", 0)
    try:
        caplog.set_level(logging.INFO, logger="steno_exportd")
        port = server.sockets[0].getsockname()[1]
        core = await mail_core(None, enabled=True, smtp_host="127.0.0.1", smtp_port=port, security="none",
                               sender="steno@recorder.example", retry_initial_seconds=0.5, retry_max_seconds=1.0,
                               timeout=3.0)
        entry = await core.email_sessions([1], ["txt"], TO)

        def tried_once():
            e = core.outbox.get(entry.id)
            return e if e.attempts >= 1 and e.state == ev.OutboxState.QUEUED else None
        tried = await until(tried_once, "a try ended at its limit", timeout=90, in_thread=False)
        assert re.match(fr"127\.0\.0\.1:{port} took more than [67] s over one try \(6 s plus the message's ",
                        tried.error), repr(tried.error)
        assert tried.error.isprintable() and not received, tried.error
        said = [r.getMessage() for r in caplog.records if "took more than" in r.getMessage()]
        assert len(said) == 1 and said[0].isprintable(), said
        done = await finished(core, entry.id, timeout=60)
        assert done.state == ev.OutboxState.SENT and done.delivered == tuple(TO) and done.attempts == 2, done
        assert len(received) == 1 and len(connections) == 2
    finally:
        server.close()
        await server.wait_closed()
