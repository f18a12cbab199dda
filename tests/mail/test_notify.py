"""Notifications: export jobs that finish or fail are mailed by the [notify] rules, one by one or as a digest."""
from __future__ import annotations

import pytest

from steno_exportd import events as ev
from tests.fakes import FakeLibrary, make_session
from tests.parts import until

ADMIN = "admin@example.org"


@pytest.fixture
def two_sessions(tmp_path):
    """Session 1 with its recording; session 2 whose recording is gone (exported without it, with a warning)."""
    audio = tmp_path / "rec" / "s1.wav"
    audio.parent.mkdir()
    audio.write_bytes(b"RIFF" + bytes(5000))
    return FakeLibrary([make_session(1, audio, "Weekly sync"), make_session(2, tmp_path / "rec" / "gone.wav",
                                                                             "Budget review")])


async def export(core, ids, out, broken: bool = False):
    """broken: a file named like the export folder is in the way on the target, so the job fails."""
    out.mkdir(exist_ok=True)
    if broken:
        (out / "SilentSteno").write_bytes(b"not a folder")
    job = await core.export_sessions(ids, ["txt", "audio"], str(out))
    return await core.jobs.wait(job.id, 60)


async def mails(server, n, what):
    return await until(lambda: server.received if len(server.received) >= n else None, what, in_thread=False)


async def test_a_finished_and_a_failed_export_are_mailed(tmp_path, smtp, mail_core, two_sessions):
    server = await smtp()
    core = await mail_core(server, library=two_sessions, recipients=[ADMIN])     # default rule: [notify] events
    ok = await export(core, [1], tmp_path / "a")
    assert ok.state == ev.JobState.COMPLETED, ok.error
    first = (await mails(server, 1, "the 'export finished' mail"))[0]
    assert first.rcpt_tos == [ADMIN]
    assert first.message["Subject"] == f"[steno] Export to {tmp_path / 'a'} finished: 1 session"
    assert first.message["Auto-Submitted"] == "auto-generated"
    assert "Weekly sync: ok" in first.text()

    warned = await export(core, [1, 2], tmp_path / "w")
    assert warned.state == ev.JobState.COMPLETED, warned.error
    second = (await mails(server, 2, "the 'export finished' mail with a warning"))[1]
    assert second.message["Subject"] == f"[steno] Export to {tmp_path / 'w'} finished: 2 sessions"
    assert "Budget review: ok with warnings" in second.text() and "gone.wav" in second.text()

    bad = await export(core, [1, 2], tmp_path / "b", broken=True)
    assert bad.state == ev.JobState.FAILED
    third = (await mails(server, 3, "the 'export failed' mail"))[2]
    assert third.message["Subject"] == f"[steno] Export to {tmp_path / 'b'} failed: 2 sessions"
    assert f"Error: {bad.error}" in third.text()
    assert [e.kind for e in core.outbox.list()] == ["notice", "notice", "notice"]
    assert all(e.state == ev.OutboxState.SENT for e in core.outbox.list())


async def test_rules_route_events_and_a_digest_collects_them(tmp_path, smtp, mail_core, two_sessions):
    server = await smtp()
    rules = [{"events": ["export_failed"], "recipients": ["oncall@example.org"]},
             {"events": ["export_done", "export_failed"], "recipients": [ADMIN], "digest_minutes": 0.05}]
    core = await mail_core(server, library=two_sessions, extra={"notify": {"rules": rules}})
    for i, ids in enumerate(([1], [1, 2], [1])):
        await export(core, ids, tmp_path / f"o{i}", broken=i == 1)
    received = await mails(server, 2, "the on-call mail and the digest")
    oncall = [m for m in received if m.rcpt_tos == ["oncall@example.org"]]
    digest = [m for m in received if m.rcpt_tos == [ADMIN]]
    assert len(oncall) == 1 and "failed" in oncall[0].message["Subject"]
    assert len(digest) == 1, [m.message["Subject"] for m in received]
    assert digest[0].message["Subject"] == "[steno] 3 events: export done x2, export failed x1"
    text = digest[0].text()
    assert text.count("Export to") == 3


async def test_nothing_is_mailed_for_events_no_rule_names(tmp_path, smtp, mail_core, two_sessions):
    server = await smtp()
    core = await mail_core(server, library=two_sessions, recipients=[ADMIN],
                           extra={"notify": {"events": ["export_failed"]}})
    await export(core, [1], tmp_path / "a")
    await export(core, [1, 2], tmp_path / "w")        # a warning is no failure
    await export(core, [1, 2], tmp_path / "b", broken=True)
    [mail] = await mails(server, 1, "the failure mail")
    assert "failed" in mail.message["Subject"]
    assert len(core.outbox.list()) == 1
