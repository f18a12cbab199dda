"""Notifications: export and push jobs that finish or fail, a stick safe to remove and low disk space are mailed
by the [notify] rules, one by one or as a digest."""
from __future__ import annotations

import asyncio
import re
import dataclasses

import pytest

from steno_exportd import config
from steno_exportd import events as ev
from steno_exportd.smb.push import SmbKind
from tests.fakes import FakeLibrary, make_session
from tests.parts import until
from tests.usb.helpers import loop_attached, wait_state

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
    # a finished job's headline is a note, not an error
    assert f"Note: {warned.error}" in second.text() and "Error" not in second.text(), second.text()

    bad = await export(core, [1, 2], tmp_path / "b", broken=True)
    assert bad.state == ev.JobState.FAILED
    third = (await mails(server, 3, "the 'export failed' mail"))[2]
    assert third.message["Subject"] == f"[steno] Export to {tmp_path / 'b'} failed: 2 sessions"
    assert f"Error: {bad.error}" in third.text()
    assert [e.kind for e in core.outbox.list()] == ["notice", "notice", "notice"]
    # the server has the message before the sender hears its answer and records it sent: wait for that
    await until(lambda: all(e.state == ev.OutboxState.SENT for e in core.outbox.list()),
                "every message recorded as sent", in_thread=False)
    assert len(server.received) == 3                # and none sent twice


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


async def test_a_push_done_and_a_push_failed_are_mailed(office, smtp, mail_core):
    """A real smbd: a push that lands, then one the NAS refuses (a wrong password)."""
    _, remote, root, _ = office
    server = await smtp()
    core = await mail_core(server, recipients=[ADMIN], extra={
        "notify": {"events": ["push_done", "push_failed"]},
        "smb": {"recorder_folder": "rec-1", "remotes": [dataclasses.asdict(remote)]}})
    core.targets.register(SmbKind())                     # as the daemon does
    ok = await core.jobs.wait((await core.export_sessions([1], ["txt"], "smb:office")).id, 60)
    assert ok.state == ev.JobState.COMPLETED, ok.error
    assert list((root / "nas" / "rec-1").rglob("transcript.txt"))
    [done] = await mails(server, 1, "the 'push finished' mail")
    assert done.rcpt_tos == [ADMIN]
    assert done.message["Subject"] == "[steno] Push to smb:office finished: 1 session"

    with open(remote.password_file, "w") as f:
        f.write("wrong password\n")
    bad = await core.jobs.wait((await core.export_sessions([1], ["txt"], "smb:office")).id, 60)
    assert bad.state == ev.JobState.FAILED
    failed = (await mails(server, 2, "the 'push failed' mail"))[1]
    assert failed.message["Subject"] == "[steno] Push to smb:office failed: 1 session"
    assert f"Error: {bad.error}" in failed.text()


async def test_low_disk_space_is_mailed_once_per_crossing(tmp_path, smtp, mail_core):
    server = await smtp()
    low = {"events": ["disk_low"], "disk_low_mb": 10**9, "disk_check_seconds": 0.1}   # every disk is "low"
    core = await mail_core(server, recipients=[ADMIN], extra={"notify": low})
    [first] = await mails(server, 1, "the 'low disk space' mail")
    state = str(tmp_path / "state")
    assert first.message["Subject"].startswith("[steno] Low disk space: ")
    assert first.message["Subject"].endswith(f" free on {core.cfg.recorder_data_dir}") or \
        first.message["Subject"].endswith(f" free on {state}")
    assert "notify.disk_low_mb" in first.text()
    await asyncio.sleep(1.0)             # an absence: ten more checks, still low, told once
    assert len(server.received) == 1 and len(core.outbox.list()) == 1

    # the space "rises" above the threshold (a lower one), then falls below it again: told again
    await core.reload(config.replace(core.cfg, **{"notify.disk_low_mb": 1}))
    await asyncio.sleep(0.5)
    await core.reload(config.replace(core.cfg, **{"notify.disk_low_mb": 10**9}))
    second = (await mails(server, 2, "the second 'low disk space' mail"))[1]
    # the same disk; its free space is what it is at that moment (others write to this machine's disk meanwhile)
    free = lambda subject: re.sub(r"Low disk space: [\d.]+ [KMGT]?B free", "Low disk space: N free", subject)  # noqa: E731
    assert free(second.message["Subject"]) == free(first.message["Subject"]) != first.message["Subject"]


@pytest.mark.real
async def test_a_stick_safe_to_remove_is_mailed(sticks, tmp_path, smtp, mail_core):
    """Real udevd, udisksd and a loop-image stick: inserted, exported, ejected; the mail says it may be pulled."""
    from steno_exportd.usb import manager as usb
    stick = await asyncio.to_thread(sticks, "ext4")
    server = await smtp()
    core = await mail_core(server, recipients=[ADMIN], extra={
        "notify": {"events": ["stick_safe"]},
        "usb": {"enabled": True, "settle_seconds": 0.2, "allow_labels": [stick.label],
                "auto_export": {"formats": ["txt"], "include_audio": False}}})
    async with usb.running(core):
        await asyncio.to_thread(stick.insert)
        dev = await wait_state(core, stick.label, ev.DeviceState.SAFE_TO_REMOVE, ev.DeviceState.ERROR, timeout=60)
        assert dev.state == ev.DeviceState.SAFE_TO_REMOVE, dev.error
        [mail] = await mails(server, 1, "the 'safe to remove' mail")
        # the same stick again (same filesystem, same mount point): ejected again, told again
        await asyncio.to_thread(stick.insert)
        await until(lambda: not loop_attached(stick), "the second eject", 60)
        await wait_state(core, stick.label, ev.DeviceState.SAFE_TO_REMOVE, timeout=10)
        again = (await mails(server, 2, "the second 'safe to remove' mail"))[1]
    assert mail.rcpt_tos == [ADMIN]
    assert mail.message["Subject"] == again.message["Subject"] == f"[steno] {stick.label} can be removed"
    assert f"Label: {stick.label}" in mail.text()
    await asyncio.sleep(1.0)         # an absence: no third mail for the device events that follow
    assert [e.kind for e in core.outbox.list()] == ["notice", "notice"] and len(server.received) == 2
