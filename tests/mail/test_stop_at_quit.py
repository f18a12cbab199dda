"""The daemon stops (its mail adapter's task cancelled) in the very loop turns in which the server's answer to QUIT
comes back: the mail adapter ends all the same. Python 3.11's asyncio.wait_for (the QUIT's own, aiosmtplib's for
every reply) returns the answer and drops a cancel that comes in the turns between the answer and the waiter's
wake-up: the mail adapter went on to wait for the next message, for ever, and the daemon's stop (and a CI run, 80
minutes, in the teardown of tests/mail/test_retry.py's race of cancels) with it."""
from __future__ import annotations

import asyncio
import contextlib
import time

from steno_exportd import config, events as ev
from steno_exportd.core import Core
from steno_exportd.mail import sender
from tests.mail.conftest import finished, scripted_config

TURNS = 12          # loop turns after the answer to QUIT: the cancel lands in each of them once (the window is 3)
ENDS_WITHIN = 30.0  # seconds a cancelled mail adapter is given to end (it takes milliseconds: this finds a hang)


async def test_a_stop_as_the_server_answers_quit_ends_the_mail_adapter_whatever_the_turn(tmp_path, demo_library):
    mailers: list[asyncio.Task] = []
    turns = 0
    quits = 0

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A server that takes every message; it answers QUIT, and ``turns`` loop turns later the daemon stops."""
        nonlocal quits
        writer.write(b"220 mx.example ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-mx.example\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go on\r\n")
                    await writer.drain()
                    while await reader.readline() not in (b".\r\n", b""):
                        pass
                    writer.write(b"250 2.0.0 taken\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")        # on loopback: in the client's socket at once
                    for _ in range(turns):
                        await asyncio.sleep(0)          # one loop turn each
                    quits += 1
                    mailers[-1].cancel()                # the daemon stops
                    await reader.read()                 # until the client closes the connection
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(talk, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    core = Core(config.from_dict(scripted_config(tmp_path, str(demo_library), port)), clock=time.time)
    await core.start()
    hung: list[int] = []
    try:
        for turns in range(TURNS):
            mailers.append(asyncio.create_task(sender.run(core)))      # the daemon started again
            entry = await core.email_sessions([1], ["txt"], ["alice@example.org"])
            assert (await finished(core, entry.id)).state == ev.OutboxState.SENT
            ended, _ = await asyncio.wait(mailers[-1:], timeout=ENDS_WITHIN)
            if not ended:
                hung.append(turns)
                break
            assert mailers[-1].cancelled(), mailers[-1]
        assert quits == len(mailers), (quits, len(mailers))
        assert hung == [], f"the mail adapter, cancelled {hung[0]} loop turns after the answer to QUIT, never ended"
    finally:
        for m in mailers:               # (a mail adapter that dropped its cancel waits in next_due: this one ends it)
            m.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await m
        await core.stop()
        server.close()
        await server.wait_closed()
