"""Sessions by email through a real SMTP server: TLS, AUTH, attachments equal to an export's files."""
from __future__ import annotations

import asyncio
import hashlib

import pytest

from steno_exportd import events as ev
from tests.mail.conftest import finished
from tests.parts.smtp import USER

# aiosmtpd warns when AUTH is allowed without STARTTLS: with implicit TLS the whole session is TLS
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_a_session_arrives_with_the_exports_files(security, tmp_path, smtp, mail_core):
    server = await smtp(security)
    core = await mail_core(server)
    formats = ["txt", "html", "json", "docx", "audio"]
    out = tmp_path / "export"
    out.mkdir()
    job = await core.export_sessions([1], formats, str(out))
    assert (await core.jobs.wait(job.id, 60)).state == ev.JobState.COMPLETED
    exported = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in (out / "SilentSteno").glob("*/*") if p.is_file()}

    entry = await core.email_sessions([1], formats, ["Alice Example <alice@example.org>"])
    assert entry.state == ev.OutboxState.COMPOSING and entry.subject.startswith("Meeting: ")
    done = await finished(core, entry.id)
    assert done.state == ev.OutboxState.SENT, done.error
    assert done.attempts == 1 and done.delivered == ("Alice Example <alice@example.org>",)

    [mail] = server.received
    assert mail.tls and mail.login == USER
    assert mail.mail_from == "steno@recorder.example" and mail.rcpt_tos == ["alice@example.org"]
    hashes = mail.attachment_hashes()
    assert set(hashes) == set(exported) and len(hashes) == len(formats)
    assert hashes == exported
    session = await asyncio.to_thread(core.library.get_session, 1)
    msg = mail.message
    assert msg["To"] == "Alice Example <alice@example.org>"
    assert msg["Subject"] == f"Meeting: {session.title}"
    text, html = mail.text(), mail.html()
    for part in (text, html):
        assert session.title.replace("&", "&amp;") in part or session.title in part
        assert session.action_items[0].text.split()[0] in part
        assert session.participants[0].name in part
    assert session.summary_text.split(".")[0] in text
    assert done.size == len(mail.data) or abs(done.size - len(mail.data)) <= 2
