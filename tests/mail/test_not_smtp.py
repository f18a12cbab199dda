"""Something that is not an SMTP server on the configured port (a web server, a wrong port, a box that talks
nonsense or without end): the message fails at once with a reason a person can act on, never a bare code."""
from __future__ import annotations

import asyncio

import pytest

from steno_exportd import events as ev
from tests.mail.conftest import through_scripted

TO = ["alice@example.org"]


@pytest.mark.parametrize("greeting, says", [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    (b"".join(b"220-" + b"x" * 500 + b"\r\n" for _ in range(200)) + b"220 ok\r\n", "too long"),
])
async def test_a_server_that_does_not_speak_smtp_fails_with_a_reason(greeting, says, smtp, mail_core):
    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        try:
            await writer.drain()
            await reader.read(4096)
        except ConnectionError:
            pass
        finally:
            writer.close()
    done, port = await through_scripted(talk, smtp, mail_core, "", TO)
    assert done.state == ev.OutboxState.FAILED and done.attempts == 1, done
    assert f"127.0.0.1:{port} does not answer like an SMTP server" in done.error, done.error
    assert says in done.error and "-1" not in done.error and "smtp_port" in done.error, done.error
