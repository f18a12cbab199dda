"""An SMTP server that stops reading in the middle of DATA: the try ends after email.timeout with a reason a
person can read, the message stays queued and goes out whole once the server takes it."""
from __future__ import annotations

import asyncio
import hashlib
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
