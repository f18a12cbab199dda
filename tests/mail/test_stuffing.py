"""DATA is sent in blocks: lines starting with '.' are doubled wherever a block boundary falls."""
from __future__ import annotations

import dataclasses
import itertools

from steno_exportd import events as ev
from steno_exportd.mail.smtp import _stuffed
from tests.fakes import FakeLibrary, make_session
from tests.mail.conftest import finished


def unstuff(data: bytes) -> bytes:
    return b"\r\n".join(line[1:] if line.startswith(b"..") else line for line in data.split(b"\r\n"))


def test_every_block_boundary():
    message = b".a\r\n..b\r\nc.\r\n.\r\n\r\n.d\r\n"
    for cut1, cut2 in itertools.combinations(range(1, len(message)), 2):
        at_start, out = True, b""
        for block in (message[:cut1], message[cut1:cut2], message[cut2:]):
            out += _stuffed(block, at_start)
            at_start = block.endswith(b"\n")
        assert unstuff(out) == message and b"\r\n.\r\n" not in out, (cut1, cut2)


async def test_a_summary_with_dot_lines_arrives_intact(tmp_path, smtp, mail_core):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF" + bytes(100))
    summary = ".\n.hidden\n..two\nend."
    s = make_session(1, audio, "Dots")
    lib = FakeLibrary([dataclasses.replace(s, summary_text=summary)])
    server = await smtp()
    core = await mail_core(server, library=lib)
    entry = await core.email_sessions([1], ["txt"], ["alice@example.org"])
    assert (await finished(core, entry.id)).state == ev.OutboxState.SENT
    [mail] = server.received
    assert summary in mail.text(), mail.text()
