"""What the SMTP server and callers do wrong: 4xx then 2xx, 5xx, a server that is down, bad addresses,
header injection through a session title, a message over the size limit."""
from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from steno_exportd import events as ev
from steno_exportd.errors import InvalidArgument, NotFoundError
from tests.fakes import FakeLibrary, make_session
from tests.mail.conftest import finished
from tests.parts import until

TO = ["alice@example.org"]


async def test_421_then_accepted_is_retried_and_delivered_once(smtp, mail_core):
    server = await smtp()
    server.handler.data_answers = ["421 4.3.2 System not accepting messages, try later"]
    core = await mail_core(server)
    entry = await core.email_sessions([1], ["txt"], TO)
    done = await finished(core, entry.id)
    assert done.state == ev.OutboxState.SENT, done.error
    assert done.attempts == 2 and server.handler.data_attempts == 2
    assert len(server.received) == 1


async def test_550_fails_with_the_reason_and_is_not_retried(smtp, mail_core):
    server = await smtp()
    server.handler.data_answers = ["550 5.7.1 Message rejected by policy"] * 5
    core = await mail_core(server)
    entry = await core.email_sessions([1], ["txt"], TO)
    done = await finished(core, entry.id)
    assert done.state == ev.OutboxState.FAILED
    assert "550 5.7.1 Message rejected by policy" in done.error
    assert done.attempts == 1
    # nothing to poll for: an absence is only seen by waiting longer than several retry delays (0.2 s, 0.4 s)
    await asyncio.sleep(1.5)
    assert server.handler.data_attempts == 1 and server.received == []
    assert not (core.outbox.dir / "x").exists() and list(core.outbox.dir.iterdir()) == []   # spool file gone


async def test_a_refused_recipient_is_named_the_others_get_it(smtp, mail_core):
    server = await smtp()
    server.handler.rcpt_answers = {"bob@example.org": "550 5.1.1 No such user"}
    core = await mail_core(server)
    entry = await core.email_sessions([1], ["txt"], ["alice@example.org", "bob@example.org"])
    done = await finished(core, entry.id)
    assert done.state == ev.OutboxState.SENT
    assert done.delivered == ("alice@example.org",)
    assert done.refused == ("bob@example.org: 550 5.1.1 No such user",)
    assert [m.rcpt_tos for m in server.received] == [["alice@example.org"]]


async def test_a_server_that_is_down_gets_the_message_once_it_is_up(smtp, mail_core):
    down = await smtp()
    await asyncio.to_thread(down.stop)                         # its port now refuses connections
    core = await mail_core(down)
    entry = await core.email_sessions([1], ["txt"], TO)

    def tried_twice():
        e = core.outbox.get(entry.id)
        return e if e.attempts >= 2 and e.state == ev.OutboxState.QUEUED else None
    tried = await until(tried_twice, "two failed tries", in_thread=False)
    assert "refused" in tried.error.lower() or "connect call failed" in tried.error.lower(), tried.error
    up = await smtp(port=down.port)
    done = await finished(core, entry.id)
    assert done.state == ev.OutboxState.SENT, done.error
    assert len(up.received) == 1 and up.received[0].rcpt_tos == TO


async def test_a_server_that_never_answers_times_out_and_is_tried_again(smtp, mail_core):
    """A black hole: the port accepts connections (the kernel's backlog) but no greeting ever comes."""
    hole = socket.socket()
    try:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        port = hole.getsockname()[1]
        core = await mail_core(None, **{**(await smtp()).email_config(), "smtp_port": port, "timeout": 1.0})

        entry = await core.email_sessions([1], ["txt"], TO)

        def tried_twice():
            e = core.outbox.get(entry.id)
            return e if e.attempts >= 2 and e.state == ev.OutboxState.QUEUED else None
        started = time.monotonic()
        tried = await until(tried_twice, "two tries that timed out", timeout=30, in_thread=False)
        assert "timed out" in tried.error.lower(), tried.error
        assert time.monotonic() - started >= 1.0          # each try waited email.timeout, then gave up
    finally:
        hole.close()
    up = await smtp(port=port)
    done = await finished(core, entry.id)
    assert done.state == ev.OutboxState.SENT, done.error
    assert len(up.received) == 1 and up.received[0].rcpt_tos == TO


@pytest.mark.parametrize("recipients, says", [
    (["not an address"], "not an email address"),
    (["alice@example.org\r\nBcc: mallory@evil.example"], "line break"),
    (["alice@example.org, bob@example.org"], "one address"),
    (["alice@exa mple.org"], "not an email address"),
    ([], "no recipients"),
    ([f"u{i}@example.org" for i in range(51)], "too many recipients"),
    ("x" * 400 + "@example.org", "too long"),
])
async def test_invalid_addresses_are_refused_before_anything_is_stored(recipients, says, smtp, mail_core):
    server = await smtp()
    core = await mail_core(server)
    with pytest.raises(InvalidArgument, match=says):
        await core.email_sessions([1], ["txt"], recipients)
    assert core.outbox.list() == [] and server.handler.connections == 0


