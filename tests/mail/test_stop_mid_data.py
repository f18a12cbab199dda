"""The daemon stops (systemctl stop) while a message is in the middle of DATA and the server holds (reads no
more): the connection goes without QUIT (mid-DATA 'QUIT' would be a line of the message, and the stop waited up
to 5 s for its answer); the server gets no final dot and keeps nothing; the message goes out at the next start."""
from __future__ import annotations

import asyncio
import contextlib
import time

from steno_exportd import config, events as ev
from steno_exportd.core import Core
from steno_exportd.mail import sender
from tests.fakes import FakeLibrary, make_session
from tests.mail.conftest import scripted_config

TO = ["alice@example.org"]


async def test_a_stop_mid_data_goes_without_quit_and_nothing_is_delivered(tmp_path):
    audio = tmp_path / "a.wav"
    # larger than what the kernel's socket buffers take in (a few MB each way): the sender waits on the server
    audio.write_bytes(b"RIFF" + bytes(range(256)) * (24 * 4096))
    received: list[bytes] = []
    in_data, release, closed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Says 354 to DATA, reads the message's first lines, then holds until released; then reads to the end."""
        writer.write(b"220 mx.example ESMTP\r\n")
        try:
            while line := await reader.readline():
                if line[:4].upper() in (b"EHLO", b"HELO"):
                    writer.write(b"250-mx.example\r\n250 8BITMIME\r\n")
                elif line[:4].upper() == b"DATA":
                    writer.write(b"354 go on\r\n")
                    await writer.drain()
                    received.append(await reader.readline())
                    in_data.set()
                    await release.wait()
                    while chunk := await reader.read(1 << 20):
                        received.append(chunk)
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            closed.set()
            writer.close()

    server = await asyncio.start_server(talk, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    data = scripted_config(tmp_path, str(tmp_path / "none.db"), port, max_message_mb=50)
    try:
        core = Core(config.from_dict(data), library=FakeLibrary([make_session(1, audio)]), clock=time.time)
        await core.start()
        mailer = asyncio.create_task(sender.run(core))
        try:
            entry = await core.email_sessions([1], ["txt", "audio"], TO)
            await in_data.wait()
        finally:
            mailer.cancel()                   # the daemon stops while the server holds mid-DATA
            with contextlib.suppress(asyncio.CancelledError):
                await mailer
            release.set()
            await closed.wait()
            await core.stop()
        text = b"".join(received)
        assert b"QUIT" not in text, text[-200:]
        assert not text.endswith(b"\r\n.\r\n")         # no final dot: the server keeps nothing
        assert core.outbox.get(entry.id).state == ev.OutboxState.SENDING   # queued again at the next start
    finally:
        server.close()
        await server.wait_closed()