async def test_unknown_session_or_format_and_email_off(smtp, mail_core):
    server = await smtp()
    core = await mail_core(server)
    with pytest.raises(NotFoundError):
        await core.email_sessions([999], ["txt"], TO)
    with pytest.raises(NotFoundError, match="unknown format"):
        await core.email_sessions([1], ["pdff"], TO)
    off = await mail_core(None, enabled=False)
    with pytest.raises(InvalidArgument, match="email is off"):
        await off.email_sessions([1], ["txt"], TO)
    assert core.outbox.list() == [] and off.outbox.list() == []


async def test_a_title_with_cr_lf_cannot_add_a_header(tmp_path, smtp, mail_core):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF" + bytes(1000))
    title = "Board\r\nBcc: mallory@evil.example\r\nX-Injected: yes\nSubject: forged"
    lib = FakeLibrary([make_session(1, audio, title=title)])
    server = await smtp()
    core = await mail_core(server, library=lib)
    entry = await core.email_sessions([1], ["txt", "audio"], TO)
    done = await finished(core, entry.id)
    assert done.state == ev.OutboxState.SENT, done.error
    [mail] = server.received
    assert mail.rcpt_tos == TO
    msg = mail.message
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    # one Subject (folded by the stdlib: a reader unfolds and trims it), the would-be headers inside it as text
    assert [s.strip() for s in msg.get_all("Subject")] == [
        "Meeting: Board Bcc: mallory@evil.example X-Injected: yes Subject: forged"]
    headers = mail.data.split(b"\r\n\r\n", 1)[0]
    assert b"\nBcc" not in headers and b"\nX-Injected" not in headers
    assert set(mail.attachments()) == {"transcript.txt", "audio.wav"}


async def test_over_the_size_limit_the_recording_is_left_out_and_the_body_says_so(smtp, mail_core):
    server = await smtp()
    limit_mb = 0.1                                          # the demo recording (~80 kB) is ~107 kB as base64
    core = await mail_core(server, max_message_mb=limit_mb)
    entry = await core.email_sessions([1], ["txt", "json", "audio"], TO)
    done = await finished(core, entry.id)
    assert done.state == ev.OutboxState.SENT, done.error
    assert done.left_out == ("audio.flac",)
    [mail] = server.received
    assert len(mail.data) <= limit_mb * 1024 * 1024
    assert set(mail.attachments()) == {"transcript.txt", "session.json"}
    for body in (mail.text(), mail.html()):
        assert "Left out" in body and "audio.flac" in body and "0.1 MB" in body


async def test_far_over_the_limit_the_largest_documents_go_too(smtp, mail_core):
    server = await smtp()
    core = await mail_core(server, max_message_mb=0.06)
    entry = await core.email_sessions([1], ["txt", "html", "docx", "audio"], TO)
    done = await finished(core, entry.id)
    assert done.state == ev.OutboxState.SENT, done.error
    # the recording first, then the largest of the others (docx ~39 kB) until the rest fits
    assert done.left_out[0] == "audio.flac" and "report-detailed.docx" in done.left_out
    [mail] = server.received
    assert len(mail.data) <= 0.06 * 1024 * 1024 and "transcript.txt" in mail.attachments()


@pytest.mark.parametrize("server_security, keys, says", [
    ("none", {"security": "starttls"}, "does not offer STARTTLS"),
    ("starttls", {"ca_file": ""}, "is not trusted"),                   # the system's CAs do not know it
    ("starttls", {"username": "intruder"}, "535"),
])
async def test_configuration_problems_fail_at_once_with_the_reason(server_security, keys, says, smtp,
                                                                     mail_core):
    server = await smtp(server_security, auth=server_security != "none")
    core = await mail_core(server, **keys)
    entry = await core.email_sessions([1], ["txt"], TO)
    done = await finished(core, entry.id)
    assert done.state == ev.OutboxState.FAILED and done.attempts == 1
    assert says in done.error, done.error
    assert server.received == []


async def test_a_password_file_other_users_can_read_is_refused_and_the_message_waits_for_it(smtp, mail_core):
    """A careless admin's email.password_file, readable by every local user (644, as an editor or 'echo > file'
    under the default umask makes it: the touchscreen's user, the recorder's, can read the SMTP login). The SMB
    push refuses its own password file then ("readable by others (chmod 600 it)"); the mail sender logged in with
    it and sent. Now the message is not sent and waits, its error says why; once the file is made private it goes
    out: nothing lost."""
    server = await smtp()
    core = await mail_core(server)
    pw = core.cfg.email.password_file
    os.chmod(pw, 0o644)
    entry = await core.email_sessions([1], ["txt"], TO)

    def settled():
        e = core.outbox.get(entry.id)
        # (a try is counted when it is taken: 'sending', its second try has not said how it went yet, and a loaded
        # runner's poll saw it so in 1 of 4 runs)
        return e if e.state.finished or (e.attempts >= 2 and e.state != ev.OutboxState.SENDING) else None
    tried = await until(settled, "the message sent, failed or tried twice", in_thread=False)
    assert tried.state == ev.OutboxState.QUEUED and "readable by others (chmod 600 it)" in tried.error, \
        (tried.state, tried.error)
    assert pw in tried.error and server.handler.data_attempts == 0 and server.received == []
    os.chmod(pw, 0o600)
    done = await finished(core, entry.id)
    assert done.state == ev.OutboxState.SENT, done.error
    assert len(server.received) == 1 and server.received[0].rcpt_tos == TO
