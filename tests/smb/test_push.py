"""Push to a real smbd through the engine (smb:<remote>): lands, verifies, incremental, resumable, faults,
several recorders, a folder an earlier version pushed."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import pytest

from steno_exportd import config
from steno_exportd.config import Config, SmbConfig, SmbRemote
from steno_exportd.engine.registry import Checked, local
from steno_exportd.engine.targets import MARKER, MAX_ENTRIES, TEMP_PREFIX
from steno_exportd.errors import NotFoundError, TargetError
from steno_exportd.smb import push as smbpush
from steno_exportd.smb import target as smbtarget
from steno_exportd.engine import identity
from steno_exportd.engine.identity import recorder_folder, recorder_id
from steno_exportd.engine.index import INDEX_DIR
from steno_exportd.smb.client import SmbError
from steno_exportd.smb.target import SmbTarget
from tests import parts
from tests.parts import nest_folders
from tests.parts.daemon import REPO
from tests.parts.smbd import PW, start_office_nas
from tests.parts.smbdata import make_export_tree
from tests.smb.recorder import (FORMATS, Progress, assert_landed, assert_stopped_by_folder_in_the_way, make_recorder,
                                on_nas, push, recorder_config, stamps)


@pytest.fixture
def rec(office, smb_tmp):
    """The office NAS and a recorder with three sessions (3 MiB recordings)."""
    smbd, remote, root, _ = office
    db = make_recorder(smb_tmp / "rec")
    yield smbd, remote, root, db
    db.close()


def cfg_for(root, db, remote, folder, **remote_changes):
    return recorder_config(db.path, root / f"state-{folder}", dataclasses.replace(remote, **remote_changes), folder)


def sessions_on_nas(folder: pathlib.Path) -> dict[str, str]:
    """uuid -> session folder, from the NAS's manifest.json (not one recorded but still "finishing": its folder
    may not be renamed into place yet)."""
    try:
        return {u: s["folder"] for u, s in json.loads((folder / "manifest.json").read_text())["sessions"].items()
                if not s.get("finishing")}
    except (OSError, ValueError, KeyError):
        return {}


def resumed_bytes(caplog) -> int:
    said = [r.getMessage() for r in caplog.records if "resuming at" in r.getMessage()]
    return sum(int(re.search(r"resuming at (\d+) of", m).group(1)) for m in said)


@pytest.mark.parametrize("verify", [True, False])
def test_small_writes_reuse_buffers_without_mixing_files(rec, monkeypatch, verify):
    """64 KiB writes: every recording spans many times the engine's reused read buffers; what lands is
    exact (checked on the server's disk, not by our own read-back), with and without read-back."""
    from steno_exportd.engine.options import ExportOptions
    smbd, remote, root, db = rec
    monkeypatch.setattr(smbtarget, "CHUNK", 65536)
    t = SmbTarget(remote)
    try:
        assert t.connect() is None and t.max_write == 65536
    finally:
        t.close()
    res = push(cfg_for(root, db, remote, "rec-small"), options=ExportOptions(verify=verify))
    assert all(r.ok and not r.skipped for r in res), res
    assert min(p.stat().st_size for p in (db.root / "audio").iterdir()) > 40 * 65536
    assert_landed(root / "nas" / "rec-small", db)


@pytest.mark.parametrize("name", ["MANIFEST.JSON", "Sha256Sums"])
def test_a_folder_spelled_like_the_pushs_manifest_in_other_letters_stops_it_before_it_sends_anything(rec, name):
    """A person makes a folder named MANIFEST.JSON (or Sha256Sums) in the recorder's folder on the NAS, in place of
    the push's own file. An SMB share is case-insensitive: that folder is where manifest.json goes, so the push sent
    every new session, then failed to save ("refusing to replace a dir"), at every push, each session left as an
    unfinished .partial folder (and sessions already there reported failed). As for a folder of the exact name
    (tests/rclone/test_store_attacks.py), the push now stops before sending anything, naming the folder, which stays
    as it is; moved away, the next push lands every session."""
    smbd, remote, root, db = rec
    cfg = cfg_for(root, db, remote, "rec-case")
    folder = root / "nas" / "rec-case"
    assert all(r.ok for r in push(cfg))
    (folder / ("manifest.json" if name.casefold() == "manifest.json" else "SHA256SUMS")).unlink()
    (folder / name).mkdir()
    (folder / name / "theirs.txt").write_text("a person's own file\n")
    assert_stopped_by_folder_in_the_way(folder, name, db, lambda: push(cfg, sleep=lambda s: None))
    shutil.rmtree(folder / name)
    res = push(cfg)
    assert [r.ok for r in res] == [True] * 4, [r.error for r in res]
    assert_landed(folder, db)


def test_on_an_smbprotocol_ours_were_not_written_for_a_push_takes_its_own_paths_and_lands(rec, monkeypatch):
    """smbwire's receive loop, signature check and WRITEs lean on smbprotocol's insides; where install() finds an
    smbprotocol they were not written for, none of them is used (before: only the receive loop was left out, and the
    signature check and WRITEs were still ours), and the push lands on smbprotocol's own paths."""
    from steno_exportd.smb import wire

    def ours(*args, **kwargs):
        raise AssertionError("smbwire used on an smbprotocol it was not written for")
    monkeypatch.setattr(wire, "install", lambda: False)
    monkeypatch.setattr(wire, "tune", ours)
    monkeypatch.setattr(wire, "send_write", ours)
    smbd, remote, root, db = rec
    res = push(cfg_for(root, db, remote, "rec-theirs"))
    assert [(r.ok, r.error) for r in res] == [(True, "")] * 3, res
    assert_landed(root / "nas" / "rec-theirs", db)


def test_push_lands_verifies_and_is_incremental(rec):
    smbd, remote, root, db = rec
    cfg = cfg_for(root, db, remote, "rec-a")
    folder = root / "nas" / "rec-a"
    res = push(cfg)
    assert [r.ok and not r.skipped for r in res] == [True] * 3, res
    assert_landed(folder, db)
    manifest = json.loads((folder / "manifest.json").read_text())
    sums = (folder / "SHA256SUMS").read_text()
    assert all(f"{f['sha256']}  {s['folder']}/{name}" in sums
               for s in manifest["sessions"].values() for name, f in s["files"].items())
    assert json.loads((folder / smbpush.CLAIM_NAME).read_text())["recorder_id"] == recorder_id(cfg.state.dir)
    before = stamps(folder)
    index = root / "nas" / "_index" / "rec-a.json"
    listed = index.read_bytes()
    kept = (index.stat().st_ino, index.stat().st_mtime_ns)

    again = push(cfg)
    assert [r.skipped for r in again] == [True] * 3 and stamps(folder) == before     # nothing sent
    # nor the office index written again: it lists what it would (a new version of it at every push, before)
    assert index.read_bytes() == listed and (index.stat().st_ino, index.stat().st_mtime_ns) == kept

    gone = next(p for p in folder.rglob("audio.flac"))
    gone.unlink()
    third = push(cfg)
    assert sorted((r.skipped, r.ok) for r in third) == [(False, True), (True, True), (True, True)]
    assert_landed(folder, db)
    others = {rel: ns for rel, ns in before.items() if not rel.startswith(gone.parent.name + "/")}
    assert {rel: ns for rel, ns in stamps(folder).items() if rel in others} == others   # other sessions untouched
    t = SmbTarget(remote)
    try:
        t.connect()
        assert t.free_space() > 0
    finally:
        t.close()


def test_a_verify_job_after_a_push_without_verify_spares_the_next_verifying_push_the_files_it_found_good(rec):
    """A push with verify off marks its files "unverified" in the NAS's manifest (a push that verifies sends them
    again rather than trusting them). The admin then ran a verify job on the NAS: every file read back over SMB and
    found good, yet the next verifying push sent every file again whole, each recording over the office link. Now
    the verify records what it read back good (the manifest saved as a push saves it): the next verifying push
    sends nothing, every file on the NAS as it was."""
    from steno_exportd.engine.options import ExportOptions
    from steno_exportd.engine.verify import verify_target
    smbd, remote, root, db = rec
    cfg = cfg_for(root, db, remote, "rec-v")
    folder = root / "nas" / "rec-v"
    res = push(cfg, options=ExportOptions(verify=False))
    assert [(r.ok, r.skipped) for r in res] == [(True, False)] * 3, res
    assert_landed(folder, db)
    assert all(f.get("unverified") for s in json.loads((folder / "manifest.json").read_text())["sessions"].values()
               for f in s["files"].values())
    t = SmbTarget(remote)
    try:
        t.connect()
        rep = verify_target(t, "rec-v", mark=True)
    finally:
        t.close()
    assert rep.ok and rep.ok_count == 9, rep.to_json()
    assert_landed(folder, db)                           # (SHA256SUMS and manifest.json as a push leaves them)
    before = stamps(folder)
    progress = Progress()
    again = push(cfg, options=ExportOptions(verify=True), progress=progress)
    assert [(r.ok, r.skipped) for r in again] == [(True, True)] * 3, [(r.ok, r.skipped, r.error) for r in again]
    assert progress.fields["bytes_total"] == 0 and progress.fields.get("bytes_done", 0) == 0, progress.fields
    assert stamps(folder) == before                     # nothing sent again
    assert not rep.notes, rep.notes                     # (nothing the verify could not record)


def test_a_meeting_deleted_on_the_recorder_and_removed_from_the_nas_leaves_the_office_index(rec):
    """A session deleted on the recorder (retention, a person) whose folder a person also removed from the NAS stayed
    listed in the recorder's office index for ever: the index was built from the manifest, which still records it,
    and no push sends that session again. Now a meeting is listed only while its folder is on the NAS: the push
    after the removal writes the index without it (nothing else sent), the next leaves the index as it is."""
    from tests.recorder_db import delete_session
    smbd, remote, root, db = rec
    cfg = cfg_for(root, db, remote, "rec-del")
    folder = root / "nas" / "rec-del"
    assert [r.ok and not r.skipped for r in push(cfg)] == [True] * 3
    index = root / "nas" / "_index" / "rec-del.json"
    sessions = sessions_on_nas(folder)
    gone = sorted(sessions)[1]
    delete_session(db.path, gone)
    shutil.rmtree(folder / sessions[gone])
    res = push(cfg)
    assert [(r.ok, r.skipped) for r in res] == [(True, True)] * 2, res
    listed = json.loads(index.read_text())["meetings"]
    assert sorted(m["uuid"] for m in listed) == sorted(u for u in sessions if u != gone), listed
    assert all((root / "nas" / m["folder"]).is_dir() for m in listed)
    kept = (index.stat().st_ino, index.stat().st_mtime_ns)
    assert [(r.ok, r.skipped) for r in push(cfg)] == [(True, True)] * 2
    assert (index.stat().st_ino, index.stat().st_mtime_ns) == kept


@pytest.mark.parametrize("host", ["desk/42", "desk\\42"])
def test_a_host_name_no_file_name_can_hold_pushes_and_leaves_no_temp_file_on_the_nas(rec, monkeypatch, host):
    """The push's temp names on the NAS hold the host name, which the kernel takes of any bytes (sethostname(2)):
    one with a slash or a backslash named a folder that is not there ("path not found", the push failed). Now the
    host's part of a temp name is a safe name: the push lands and leaves no temp file. (A name of bytes not UTF-8
    cannot log on: the NTLM library sends the host name itself, as UTF-16.)"""
    smbd, remote, root, db = rec
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    cfg = cfg_for(root, db, remote, "rec-h")
    res = push(cfg)
    assert [(r.ok, r.error) for r in res] == [(True, "")] * 3, res
    folder = root / "nas" / "rec-h"
    assert_landed(folder, db)
    stray = [p.relative_to(root / "nas").as_posix() for p in (root / "nas").rglob("*") if TEMP_PREFIX in p.name]
    assert stray == [], stray
    assert json.loads((folder / "manifest.json").read_text())["host"] == host


def test_a_recording_missing_on_the_recorder_is_a_warning_not_a_failed_push(rec):
    """Issue 15: a session whose recording is gone from the recorder lands without it, 'ok with warnings';
    the push is not failed (so it is not pushed again forever), and the next push sends nothing."""
    smbd, remote, root, db = rec
    cfg = cfg_for(root, db, remote, "rec-gone")
    folder = root / "nas" / "rec-gone"
    (db.root / "audio" / "meeting-2.flac").unlink()
    res = push(cfg, ids=[1, 2, 3])
    assert [str(r.status) for r in res] == ["ok", "ok with warnings", "ok"], res
    warned = res[1]
    assert not warned.error and "recording missing on the recorder" in warned.warnings[0], warned
    # on the NAS's disk: SHA256SUMS checks out; two recordings, byte-exact; three transcripts
    r = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    got = on_nas(folder)
    recordings = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (db.root / "audio").iterdir()}
    assert sorted(h for rel, h in got.items() if rel.endswith(".flac")) == sorted(recordings), sorted(got)
    assert len([rel for rel in got if rel.endswith("/transcript.txt")]) == 3, sorted(got)
    assert not [rel for rel in got if TEMP_PREFIX in rel or ".partial/" in rel], sorted(got)
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["sessions"][warned.uuid]
    assert sorted(pathlib.Path(n).suffix for n in entry["files"]) == [".html", ".txt"], entry
    assert all((folder / entry["folder"] / n).is_file() for n in entry["files"])
    before = stamps(folder)
    again = push(cfg, ids=[1, 2, 3])
    assert [r.skipped for r in again] == [True] * 3 and stamps(folder) == before, again


def test_the_kind_checks_remotes_and_names_the_recorder_folder(office):
    smbd, remote, root, _ = office
    cfg = Config(smb=SmbConfig(recorder_folder="rec-x", remotes=[remote]))
    kind = smbpush.SmbKind()
    targets = local()
    targets.register(kind)
    assert targets.kind_for("smb:office") is kind
    assert targets.check("smb:office", cfg) == Checked("push", "smb:office", tuple(remote.formats))
    assert kind.root("smb:office", cfg) == "rec-x"
    with pytest.raises(NotFoundError, match=r"no SMB remote 'nope' \(known: office\)"):
        targets.check("smb:nope", cfg)
    with pytest.raises(NotFoundError) as e:                # a caller's 4,000-character name is not echoed whole
        targets.check("smb:" + "x" * 4000, cfg)
    assert len(str(e.value)) < 120 and "(known: office)" in str(e.value), str(e.value)[:200]
    without = local()                                      # a process that did not register smb: (the CLI)
    with pytest.raises(Exception, match="smb: targets are not supported here"):
        without.check("smb:office", cfg)


def test_wrong_password_fails_once_with_logon_failed(rec):
    smbd, remote, root, db = rec
    with open(remote.password_file, "w") as f:
        f.write("wrong\n")
    sleeps = []
    with pytest.raises(SmbError, match="^smb:office: logon failed") as ei:
        push(cfg_for(root, db, remote, "rec-a"), sleep=sleeps.append)
    assert ei.value.permanent and sleeps == []           # no retry storm
    assert not (root / "nas" / "rec-a").exists()


@pytest.mark.parametrize("change,message", [
    (dict(share="nosuch"), "not found"),
    (dict(path="missing/folder"), "path not found"),
    (dict(share="ro", username="", password_file=""), "access denied"),
])
def test_share_path_and_permission_errors(rec, change, message):
    smbd, remote, root, db = rec
    sleeps = []
    with pytest.raises(SmbError, match=message) as ei:
        push(cfg_for(root, db, remote, "rec-a", **change), sleep=sleeps.append)
    assert ei.value.permanent and sleeps == []


def test_world_readable_password_file_refused(office):
    smbd, remote, root, sums = office
    os.chmod(remote.password_file, 0o644)
    with pytest.raises(SmbError, match="readable by others"):
        SmbTarget(remote).connect()


def test_server_that_accepts_but_never_answers_fails_within_twice_the_timeout(rec):
    """TCP accepted, no SMB reply: the whole job (retries included) ends within ~2x timeout and
    says the server is not answering (not 'SMB2 needed')."""
    smbd, remote, root, db = rec
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(SmbError) as ei:
            push(cfg_for(root, db, remote, "rec-a", port=port, timeout=2))      # real backoff sleeps, if any
        elapsed = time.monotonic() - t0
    msg = str(ei.value)
    assert elapsed <= 2 * 2 + 0.5, elapsed
    assert "not answering" in msg and "timed out after 2s" in msg and "SMB2" not in msg and "SMB1" not in msg
    assert msg.startswith(f"smb:office: 127.0.0.1:{port} ")


def test_closed_port_is_unreachable_and_retried(rec):
    smbd, remote, root, db = rec
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    sleeps = []
    with pytest.raises(SmbError, match="unreachable.*[Rr]efused") as ei:
        push(cfg_for(root, db, remote, "rec-a", port=closed_port), sleep=sleeps.append)
    assert not ei.value.permanent and sleeps == [2.0, 4.0]


def test_unknown_server_name_fails_at_once_saying_dns(rec):
    smbd, remote, root, db = rec
    sleeps = []
    with pytest.raises(SmbError) as ei:
        push(cfg_for(root, db, remote, "rec-a", server="steno-nas-nowhere.invalid"), sleep=sleeps.append)
    assert str(ei.value) == "smb:office: server name 'steno-nas-nowhere.invalid' not found (DNS)"
    assert ei.value.permanent and sleeps == []


@pytest.mark.parametrize("kind", ["directory", "not-utf8"])
def test_unreadable_password_file_is_a_clear_permanent_error(rec, kind):
    smbd, remote, root, db = rec
    bad = root / f"pw-{kind}"
    if kind == "directory":
        bad.mkdir(mode=0o700)
        expected = f"password file {bad} is not a regular file"
    else:
        bad.write_bytes(b"\xff\xfe\xfa\n")
        os.chmod(bad, 0o600)
        expected = f"password file {bad} cannot be read: not UTF-8 text"
    sleeps = []
    with pytest.raises(SmbError) as ei:
        push(cfg_for(root, db, remote, "rec-a", password_file=str(bad)), sleep=sleeps.append)
    assert str(ei.value) == f"smb:office: {expected}" and ei.value.permanent and sleeps == []


def test_smb1_only_server_says_smb2_needed(smb_tmp, smbd_factory):
    (smb_tmp / "old").mkdir()
    smbd = smbd_factory(extra_global="server min protocol = NT1\nserver max protocol = NT1",
                        shares=f"[old]\n   path = {smb_tmp / 'old'}\n   guest ok = yes\n")
    smbd.start()
    r = SmbRemote(name="old", server="127.0.0.1", port=smbd.port, share="old", timeout=5)
    with pytest.raises(SmbError, match="SMB2") as ei:
        SmbTarget(r).connect()
    assert ei.value.permanent


def _push_in_thread(cfg, **kw) -> tuple[threading.Thread, list]:
    """A push running in a thread (as a job does); its outcome (results or exception) is appended."""
    out: list = []

    def run():
        try:
            out.append(push(cfg, **kw))
        except Exception as e:  # noqa: BLE001 - the outcome is the test's subject
            out.append(e)
    th = threading.Thread(target=run, daemon=True)     # (a push that hangs fails its test, not the run's end)
    th.start()
    return th, out


def test_server_killed_mid_push_then_rerun_completes(rec):
    smbd, remote, root, db = rec
    folder = root / "nas" / "rec-k"
    cfg = cfg_for(root, db, remote, "rec-k", bandwidth_limit_kbps=2048)      # ~5 s in all
    sleeps = []
    th, out = _push_in_thread(cfg, sleep=sleeps.append)
    try:
        parts.wait_for(lambda: sessions_on_nas(folder), timeout=20, what="a first session landed on the NAS")
        smbd.kill()
    finally:
        th.join(60)
    assert not th.is_alive()
    assert isinstance(out[0], SmbError) and not out[0].permanent, out
    assert sleeps == [2.0, 4.0]                           # retried, the server stayed away
    landed = sessions_on_nas(folder)
    before = {rel: ns for rel, ns in stamps(folder).items() if rel.split("/")[0] in landed.values()}
    assert len(landed) < 3 and before

    smbd.start()
    res = push(cfg)
    assert {r.uuid for r in res if r.skipped} == set(landed)           # what landed is not sent again
    assert all(r.ok for r in res)
    assert {rel: ns for rel, ns in stamps(folder).items() if rel in before} == before
    assert_landed(folder, db)


@pytest.fixture
def resumable(office, smb_tmp, monkeypatch):
    """Resume thresholds scaled down (64 MiB in the product) to an 8 MiB recording pushed at 2 MiB/s."""
    monkeypatch.setattr(smbtarget, "RESUME_MIN", 1024 * 1024)
    monkeypatch.setattr(smbtarget, "RESUME_BACKOFF", 1024 * 1024)
    monkeypatch.setattr(smbtarget, "RESUME_ALIGN", 64 * 1024)
    smbd, remote, root, _ = office
    db = make_recorder(smb_tmp / "big-rec", sizes=(8 * 1024 * 1024,), seed=3)
    yield smbd, remote, root, db
    db.close()


def _cut_mid_file(smbd, cfg, nas: pathlib.Path, at: int) -> pathlib.Path:
    """Push slowly and kill smbd once the recording's temp file holds ``at`` bytes: its path."""
    th, out = _push_in_thread(cfg, sleep=lambda s: None)

    def temp():
        for p in nas.rglob(f"{TEMP_PREFIX}*audio.flac"):
            try:
                if p.stat().st_size >= at:
                    return p
            except FileNotFoundError:       # renamed meanwhile
                pass
        return None
    try:
        cut = parts.wait_for(temp, timeout=30, what=f"{at} bytes of the recording on the NAS")
        smbd.kill()
    finally:
        th.join(60)
    assert not th.is_alive() and out and isinstance(out[0], SmbError), out
    assert not out[0].permanent
    assert not list(nas.rglob("audio.flac")), "the cut recording sits under its final name"
    return cut


def _slow(root, db, remote, folder):
    return cfg_for(root, db, remote, folder, bandwidth_limit_kbps=2048)


def test_a_recording_cut_by_a_drop_resumes_where_it_stopped(resumable, caplog):
    smbd, remote, root, db = resumable
    nas = root / "nas" / "rec-resume"
    cfg = _slow(root, db, remote, "rec-resume")
    cut = _cut_mid_file(smbd, cfg, nas, at=5 * 1024 * 1024)
    have = cut.stat().st_size
    smbd.start()
    progress = Progress()
    with caplog.at_level(logging.INFO, logger="steno_exportd"):
        res = push(cfg, progress=progress)
    assert all(r.ok and not r.skipped for r in res), res
    size = 8 * 1024 * 1024
    resumed = resumed_bytes(caplog)
    assert resumed == (have - 1024 * 1024) // 65536 * 65536 >= 4 * 1024 * 1024
    assert progress.fields["bytes_done"] == progress.fields["bytes_total"]
    sent = progress.fields["bytes_done"] - resumed
    assert size - resumed <= sent <= size - resumed + 64 * 1024        # the rest of it, plus the small files
    assert_landed(nas, db)                                # byte-exact, read back over SMB and on disk
    assert not [p for p in nas.rglob(TEMP_PREFIX + "*")], "a temp file was left"
    assert "partial" not in json.loads((nas / "manifest.json").read_text())


def test_a_cut_recording_changed_since_is_sent_again_whole(resumable, caplog):
    smbd, remote, root, db = resumable
    nas = root / "nas" / "rec-changed"
    cfg = _slow(root, db, remote, "rec-changed")
    _cut_mid_file(smbd, cfg, nas, at=3 * 1024 * 1024)
    audio = next((db.root / "audio").iterdir())
    data = bytearray(audio.read_bytes())
    data[:4] = b"NEW!"                                     # re-recorded meanwhile: same size, new bytes
    audio.write_bytes(bytes(data))
    smbd.start()
    progress = Progress()
    with caplog.at_level(logging.INFO, logger="steno_exportd"):
        res = push(cfg, progress=progress)
    assert all(r.ok for r in res), res
    assert resumed_bytes(caplog) == 0 and progress.fields["bytes_done"] >= len(data)
    assert_landed(nas, db)
    assert hashlib.sha256(data).hexdigest() in on_nas(nas).values()
    assert not [p for p in nas.rglob(TEMP_PREFIX + "*")], "the old temp file was left"


def test_a_damaged_cut_recording_is_caught_by_read_back_and_sent_again_whole(resumable, caplog):
    """The part kept from before the drop is not trusted: the read-back of the whole file catches a
    damaged one before its folder gets its final name, and it is sent again whole."""
    smbd, remote, root, db = resumable
    nas = root / "nas" / "rec-damaged"
    cfg = _slow(root, db, remote, "rec-damaged")
    cut = _cut_mid_file(smbd, cfg, nas, at=4 * 1024 * 1024)
    with open(cut, "r+b") as f:
        f.write(b"\0" * 4096)                              # the NAS lost a block of the kept part
    smbd.start()
    progress = Progress()
    with caplog.at_level(logging.INFO, logger="steno_exportd"):
        res = push(cfg, progress=progress)
    assert all(r.ok for r in res), res
    size = 8 * 1024 * 1024
    resumed = resumed_bytes(caplog)
    assert resumed >= 2 * 1024 * 1024
    assert [r for r in caplog.records if "verify failed" in r.getMessage() and "audio.flac" in r.getMessage()]
    assert progress.fields["bytes_done"] - resumed >= 2 * size - resumed      # the rest, then all of it again
    assert_landed(nas, db)


def test_stale_temp_files_from_a_drop_are_removed_on_the_next_push(rec):
    smbd, remote, root, db = rec
    cfg = cfg_for(root, db, remote, "rec-t")
    push(cfg)
    folder = root / "nas" / "rec-t"
    session = sorted(p for p in folder.iterdir() if p.is_dir())[0]
    mine = f"{TEMP_PREFIX}{socket.gethostname()}-999-dead00-"
    stale = [folder / f"{mine}manifest.json", session / f"{mine}audio.flac"]
    other = folder / f"{TEMP_PREFIX}another-host-1-beef00-SHA256SUMS"
    for p in (*stale, other):
        p.write_bytes(b"cut short")
    (session / "transcript.txt").unlink()                 # something to send in that folder
    push(cfg)
    assert not [p for p in stale if p.exists()], "our temp files left by a drop are still there"
    assert other.exists(), "another host's temp file is not ours to remove"
    other.unlink()
    assert_landed(folder, db)


def test_an_unfinished_folder_whose_removal_is_cut_part_way_is_still_ours_on_the_next_push(rec, caplog):
    """A try cut mid-write leaves its '<folder>.partial' (our marker, a file it finished, the temp file of the one it
    was writing) and the NAS still holds
    that file open for the connection it has yet to see drop. The next push's clean-up removed the folder's entries
    in the order the NAS listed them: the marker went, the held file refused, and every push after took the folder,
    now without our marker, for a person's own and left it on the NAS for good. The marker goes last: a removal cut
    part-way leaves a folder still ours, removed once the NAS lets go of the file."""
    import smbclient
    from tests.parts.smbdata import connected
    smbd, remote, root, db = rec
    cfg = cfg_for(root, db, remote, "rec-held")
    push(cfg)
    folder = root / "nas" / "rec-held"
    cut = folder / "Cut meeting.partial"
    cut.mkdir()
    (cut / MARKER).write_text("incomplete\n")
    # a temp file the NAS lists after the marker (listing order is the folder's own, a hash on ext4): the one held
    mine = f"{TEMP_PREFIX}{socket.gethostname()}-999-"
    for n in range(1000):
        (cut / f"{mine}a{n:05x}-audio.flac").write_bytes(b"cut short")
        listed = os.listdir(cut)
        if listed[-1] != MARKER:
            break
    held = listed[listed.index(MARKER) + 1]
    for n in listed:
        if n not in (MARKER, held):
            (cut / n).unlink()
    assert os.listdir(cut) == [MARKER, held]
    (cut / "transcript.txt").write_text("a file the cut try had finished\n")
    with connected(smbd.port, remote.username, PW) as kw:
        with smbclient.open_file(f"\\\\127.0.0.1\\push\\rec-held\\Cut meeting.partial\\{held}", mode="rb",
                                 share_access=None, **kw):      # the NAS still holds it: no sharing at all
            with caplog.at_level(logging.INFO, logger="steno_exportd"):
                res = push(cfg)
    assert all(r.ok for r in res), res
    assert MARKER in os.listdir(cut), "a removal cut part-way took the folder's marker"
    assert len(_left_alone(caplog, "Cut meeting.partial")) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="steno_exportd"):
        res = push(cfg)                                     # released: the next push removes it
    assert all(r.ok for r in res), res
    assert not cut.exists(), os.listdir(cut)
    assert not _left_alone(caplog, "Cut meeting.partial")
    assert_landed(folder, db)


def test_a_file_whose_name_only_starts_like_our_temp_names_is_not_taken_for_ours(rec, monkeypatch):
    """A push removes the temp files its own host's pushes left after a drop. They were told by their name's start,
    '.steno-tmp-<host>-': recorder pi-1 took pi-1-2's temp file ('.steno-tmp-pi-1-2-4011-beef00-SHA256SUMS': one
    folder both were given, an admin's copied config; that recorder may be sending it right now) and a person's
    '.steno-tmp-pi-1-notes.txt' for its own, and removed them. Now only a name of our temp names' shape (host, pid,
    tag, the final name) is ours: theirs stay, our stale one is removed."""
    smbd, remote, root, db = rec
    monkeypatch.setattr(socket, "gethostname", lambda: "pi-1")
    cfg = cfg_for(root, db, remote, "rec-s")
    push(cfg)
    folder = root / "nas" / "rec-s"
    ours = folder / f"{TEMP_PREFIX}pi-1-999-dead00-manifest.json"
    theirs = [folder / f"{TEMP_PREFIX}pi-1-2-4011-beef00-SHA256SUMS", folder / f"{TEMP_PREFIX}pi-1-notes.txt",
              # pi-1-2's, its pid of six digits, the random tag all digits: not pi-1's pid 2 and tag 123456
              folder / f"{TEMP_PREFIX}pi-1-2-123456-012345-SHA256SUMS"]
    for p in (ours, *theirs):
        p.write_bytes(b"someone's bytes")
    session = sorted(p for p in folder.iterdir() if p.is_dir())[0]
    (session / "transcript.txt").unlink()                 # something to send in that tree
    push(cfg)
    assert not ours.exists(), "our temp file left by a drop is still there"
    gone = [p.name for p in theirs if not p.exists()]
    assert gone == [], f"taken for ours and removed: {gone}"
    assert [p.read_bytes() for p in theirs] == [b"someone's bytes"] * len(theirs)
    for p in theirs:
        p.unlink()
    assert_landed(folder, db)


def test_three_recorders_push_at_once(rec):
    smbd, remote, root, db = rec
    code = ("import pathlib, sys; from steno_exportd.config import SmbRemote;"
            "from tests.smb.recorder import push, recorder_config;"
            "r = SmbRemote(name='office', server='127.0.0.1', port=int(sys.argv[1]), share='push',"
            " username=sys.argv[2], password_file=sys.argv[3], timeout=10);"
            "cfg = recorder_config(pathlib.Path(sys.argv[4]), pathlib.Path(sys.argv[5]), r, sys.argv[6]);"
            "res = push(cfg, recorder_id=sys.argv[7]);"
            "print(sum(len(x.files) for x in res)); sys.exit(0 if all(x.ok for x in res) else 1)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(remote.port), remote.username, remote.password_file,
                               str(db.path), str(root / f"state-{i}"), f"rec-{i}", f"{i}e" * 16],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for i in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0 and out.strip() == "9", out + err
    for i in range(3):
        assert_landed(root / "nas" / f"rec-{i}", db)


def test_bandwidth_limit(office, smb_tmp):
    smbd, remote, root, _ = office
    db = make_recorder(smb_tmp / "small-rec", sizes=(2 * 1024 * 1024,))
    progress = Progress()
    t0 = time.monotonic()
    res = push(cfg_for(root, db, remote, "rec-bw", bandwidth_limit_kbps=1024), progress=progress)
    elapsed = time.monotonic() - t0
    written = sum(f.size for r in res for f in r.files)
    assert written >= 2 * 1024 * 1024 and progress.fields["bytes_done"] == written
    assert elapsed >= 1.6                      # ~2.1 MiB at 1 MiB/s
    assert_landed(root / "nas" / "rec-bw", db)
    db.close()


def test_recorder_share_and_push_share_on_one_smbd(smb_tmp, smbd_factory):
    """The recorder's read-only share and a push target as two shares of the same smbd."""
    from steno_exportd.config import SambaConfig
    from steno_exportd.samba import share as samba
    from tests.parts.smbdata import connected, read_remote

    (smb_tmp / "nas").mkdir()
    snippet = smb_tmp / "steno-exportd.conf"
    smbd = smbd_factory(include=str(snippet),
                        shares=f"[push]\n   path = {smb_tmp / 'nas'}\n   read only = no\n   force user = root\n")
    smbd.start()
    make_export_tree(smb_tmp / "export", sessions=2)
    samba.apply(SambaConfig(guest_ok=True, export_dir=str(smb_tmp / "export"), snippet_path=str(snippet),
                            reload_command=smbd.reload_command()), enabled=True)
    user = smbd.add_user(PW)
    pwfile = smb_tmp / "pw"
    pwfile.write_text(PW + "\n")
    os.chmod(pwfile, 0o600)
    remote = SmbRemote(name="office", server="127.0.0.1", port=smbd.port, share="push", username=user,
                       password_file=str(pwfile), timeout=5)
    db = make_recorder(smb_tmp / "rec", sizes=(1 << 20, 2 << 20))
    cfg = cfg_for(smb_tmp, db, remote, "rec-1")
    assert [r.skipped for r in push(cfg)] == [False, False]
    assert [r.skipped for r in push(cfg)] == [True, True]
    assert_landed(smb_tmp / "nas" / "rec-1", db)
    with connected(smbd.port) as kw:
        served = read_remote("\\\\127.0.0.1\\meetings\\SHA256SUMS", kw)
    assert served == (smb_tmp / "export" / "SHA256SUMS").read_bytes()
    db.close()


def _change_session(db, sid: int, text: str) -> None:
    """The recorder edits a session: new transcript text, a new updated_at."""
    con = sqlite3.connect(db.path)
    with con:
        con.execute("UPDATE transcript_entries SET text = ? WHERE session_id = ?", (text, sid))
        con.execute("UPDATE sessions SET updated_at = '2026-12-01 10:00:00.000000' WHERE id = ?", (sid,))
    con.close()


def test_a_recording_changed_on_the_recorder_lands_with_its_new_hash(rec):
    smbd, remote, root, db = rec
    cfg = cfg_for(root, db, remote, "rec-s")
    push(cfg)
    audio = db.root / "audio" / "meeting-1.flac"
    data = b"re-encoded " + audio.read_bytes()[11:]
    audio.write_bytes(data)
    _change_session(db, 1, "edited after the first push")
    res = push(cfg)
    assert sorted(r.skipped for r in res) == [False, True, True]
    fresh = hashlib.sha256(data).hexdigest()
    folder = root / "nas" / "rec-s"
    rel = next(rel for rel, h in on_nas(folder).items() if h == fresh)
    assert f"{fresh}  {rel}" in (folder / "SHA256SUMS").read_text()
    assert_landed(folder, db)


def test_encrypted_push_uses_smb3_encryption(rec):
    smbd, remote, root, db = rec
    seen = []

    class Watching(smbpush.SmbKind):
        @contextlib.contextmanager
        def open(self, target, cfg, progress, **kw):
            with super().open(target, cfg, progress, **kw) as t:
                seen.append(next(iter(next(iter(t._cache.values())).session_table.values())).encrypt_data)
                yield t
    push(cfg_for(root, db, remote, "rec-e", require_encryption=True), kind=Watching())
    assert seen == [True]
    assert_landed(root / "nas" / "rec-e", db)


def test_fast_path_still_checks_server_signatures(office):
    """smbwire replaces smbprotocol's response signature check: a wrong key must still be caught."""
    from steno_exportd.smb import wire as smbwire
    smbd, remote, root, sums = office
    t = SmbTarget(remote)
    try:
        t.connect()
        h = t.open_write("probe.txt")
        h.write(b"hello")
        h.commit()
        r = t.open_read("probe.txt")
        assert r.read(100) == b"hello"
        r.close()
        conn = next(iter(t._cache.values()))
        assert conn.verify_signature.__func__ is smbwire._verify_signature
        session = next(iter(conn.session_table.values()))
        session.signing_key = bytes(len(session.signing_key))
        with pytest.raises(SmbError, match="signature could not be verified"):
            t.open_read("probe.txt").read(100)
    finally:
        t.close()


def test_server_that_stops_answering_fails_the_push_instead_of_hanging(rec, caplog):
    """The NAS stops answering mid-push (smbd stopped): the push fails as a connection lost, tried again, and the log
    says so in lines without a traceback (smbprotocol's receive thread logged its end with one, an ERROR with two
    chained exceptions in the journal, at every silent server)."""
    smbd, remote, root, db = rec
    folder = root / "nas" / "rec-h"
    sleeps = []
    caplog.set_level(logging.INFO)
    th, out = _push_in_thread(cfg_for(root, db, remote, "rec-h", timeout=2, bandwidth_limit_kbps=2048),
                              sleep=sleeps.append)
    try:
        parts.wait_for(lambda: sessions_on_nas(folder), timeout=20, what="a first session landed on the NAS")
        smbd.signal_all(signal.SIGSTOP)
        th.join(40)
        if th.is_alive():
            import faulthandler
            faulthandler.dump_traceback(all_threads=True)
        assert not th.is_alive(), "push hung on a server that stopped answering"
    finally:
        smbd.signal_all(signal.SIGCONT)
        th.join(30)
    assert out and isinstance(out[0], SmbError), out
    assert sleeps and sleeps[0] == 2.0              # the drop was transient: tried again (and found it silent)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    said = [r.getMessage() for r in caplog.records if r.name.startswith("smbprotocol")]
    assert said and all("\n" not in m for m in said), said


def test_remote_file_in_use_is_retried_and_named(rec):
    """A file another client holds open without sharing: 'in use', retried (not 'unreachable');
    once released, the next run sends it."""
    import smbclient
    from tests.parts.smbdata import connected
    smbd, remote, root, db = rec
    cfg = cfg_for(root, db, remote, "rec-lock")
    push(cfg)
    folder = root / "nas" / "rec-lock"
    session = sessions_on_nas(folder)["00000001-1111-4222-8333-000000000001"]
    _change_session(db, 1, "one more line")                # changed on the recorder: to be sent again
    with connected(smbd.port, remote.username, PW) as kw:
        unc = f"\\\\127.0.0.1\\push\\rec-lock\\{session}\\transcript.txt"
        with smbclient.open_file(unc, mode="rb", share_access=None, **kw):   # no sharing at all
            sleeps = []
            res = push(cfg, sleep=sleeps.append)
    failed = [r for r in res if not r.ok]
    assert [r.session_id for r in failed] == [1]
    msg = failed[0].error
    assert msg == f"rec-lock\\{session}\\transcript.txt on \\\\127.0.0.1\\push is in use by another program"
    assert sleeps == [2.0, 4.0]                           # retried: 3 attempts
    res = push(cfg)                                       # released: goes through
    assert [(r.session_id, r.skipped) for r in res if not r.skipped] == [(1, False)] and all(r.ok for r in res)
    assert "one more line" in (folder / session / "transcript.txt").read_text()
    assert_landed(folder, db)


def _snapshot(base: pathlib.Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(base).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in base.rglob("*") if p.is_file()}


def test_two_recorders_with_one_folder_name_do_not_mix(rec, smb_tmp):
    """Same host name (same recorder_folder): the second recorder fails, the first's files untouched."""
    smbd, remote, root, db = rec
    push(cfg_for(root, db, remote, "steno"), recorder_id="a1" * 16)
    before = _snapshot(root / "nas" / "steno")
    other = make_recorder(smb_tmp / "other-rec", sizes=(100_000, 100_500), seed=7)
    push(cfg_for(root, other, remote, "steno-elsewhere"), recorder_id="b2" * 16)
    clash = set(on_nas(root / "nas" / "steno-elsewhere")) & set(before)
    assert [r for r in clash if r.endswith(".flac")]      # same names, other contents: would have clashed
    sleeps = []
    with pytest.raises(SmbError) as ei:
        push(cfg_for(root, other, remote, "steno"), recorder_id="b2" * 16, sleep=sleeps.append)
    assert str(ei.value) == (f"smb:office: folder steno on \\\\127.0.0.1\\push belongs to another recorder "
                             f"({socket.gethostname()}, id a1a1a1a1); set smb.recorder_folder")
    assert ei.value.permanent and sleeps == []
    assert _snapshot(root / "nas" / "steno") == before    # nothing written, overwritten or added
    assert_landed(root / "nas" / "steno", db)
    other.close()


def test_two_recorders_first_push_at_the_same_moment_one_gets_the_folder(rec, smb_tmp, monkeypatch):
    """Both find the new folder unclaimed; the second goes on only after the first has pushed everything.
    The second must still fail before writing a file: its look at the folder is stale by then."""
    smbd, remote, root, db = rec
    other = make_recorder(smb_tmp / "other-rec", sizes=(100_000, 100_500), seed=7)
    a_done, b_looked = threading.Event(), threading.Event()
    real = smbpush.read_claim

    def read_claim(t, folder):
        out = real(t, folder)
        if threading.current_thread().name == "b" and not b_looked.is_set():
            b_looked.set()                                  # B has seen the folder unclaimed...
            assert out is None and a_done.wait(60)          # ...and is held there while A pushes
        return out
    monkeypatch.setattr(smbpush, "read_claim", read_claim)
    results: dict = {}

    def run(name, rid, lib):
        try:
            if name == "a":
                assert b_looked.wait(60)
            results[name] = push(cfg_for(root, lib, remote, "steno"), recorder_id=rid, sleep=lambda s: None)
        except Exception as e:  # noqa: BLE001 - the outcome is the test's subject
            results[name] = e
        finally:
            if name == "a":
                a_done.set()
    threads = [threading.Thread(target=run, args=("b", "b2" * 16, other), name="b"),
               threading.Thread(target=run, args=("a", "a1" * 16, db), name="a")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert isinstance(results["a"], list) and all(r.ok for r in results["a"]), results["a"]
    assert isinstance(results["b"], SmbError), results["b"]
    assert "belongs to another recorder" in str(results["b"]) and "id a1a1a1a1" in str(results["b"])
    assert_landed(root / "nas" / "steno", db)              # A's files, none of B's
    assert json.loads((root / "nas" / "steno" / smbpush.CLAIM_NAME).read_text())["recorder_id"] == "a1" * 16
    other.close()


def _copied_cfg(smb_tmp, mid: pathlib.Path, name: str, lib, remote) -> config.Config:
    """A recorder's config whose machine id is ``mid`` (one file: a copied machine id) and state folder its own."""
    state = smb_tmp / name / "state"
    return config.from_dict({"recorder": {"db_path": str(lib.path), "machine_id_file": str(mid)},
                             "state": {"dir": str(state), "runtime_dir": str(state / "run")},
                             "usb": {"enabled": False}, "http": {"enabled": False},
                             "smb": {"remotes": [dataclasses.asdict(remote)]}})


@pytest.fixture
def no_serial(monkeypatch, smb_tmp):
    """No board serial (as off a Pi; on a Pi both configs' boards would hash its one serial): a board id per state
    folder."""
    monkeypatch.setattr(identity, "BOARD_SERIAL", str(smb_tmp / "no-serial-number"))


def test_a_claim_written_before_boards_is_given_ours_so_a_copy_made_since_is_refused(rec, smb_tmp, no_serial):
    """A claim an earlier version wrote names no board, and was accepted from any board for ever: the copied
    recorders that exist today were never told apart. The first push of this version that finds a board-less claim
    of its id writes its board into it; a copy pushing after that (same id, another board) is refused, nothing
    written."""
    smbd, remote, root, db = rec
    mid = smb_tmp / "machine-id"
    mid.write_text("6f" * 16 + "\n")
    first = _copied_cfg(smb_tmp, mid, "first", db, remote)
    folder = root / "nas" / recorder_folder(first)
    folder.mkdir()
    rid = recorder_id(first.state.dir, str(mid))
    (folder / smbpush.CLAIM_NAME).write_text(json.dumps({"recorder_id": rid, "host": "steno", "claimed": 1.0}))
    assert all(r.ok for r in push(first))
    claimed = json.loads((folder / smbpush.CLAIM_NAME).read_text())
    assert claimed["recorder_id"] == rid and claimed["board"] == identity.board_id(first.state.dir)
    assert_landed(folder, db)
    index = root / "nas" / INDEX_DIR / f"{folder.name}.json"
    before, listed = _snapshot(folder), index.read_bytes()
    other = make_recorder(smb_tmp / "copy-rec", sizes=(100_000, 100_500), seed=7)
    with pytest.raises(SmbError) as ei:
        push(_copied_cfg(smb_tmp, mid, "copy", other, remote), sleep=lambda s: None)
    assert "belongs to another recorder with this recorder's machine id" in str(ei.value), str(ei.value)
    assert _snapshot(folder) == before and index.read_bytes() == listed
    assert sorted(p.name for p in (root / "nas").iterdir()) == sorted([folder.name, INDEX_DIR])
    other.close()


def test_two_copies_giving_a_claim_written_before_boards_their_board_at_once_do_not_both_keep_the_folder(
        rec, smb_tmp, no_serial, monkeypatch):
    """Two copies of one system (one machine id, two boards) find the claim an earlier version wrote (no board) at
    the same moment. Each wrote its board into it and read it back: with B's read of the board-less claim before A's
    push, A's write and read-back, then B's write and read-back, both read their own board and both kept the folder,
    pushing into it at once. Now exactly one keeps it; the other stops before writing a meeting, saying the folder is
    another recorder's with this machine id."""
    smbd, remote, root, db = rec
    mid = smb_tmp / "machine-id"
    mid.write_text("6f" * 16 + "\n")
    cfgs = {"a": _copied_cfg(smb_tmp, mid, "a", db, remote)}
    other = make_recorder(smb_tmp / "copy-rec", sizes=(100_000, 100_500), seed=7)
    cfgs["b"] = _copied_cfg(smb_tmp, mid, "b", other, remote)
    folder = root / "nas" / recorder_folder(cfgs["a"])
    folder.mkdir()
    rid = recorder_id(cfgs["a"].state.dir, str(mid))
    (folder / smbpush.CLAIM_NAME).write_text(json.dumps({"recorder_id": rid, "host": "steno", "claimed": 1.0}))
    b_read, a_claimed = threading.Event(), threading.Event()
    real_claim, real_read = smbpush.claim, smbpush.read_claim

    def claim(t, *a, **kw):
        try:
            return real_claim(t, *a, **kw)
        finally:
            if threading.current_thread().name == "a":
                a_claimed.set()

    def read_claim(t, folder):
        raw = real_read(t, folder)
        if threading.current_thread().name == "b" and not b_read.is_set():
            b_read.set()                    # B has read the board-less claim: A claims the folder whole meanwhile
            assert a_claimed.wait(120)
        return raw
    monkeypatch.setattr(smbpush, "claim", claim)
    monkeypatch.setattr(smbpush, "read_claim", read_claim)
    results: dict = {}

    def run(name):
        try:
            if name == "a":
                assert b_read.wait(120)
            results[name] = push(cfgs[name], sleep=lambda s: None)
        except Exception as e:  # noqa: BLE001 - the outcome is the test's subject
            results[name] = e
        finally:
            a_claimed.set() if name == "a" else b_read.set()
    threads = [threading.Thread(target=run, args=(n,), name=n) for n in ("b", "a")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(240)
    kept = [n for n, r in results.items() if isinstance(r, list) and all(x.ok for x in r)]
    refused = [n for n, r in results.items() if isinstance(r, SmbError)
               and "belongs to another recorder with this recorder's machine id" in str(r)]
    assert len(kept) == 1 and len(refused) == 1, results
    claimed = json.loads((folder / smbpush.CLAIM_NAME).read_text())
    assert claimed["board"] == identity.board_id(cfgs[kept[0]].state.dir), claimed
    assert_landed(folder, {"a": db, "b": other}[kept[0]])   # the winner's meetings alone
    other.close()


@pytest.mark.parametrize("moved_back", [True, False], ids=["store-error", "power-cut"])
def test_a_board_given_half_way_leaves_the_folder_its_owners(rec, smb_tmp, no_serial, monkeypatch, moved_back):
    """A's claim written before boards is moved aside to be given A's board; then the new claim's create fails (a
    store error; with the move back failing too, as after a power cut between the two). The folder had no claim
    then and was free: another recorder given the same folder name (one config copied to both) claimed it and
    pushed over A's manifest. Now it is refused, nothing written; A's next push gives the claim its board and
    completes."""
    smbd, remote, root, db = rec
    folder = root / "nas" / "steno"
    folder.mkdir()
    (folder / smbpush.CLAIM_NAME).write_text(json.dumps({"recorder_id": "a1" * 16, "host": "steno", "claimed": 1.0}))
    failing = {"on": True}
    real_create, real_rename = SmbTarget.create_once, SmbTarget.rename

    def create_once(self, rel, data):
        if failing["on"] and rel.endswith(smbpush.CLAIM_NAME):
            raise SmbError("connection to the NAS lost (the recorder lost power)", True)
        return real_create(self, rel, data)

    def rename(self, src, dst):
        if failing["on"] and not moved_back and "-before-boards-" in src:
            raise SmbError("connection to the NAS lost (the recorder lost power)", True)
        return real_rename(self, src, dst)
    monkeypatch.setattr(SmbTarget, "create_once", create_once)
    monkeypatch.setattr(SmbTarget, "rename", rename)
    with pytest.raises(SmbError):
        push(cfg_for(root, db, remote, "steno"), recorder_id="a1" * 16, sleep=lambda s: None)
    failing["on"] = False
    assert (folder / smbpush.CLAIM_NAME).exists() == moved_back
    before = _snapshot(folder)
    other = make_recorder(smb_tmp / "other-rec", sizes=(100_000, 100_500), seed=7)
    with pytest.raises(SmbError) as ei:
        push(cfg_for(root, other, remote, "steno"), recorder_id="b2" * 16, sleep=lambda s: None)
    assert "belongs to another recorder" in str(ei.value) and "id a1a1a1a1" in str(ei.value), str(ei.value)
    assert _snapshot(folder) == before                      # nothing of B's written, nothing of A's replaced
    assert all(r.ok for r in push(cfg_for(root, db, remote, "steno"), recorder_id="a1" * 16, sleep=lambda s: None))
    claimed = json.loads((folder / smbpush.CLAIM_NAME).read_text())
    assert claimed["recorder_id"] == "a1" * 16
    assert claimed["board"] == identity.board_id(cfg_for(root, db, remote, "steno").state.dir)
    assert_landed(folder, db)
    other.close()


def test_a_claim_not_moved_aside_for_a_drop_is_given_its_board_on_the_next_try(rec, smb_tmp, no_serial, monkeypatch):
    """The move aside of a claim written before boards fails for the network (not for a name taken): the push went
    on as if the claim had been given its board (and said so), the claim still naming none, so a copy of this
    system was still let in. Now the push is tried again and the claim names the board."""
    smbd, remote, root, db = rec
    folder = root / "nas" / "steno"
    folder.mkdir()
    (folder / smbpush.CLAIM_NAME).write_text(json.dumps({"recorder_id": "a1" * 16, "host": "steno", "claimed": 1.0}))
    drops, real_rename = [], SmbTarget.rename

    def rename(self, src, dst):
        if "-before-boards-" in dst and not drops:
            drops.append(dst)
            raise SmbError("connection to the NAS lost")           # transient
        return real_rename(self, src, dst)
    monkeypatch.setattr(SmbTarget, "rename", rename)
    cfg = cfg_for(root, db, remote, "steno")
    sleeps: list = []
    assert all(r.ok for r in push(cfg, recorder_id="a1" * 16, sleep=sleeps.append))
    assert len(drops) == 1 and len(sleeps) == 1
    claimed = json.loads((folder / smbpush.CLAIM_NAME).read_text())
    assert claimed["recorder_id"] == "a1" * 16 and claimed["board"] == identity.board_id(cfg.state.dir), claimed
    assert_landed(folder, db)


def test_a_copy_does_not_adopt_the_host_name_folder_of_the_recorder_it_was_copied_from(rec, smb_tmp, no_serial,
                                                                                       monkeypatch):
    """The bare-host-name folder an earlier version pushed is renamed to the new folder name when its claim names
    this recorder's id: a copy of the system (same id, another board) renamed the original's folder before any board
    check. Now it is refused first, the folder left where it is."""
    smbd, remote, root, db = rec
    monkeypatch.setattr(smbpush, "host_folder", lambda: "steno-old")
    mid = smb_tmp / "machine-id"
    mid.write_text("7a" * 16 + "\n")
    first = _copied_cfg(smb_tmp, mid, "first", db, remote)
    old = root / "nas" / "steno-old"
    old.mkdir()
    rid = recorder_id(first.state.dir, str(mid))
    (old / smbpush.CLAIM_NAME).write_text(json.dumps({"recorder_id": rid, "host": "steno", "claimed": 1.0,
                                                      "board": identity.board_id(first.state.dir)}))
    other = make_recorder(smb_tmp / "copy-rec", sizes=(100_000, 100_500), seed=7)
    with pytest.raises(SmbError) as ei:
        push(_copied_cfg(smb_tmp, mid, "copy", other, remote), sleep=lambda s: None)
    assert "belongs to another recorder with this recorder's machine id" in str(ei.value), str(ei.value)
    assert sorted(p.name for p in (root / "nas").iterdir()) == ["steno-old"]
    assert [p.name for p in old.iterdir()] == [smbpush.CLAIM_NAME]
    other.close()


def test_a_recorder_whose_system_was_copied_from_another_machine_id_and_all_does_not_push_into_its_folder(rec, smb_tmp,
                                                                                                         no_serial):
    """An office sets up one recorder and copies its SD card to the next: /etc/machine-id is copied with it, so the
    copy has the first's recorder id, and so its folder on the NAS (host name + short id) and its claim. The copy
    pushed into the first's folder as its own: two recorders' meetings mixed in one folder, each push rewriting the
    other's manifest.json, SHA256SUMS and office index file (and, one host name, removing the other's temp files and
    unfinished folders mid-push). Now a claim names the board too (its serial; here, where there is none, an id kept
    in the state folder, which a card copied before the daemon's first run does not hold): the copy stops before
    writing anything, saying why and what to do, and the first recorder pushes on."""
    smbd, remote, root, db = rec
    mid = smb_tmp / "machine-id"
    mid.write_text("5e" * 16 + "\n")                   # one file: a copied machine id
    first = _copied_cfg(smb_tmp, mid, "first", db, remote)
    assert all(r.ok for r in push(first))
    folder = root / "nas" / recorder_folder(first)
    index = root / "nas" / INDEX_DIR / f"{folder.name}.json"
    before, listed = _snapshot(folder), index.read_bytes()
    other = make_recorder(smb_tmp / "copy-rec", sizes=(100_000, 100_500), seed=7)
    copy = _copied_cfg(smb_tmp, mid, "copy", other, remote)
    assert recorder_folder(copy) == folder.name         # the same folder name, the same claim's id
    sleeps = []
    with pytest.raises(SmbError) as ei:
        push(copy, sleep=sleeps.append)
    said = str(ei.value)
    assert f"folder {folder.name} on \\\\127.0.0.1\\push belongs to another recorder with this recorder's " \
           f"machine id ({socket.gethostname()}, board " in said, said
    assert "systemd-machine-id-setup" in said and "smb.recorder_folder" in said, said
    assert ei.value.permanent and sleeps == []
    assert _snapshot(folder) == before and index.read_bytes() == listed     # nothing written, overwritten or added
    assert sorted(p.name for p in (root / "nas").iterdir()) == sorted([folder.name, INDEX_DIR])
    assert_landed(folder, db)
    res = push(first)                                   # the first recorder's own pushes go on
    assert [r.skipped for r in res] == [True] * 3, [r.error for r in res]
    other.close()


def test_an_unreadable_claim_file_is_a_clear_error_and_nothing_is_written(rec):
    smbd, remote, root, db = rec
    folder = root / "nas" / "rec-claim"
    folder.mkdir()
    (folder / smbpush.CLAIM_NAME).write_text("{not json")
    cfg = cfg_for(root, db, remote, "rec-claim")
    with pytest.raises(SmbError) as ei:
        push(cfg, recorder_id="d4" * 16)
    assert str(ei.value) == ("smb:office: folder rec-claim on \\\\127.0.0.1\\push: .steno-push-owner.json is "
                             "unreadable, so the owner of the folder is unknown; delete that file if this recorder "
                             "owns the folder")
    assert ei.value.permanent
    assert sorted(p.name for p in folder.iterdir()) == [smbpush.CLAIM_NAME]
    (folder / smbpush.CLAIM_NAME).unlink()              # the admin's fix: the next push claims and lands
    push(cfg, recorder_id="d4" * 16)
    assert_landed(folder, db)
    assert json.loads((folder / smbpush.CLAIM_NAME).read_text())["recorder_id"] == "d4" * 16


def test_a_claim_planted_on_the_nas_with_a_hostile_host_name_is_said_in_one_short_printable_line(rec):
    """Anyone who may write in the share can put a claim file in a recorder's folder (before its first push, or in
    place of one a person removed) naming another recorder, with a host name of their own: 700 KB of text, terminal
    escapes, line breaks. The push refused the folder, rightly, with that text whole in its error: the job's error
    every page and the touchscreen show, `steno-exportctl` prints and the state DB keeps for each push that fails
    (a schedule's every few minutes). Now the host is said printable and short; the refusal is unchanged."""
    smbd, remote, root, db = rec
    folder = root / "nas" / "rec-host"
    folder.mkdir()
    host = "\x1b]0;owned\x07\x1b[2J" + "NAS\nsmbd[1]: fake journal line\n" + "y" * 700_000
    (folder / smbpush.CLAIM_NAME).write_text(json.dumps({"recorder_id": "f\x1b" * 16, "host": host}))
    cfg = cfg_for(root, db, remote, "rec-host")
    with pytest.raises(SmbError) as ei:
        push(cfg, recorder_id="d4" * 16, sleep=lambda s: None)
    said = str(ei.value)
    assert "folder rec-host on \\\\127.0.0.1\\push belongs to another recorder (" in said, said[:300]
    assert len(said) < 400 and said.isprintable(), (len(said), said[:300])
    assert ei.value.permanent
    assert sorted(p.name for p in folder.iterdir()) == [smbpush.CLAIM_NAME]     # nothing written


def test_a_folder_named_like_the_claim_file_stops_the_push_at_once_saying_what_to_remove(rec):
    """Someone's folder named .steno-push-owner.json in the recorder's folder on the NAS, where the push keeps its
    claim: the claim can never be written there, whatever the tries. Now the push fails at once (not tried again as
    a drop), naming that folder and saying to move it away; it is left as it is, nothing is sent. Moved away, the
    next push claims the folder and lands."""
    smbd, remote, root, db = rec
    folder = root / "nas" / "rec-way"
    (folder / smbpush.CLAIM_NAME).mkdir(parents=True)
    (folder / smbpush.CLAIM_NAME / "theirs.txt").write_text("a person's own file\n")
    cfg = cfg_for(root, db, remote, "rec-way")
    waits: list[float] = []
    with pytest.raises(TargetError) as ei:
        push(cfg, recorder_id="d6" * 16, sleep=waits.append)
    assert str(ei.value) == ("smb:office: folder rec-way on \\\\127.0.0.1\\push: a folder named "
                             "'.steno-push-owner.json' is in the way of this recorder's claim file (not ours, left "
                             "alone): move it away"), str(ei.value)
    assert isinstance(ei.value, SmbError) and ei.value.permanent and waits == [], waits
    assert os.listdir(folder) == [smbpush.CLAIM_NAME]
    assert os.listdir(folder / smbpush.CLAIM_NAME) == ["theirs.txt"]
    shutil.rmtree(folder / smbpush.CLAIM_NAME)
    assert [r.ok for r in push(cfg, recorder_id="d6" * 16)] == [True] * 3
    assert json.loads((folder / smbpush.CLAIM_NAME).read_text())["recorder_id"] == "d6" * 16
    assert_landed(folder, db)


def _old_push_layout(staging: pathlib.Path, folder: pathlib.Path, rid: str, *, claim: bool,
                     unverified: str = "") -> None:
    """What the previous version left on the NAS: the staging export's root (session folders, its
    manifest.json) mirrored, .steno-push.json with every verified file, SHA256SUMS made from it,
    and (from c17af85 on) .steno-push-owner.json. ``unverified``: a file copied whose read-back never
    finished (cut by a drop): on the NAS, not in .steno-push.json."""
    shutil.copytree(staging, folder)
    (folder / "SHA256SUMS").unlink()
    files = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != unverified:          # (manifest.json was pushed as a file too)
            files[rel] = {"size": p.stat().st_size, "mtime_ns": (staging / rel).stat().st_mtime_ns,
                          "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "verified": True, "at": time.time()}
    data = {"version": 1, "recorder": folder.name, "updated": time.time(), "files": files}
    if rid:
        data.update(recorder_id=rid, host=socket.gethostname())
    (folder / smbpush.LEGACY_MANIFEST).write_text(json.dumps(data, indent=1, sort_keys=True))
    (folder / "SHA256SUMS").write_text("".join(f"{v['sha256']}  {k}\n" for k, v in sorted(files.items())
                                               if k != "SHA256SUMS"))
    if claim:
        (folder / smbpush.CLAIM_NAME).write_text(json.dumps({"recorder_id": rid, "host": socket.gethostname(),
                                                             "claimed": time.time()}, indent=1, sort_keys=True))


@pytest.fixture
def staged(rec, smb_tmp):
    """The previous version's local staging export (<state>/push/office/SilentSteno) of the recorder."""
    from steno_exportd.engine.export import SimpleSpec, run_export
    from steno_exportd.engine.options import ExportOptions
    from steno_exportd.library import Library
    smbd, remote, root, db = rec
    cfg = cfg_for(root, db, remote, "rec-old")
    stage = smb_tmp / "staging"
    stage.mkdir()
    lib = Library.from_config(cfg)
    try:
        ids = tuple(s.id for s in lib.list_sessions(exportable_only=True))
        assert all(r.ok for r in run_export(lib, SimpleSpec(str(stage), ids, FORMATS, ExportOptions()), cfg))
    finally:
        lib.close()
    return smbd, remote, root, db, cfg, stage / "SilentSteno"


@pytest.mark.parametrize("claim,rid", [(True, "c3" * 16), (False, "c3" * 16), (False, "")],
                         ids=["claimed", "id-in-manifest", "before-recorder-ids"])
def test_a_folder_pushed_by_the_previous_version_is_adopted_without_sending_again(staged, claim, rid):
    smbd, remote, root, db, cfg, staging = staged
    folder = root / "nas" / "rec-old"
    _old_push_layout(staging, folder, rid, claim=claim)
    before = stamps(folder)
    res = push(cfg, recorder_id="c3" * 16)
    assert [r.skipped for r in res] == [True] * 3, res   # adopted: nothing sent again
    assert stamps(folder) == before
    assert not (folder / smbpush.LEGACY_MANIFEST).exists()
    assert json.loads((folder / smbpush.CLAIM_NAME).read_text())["recorder_id"] == "c3" * 16
    assert_landed(folder, db)
    assert [r.skipped for r in push(cfg, recorder_id="c3" * 16)] == [True] * 3


def test_a_file_the_previous_version_never_verified_is_sent_again(staged):
    smbd, remote, root, db, cfg, staging = staged
    folder = root / "nas" / "rec-old"
    doubtful = next(p.relative_to(staging).as_posix() for p in staging.rglob("audio.flac"))
    _old_push_layout(staging, folder, "c3" * 16, claim=True, unverified=doubtful)
    before = stamps(folder)
    res = push(cfg, recorder_id="c3" * 16)
    assert sorted(r.skipped for r in res) == [False, True, True] and all(r.ok for r in res)
    after = stamps(folder)
    assert after[doubtful] != before[doubtful]
    assert {k: v for k, v in after.items() if not k.startswith(doubtful.split("/")[0])} == \
        {k: v for k, v in before.items() if not k.startswith(doubtful.split("/")[0])}
    assert_landed(folder, db)


def test_a_folder_the_previous_version_pushed_for_another_recorder_is_refused(staged):
    smbd, remote, root, db, cfg, staging = staged
    folder = root / "nas" / "rec-old"
    _old_push_layout(staging, folder, "e5" * 16, claim=False)
    before = _snapshot(folder)
    with pytest.raises(SmbError, match=r"belongs to another recorder \(.*, id e5e5e5e5\)") as ei:
        push(cfg, recorder_id="c3" * 16)
    assert ei.value.permanent
    assert _snapshot(folder) == before


def test_recorder_id_from_machine_id_or_kept_in_state_dir(tmp_path):
    mid = tmp_path / "machine-id"
    mid.write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    a = recorder_id(str(tmp_path / "state"), str(mid))
    assert a == recorder_id(str(tmp_path / "elsewhere"), str(mid)) and len(a) == 32
    assert "3d1219c7" not in a                                  # the machine id itself is not published
    assert not (tmp_path / "state").exists()
    missing = str(tmp_path / "no-machine-id")
    b = recorder_id(str(tmp_path / "state"), missing)
    assert b and b != a and b == recorder_id(str(tmp_path / "state"), missing)
    assert (tmp_path / "state" / "recorder-id").read_text().strip() == b
    assert recorder_id(str(tmp_path / "state2"), missing) != b


def test_a_push_lands_when_its_sockets_are_numbered_above_1024(rec):
    """The daemon may hold over a thousand descriptors (web connections, a push's parallel requests; its unit's
    LimitNOFILE is far above 1024), so a push's socket can be numbered past 1024. The SMB client waited on it
    with select(), which refuses such a number ("filedescriptor out of range in select()"): the push failed."""
    from tests.parts.fds import above_1024
    smbd, remote, root, db = rec
    with above_1024():
        res = push(cfg_for(root, db, remote, "rec-fd"))
    assert [r.ok for r in res] == [True] * 3, [r.error for r in res]
    assert_landed(root / "nas" / "rec-fd", db)


def _empty_files(folder: pathlib.Path, n: int) -> None:
    """folder/00000 ... on the NAS's disk: ``n`` empty files."""
    folder.mkdir(parents=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(n):
            os.close(os.open(f"{i:05d}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def _left_alone(caplog, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if name in r.getMessage() and "left alone" in r.getMessage()]


@pytest.mark.parametrize("planted", ["Holiday.partial", "Holiday"])
def test_a_deeply_nested_folder_in_the_recorder_folder_is_left_alone_and_the_push_lands(rec, planted, caplog):
    """Someone on the NAS leaves in the recorder's folder a folder the push cleans up as an interrupted one of its
    own (one holding the '.steno-incomplete' marker, named '<name>.partial' or not) with 1,500 folders nested in it.
    Its removal went down one level after another over SMB (two round trips each) until Python's recursion limit,
    and the one line said 'SMB error on \\\\127.0.0.1\\push: RecursionError: maximum recursion depth exceeded'. Now,
    as on a stick, a tree deeper than MAX_TREE_DEPTH (8) is left alone, the line saying so, and the sessions land."""
    smbd, remote, root, db = rec
    folder = root / "nas" / "rec-deep"
    folder.mkdir()
    nest_folders(folder / planted, 1_500)
    (folder / planted / MARKER).write_text("incomplete\n")     # (a .partial without it is someone's: left alone)
    try:
        with caplog.at_level(logging.INFO, logger="steno_exportd"):
            res = push(cfg_for(root, db, remote, "rec-deep"))
        assert [(r.ok, r.error) for r in res] == [(True, "")] * 3, res
        assert (folder / planted / "a" / "a").is_dir()          # someone else's: never removed
        said = _left_alone(caplog, planted)
        assert len(said) == 1 and "nested more than 8 deep" in said[0], said
        assert not [r for r in caplog.records if r.exc_info]
    finally:
        subprocess.run(["rm", "-rf", str(folder / planted)], check=True)     # (shutil's rmtree recurses too)
    assert_landed(folder, db)


def test_a_persons_partial_folder_in_the_recorder_folder_survives_pushes(rec, caplog):
    """Someone browsing the NAS keeps their own folder 'Notes.partial' (their file in it) in the recorder's folder.
    The push's clean-up took every '<name>.partial' there for an interrupted build of its own (the SMB target made
    no marker) and removed it with their file. Now our .partial folders carry our marker there too (one small
    write and one removal per session): theirs stays, said in one line per push, and the sessions land."""
    smbd, remote, root, db = rec
    folder = root / "nas" / "rec-notes"
    theirs = parts.persons_partial(folder)
    try:
        parts.runs_leave_theirs_alone(lambda: push(cfg_for(root, db, remote, "rec-notes")), theirs, caplog, 3)
        assert not list(folder.rglob(MARKER))
    finally:
        shutil.rmtree(theirs, ignore_errors=True)
    assert_landed(folder, db)


def test_a_folder_of_60000_entries_in_the_recorder_folder_is_left_alone_and_the_push_lands(rec, caplog):
    """Someone on the NAS leaves a '<name>.partial' folder of 60,000 files in the recorder's folder. The push listed
    it (its first 10,920 files: see the next test) and removed them one by one over SMB, three round trips each, for
    nearly two minutes, until the server said 'Directory not empty': someone else's files gone, and time no cancel
    shortens. Now a listing stops past MAX_ENTRIES (50,000), as on a stick: the folder is left alone with one line
    saying why, and the sessions land."""
    smbd, remote, root, db = rec
    folder = root / "nas" / "rec-many"
    _empty_files(folder / "Big.partial", 60_000)
    try:
        with caplog.at_level(logging.INFO, logger="steno_exportd"):
            res = push(cfg_for(root, db, remote, "rec-many"))
        assert [(r.ok, r.error) for r in res] == [(True, "")] * 3, res
        assert len(os.listdir(folder / "Big.partial")) == 60_000
        said = _left_alone(caplog, "Big.partial")
        assert said == [f"smb:office: rec-many/Big.partial left alone: rec-many/Big.partial holds more than "
                        f"{MAX_ENTRIES:,} entries: not a folder this recorder writes"], said
    finally:
        shutil.rmtree(folder / "Big.partial")
    assert_landed(folder, db)


def test_a_folder_of_many_short_names_is_listed_whole(office):
    """A folder of 20,000 files named '00000'...'19999': the first answer to a listing (1 MiB) is full of them, and
    it was taken for the whole folder (its size was reckoned without each entry's padding): the listing said 10,920
    files. Everything listed, in more answers."""
    smbd, remote, root, _ = office
    _empty_files(root / "nas" / "short", 20_000)
    t = SmbTarget(remote)
    try:
        t.connect()
        assert len(t.listdir("short")) == 20_000
    finally:
        t.close()


def test_the_alive_check_after_a_failed_session_reads_one_entry_of_a_crowded_folder(office):
    """After a session fails, the push asks whether the NAS still answers. SmbTarget had no folder_alive, so the
    engine listed the whole recorder's folder: many answers over SMB, and with someone's 60,000 files there the
    listing failed past 50,000 entries and the NAS counted as gone (every later session 'not attempted'). Now one
    request reads the folder's first entry: alive, however crowded or empty; not alive once the server is gone,
    nor for a folder that is not there."""
    smbd, remote, root, _ = office
    _empty_files(root / "nas" / "crowded", 60_000)
    (root / "nas" / "empty").mkdir()
    t = SmbTarget(remote)
    try:
        t.connect()
        with pytest.raises(TargetError, match="more than"):
            t.listdir("crowded")                # what the check read before
        assert t.folder_alive("crowded") and t.folder_alive("empty")
        assert not t.folder_alive("not-there")
        smbd.kill()
        assert not t.folder_alive("crowded")
    finally:
        t.close()
        if smbd.proc.poll() is not None:
            smbd.start()
        shutil.rmtree(root / "nas" / "crowded")


@pytest.mark.parametrize("name,size,limit", [(smbpush.LEGACY_MANIFEST, 1 << 30, "20 MiB"),
                                             (smbpush.CLAIM_NAME, 2 << 20, "1 MiB")], ids=["legacy", "claim"])
def test_a_huge_ownership_file_on_the_nas_is_refused_with_a_clear_error(rec, name, size, limit):
    """Someone on the NAS leaves a huge .steno-push.json (1 GiB, sparse) or .steno-push-owner.json in the recorder's
    folder. It was read by a second capped reader of its own (bytes +=: each chunk copied all that came before) and
    refused with 'rec-huge/.steno-push.json on smb:office is larger than 20971520 bytes'. Now the manifest's one
    capped reader reads it no further than its bound (20 MiB, 1 MiB for a claim), and the push is refused, not
    retried, with a line that says whose the folder is not known and what to do; nothing is written."""
    smbd, remote, root, db = rec
    folder = root / "nas" / "rec-huge"
    folder.mkdir()
    with open(folder / name, "wb") as f:
        f.truncate(size)
    cfg = cfg_for(root, db, remote, "rec-huge")
    with pytest.raises(SmbError) as ei:
        push(cfg, recorder_id="d5" * 16)
    assert str(ei.value) == (f"smb:office: folder rec-huge on \\\\127.0.0.1\\push: {name} is larger than {limit}, so "
                             f"the owner of the folder is unknown; delete that file if this recorder owns the folder")
    assert ei.value.permanent
    assert os.listdir(folder) == [name]


def test_a_nas_granting_few_credits_takes_a_push_whose_writes_and_finishing_requests_share_its_connection(
        smb_tmp, smbd_factory, caplog):
    """A NAS whose admin set smbd's credit window to its least (smb2 max credits = 128: one 8 MiB write's worth):
    the push's own connection carries its writes (pipelined, without the credit lock of the second connection) and,
    from the verifier thread, a finished session's requests (its folder's rename, its listing, the manifest's
    writes) beside the next session's writes. None fails for want of credits, and nothing is tried twice."""
    _, remote = start_office_nas(smb_tmp, smbd_factory, extra_global="smb2 max credits = 128")
    push_dir = smb_tmp / "nas"
    db = make_recorder(smb_tmp / "rec-few", sizes=tuple((6 << 20) + i * 1000 for i in range(6)))
    try:
        with caplog.at_level(logging.INFO, logger="steno_exportd"):
            res = push(cfg_for(smb_tmp, db, remote, "rec-few"), sleep=lambda s: None)
        assert [(r.ok, r.error) for r in res] == [(True, "")] * 6, res
        said = [r.getMessage() for r in caplog.records if "credits" in r.getMessage() or "attempt" in r.getMessage()]
        assert not said, said
        assert_landed(push_dir / "rec-few", db)
    finally:
        db.close()


@pytest.mark.parametrize("version", ["1e999", "-1e999"])
def test_a_manifest_on_the_nas_whose_version_is_no_integer_is_rebuilt_not_every_push_failed(rec, caplog, version):
    """Someone with write access to the share (another recorder's bug, a person's edit) leaves the recorder's
    manifest.json with '"version": 1e999'. JSON's reader makes that infinity, and the version check's int() raised
    OverflowError, which no handler of an unusable manifest caught: every push failed as a whole, for ever, saying
    only 'cannot convert float infinity to integer'. It is an unusable manifest like any other: rebuilt from
    SHA256SUMS, and the push lands (each session once)."""
    smbd, remote, root, db = rec
    cfg = cfg_for(root, db, remote, "rec-version")
    folder = root / "nas" / "rec-version"
    assert all(r.ok for r in push(cfg))
    raw = (folder / "manifest.json").read_text()
    edited, n = re.subn(r'"version": ?1\b', f'"version": {version}', raw, count=1)
    assert n == 1
    (folder / "manifest.json").write_text(edited)
    with caplog.at_level(logging.WARNING, logger="steno_exportd"):
        res = push(cfg)
    assert [(r.ok, r.error) for r in res] == [(True, "")] * 3, res
    assert json.loads((folder / "manifest.json").read_text())["version"] == 1
    assert not [r for r in caplog.records if r.exc_info]
    assert_landed(folder, db)


def test_a_folder_named_with_terminal_escapes_in_the_recorder_folder_is_said_in_one_printable_line(
        smb_tmp, smbd_factory, caplog):
    """Someone on the NAS leaves in the recorder's folder a '<name>.partial' folder whose name holds terminal escapes
    and a line break. A NAS that does not mangle names Windows cannot hold (Samba's 'mangled names = no', a NAS of
    another make, or a hostile server) lists it as it is, and the push's clean-up said it left it alone with the
    name raw, twice (its own words and the server's error quoting the path): an escape that retitles and clears the
    terminal of an admin reading the journal, and a forged 'ERROR' line after the break. The name is said with its
    control characters escaped, in one line; the folder is left alone and the session lands."""
    smbd, remote = start_office_nas(smb_tmp, smbd_factory, extra_global="mangled names = no")
    db = make_recorder(smb_tmp / "rec", sizes=(100_000,))
    folder = smb_tmp / "nas" / "rec-esc"
    theirs = folder / "Notes\x1b]0;owned\x07\x1b[2J\nERROR steno_exportd.engine: forged.partial"
    (theirs / "a").mkdir(parents=True)
    (theirs / "a" / "todo.txt").write_text("call the caterer\n")
    try:
        with caplog.at_level(logging.INFO, logger="steno_exportd"):
            res = push(recorder_config(db.path, smb_tmp / "state", remote, "rec-esc"))
        assert [(r.ok, r.error) for r in res] == [(True, "")], res
        said = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
        assert len(said) == 1 and "left alone" in said[0], said
        assert said[0].isprintable() and "Notes\\x1b]0;owned\\x07\\x1b[2J\\nERROR" in said[0], said
        assert (theirs / "a" / "todo.txt").read_text() == "call the caterer\n"
    finally:
        shutil.rmtree(theirs)
        db.close()
    assert_landed(folder, db, sessions=1)


def _peak_rss_growth(run: Callable[[], None]) -> int:
    """How far (bytes) this process's resident memory rose above where it was, sampled while ``run()`` ran."""
    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    base, peak, done = rss(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss() - base)
    th = threading.Thread(target=sample)
    th.start()
    try:
        run()
    finally:
        done.set()
        th.join()
    return max(peak[0], rss() - base)


@pytest.mark.parametrize("after", [0, 6], ids=["its first answer", "an answer mid-push"])
def test_a_nas_that_says_its_answer_is_2_gib_long_fails_the_push_without_the_memory(rec, caplog, after):
    """A broken or hostile NAS (or whatever answers at its address) sends an answer whose 4-byte length says 2 GiB.
    SMB over TCP allows 16 MiB (a 24-bit length), but the receive loop made a zeroed buffer of whatever length came
    before reading a byte of it: 2 GiB resident at once (4 GiB with the length's top bit), where the daemon's unit
    allows 256 MiB (MemoryMax), so the kernel killed the daemon and every job with it, at every push. Now a length
    over SMB's closes the connection: the push fails with the connection lost, one line saying why, and the memory
    stays where it was."""
    from tests.parts.smbrelay import HostileSmbRelay
    smbd, remote, root, db = rec
    relay = HostileSmbRelay(remote.port, "huge", after=after)
    out: list = []

    def run() -> None:
        try:
            out.append(push(cfg_for(root, db, remote, "rec-huge", port=relay.port, timeout=2), sleep=lambda s: None))
        except Exception as e:  # noqa: BLE001 - the outcome is the test's subject
            out.append(e)
    try:
        with caplog.at_level(logging.INFO):
            grew = _peak_rss_growth(run)
    finally:
        relay.close()
    assert relay.tampered >= 1
    assert grew < 256 << 20, f"resident memory rose by {grew >> 20} MiB"
    assert isinstance(out[0], SmbError) and "connection lost" in str(out[0]), out
    said = [r.getMessage() for r in caplog.records if "2,147,483,647 bytes" in r.getMessage()]
    assert said and all(r.levelno == logging.WARNING for r in caplog.records if "2,147,483,647" in r.getMessage())
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


def _push_through_relay(rec, caplog, mode: str, **kw) -> tuple[bool, list, Any]:
    """A push (2 s receive timeout) through a HostileSmbRelay in ``mode`` in front of the real smbd, given 120 s:
    (still running then, what the push raised, the relay)."""
    from tests.parts.smbrelay import HostileSmbRelay
    smbd, remote, root, db = rec
    relay = HostileSmbRelay(remote.port, mode, **kw)
    try:
        with caplog.at_level(logging.INFO):
            th, out = _push_in_thread(cfg_for(root, db, remote, f"rec-{mode}", port=relay.port, timeout=2),
                                      sleep=lambda s: None)
            th.join(120)
            held = th.is_alive()
    finally:
        relay.close()
        th.join(60)
    return held, out, relay


@pytest.mark.parametrize("after, interval", [(6, 0.5), (3, 2.0)], ids=["mid-push", "the first answer after log-on"])
def test_a_nas_that_trickles_an_answer_a_byte_at_a_time_fails_the_push_instead_of_holding_it(rec, caplog, after,
                                                                                             interval):
    """A broken or hostile NAS answers a request one byte every half second, for ever: never silent long enough for
    the receive timeout (each wait for a byte is what resets it), so the push waited for the answer's end (a 2 MiB
    read's: twelve days), no error, its job running and its remote held. Now an answer must come whole within the
    receive timeout plus its length at 16 KiB/s: past that the connection is closed, one line saying why, and the
    push fails as with any connection lost (tried again, then said). The first answer after log-on (frame 3: the
    tree connect's) was read with smbprotocol's 600 s, the receive timeout being set only once log-on returned:
    a byte every two seconds held the push 3 minutes; now the connection's own timeout bounds it too."""
    held, out, relay = _push_through_relay(rec, caplog, "trickle", after=after, interval=interval)
    assert not held, "the push waited on a trickled answer"
    assert relay.tampered >= 1
    assert out and isinstance(out[0], SmbError) and "connection lost" in str(out[0]), out
    said = [r.getMessage() for r in caplog.records if "stopped sending" in r.getMessage()]
    assert said and all(r.levelno == logging.WARNING for r in caplog.records if "stopped sending" in r.getMessage())
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("after", [0, 6], ids=["its first answer", "an answer mid-push"])
def test_a_nas_that_says_its_answer_is_0_bytes_long_fails_the_push_instead_of_hanging_it(rec, caplog, after):
    """A broken or hostile NAS sends an answer whose 4-byte length says 0 (no SMB2 message is shorter than its
    64-byte header). The receive loop took it for the connection's end and its thread stopped, but the connection
    was never closed: it still said connected, so the push went on and its next request waited for an answer no one
    would read, for ever (no error, its job running, its remote held). Now a length under a header's closes the
    connection: one line saying why, and the push fails as with any connection lost."""
    held, out, relay = _push_through_relay(rec, caplog, "empty", after=after)
    assert not held, "the push waited after an answer of length 0"
    assert relay.tampered >= 1
    assert out and isinstance(out[0], SmbError) and "Error" not in str(out[0]), out     # (not a TypeError's words)
    assert "connection lost" in str(out[0]) or "not answering" in str(out[0]), out
    said = [r for r in caplog.records if "SMB message of 0 bytes" in r.getMessage()]
    assert said and all(r.levelno == logging.WARNING for r in said), [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


def test_an_answer_that_pauses_past_the_receive_timeout_but_within_its_deadline_lands(rec, caplog):
    """A NAS on a slow or busy link sends a 2 MiB read-back answer in pieces, with pauses: under a second each for
    six seconds, then one of two seconds, well inside what a 2 MiB answer is given (the receive timeout, 5 s here,
    plus its length at 16 KiB/s: 128 s more). The receive loop counted each wait against the receive timeout as
    well, so once the answer had taken 5 s any pause over a second closed the connection: the push failed on a
    link that was only slow. Now only the answer's deadline counts, and the push lands."""
    held, out, relay = _push_through_relay(rec, caplog, "pause", big=1 << 20, pauses=(0.9,) * 7 + (2.0,))
    assert not held
    assert relay.tampered == 1
    assert out and not isinstance(out[0], Exception), out
    assert not [r for r in caplog.records if "stopped sending" in r.getMessage()]
    smbd, remote, root, db = rec
    assert_landed(root / "nas" / "rec-pause", db)


@pytest.mark.parametrize("fast", [True, False], ids=["our writes", "smbprotocol's writes"])
def test_a_nas_that_takes_a_write_a_few_bytes_at_a_time_fails_the_push_within_its_deadline_and_loses_nothing(
        smb_tmp, smbd_factory, caplog, monkeypatch, fast):
    """A broken or hostile NAS takes the push's writes 2 KiB every half second, for ever: never still long enough
    for the write's stall timeout (twice the receive timeout: what it takes resets it), so a write waited for as
    long as the NAS pleased to take it (a 512 KiB write: two minutes; an 8 MiB one: over half an hour), and the
    receive loop's keep-alive could not send its echo meanwhile (the socket's lock is the write's): the push ran on,
    no error, its job and its remote held. Now a write must go whole within the receive timeout plus its length at
    16 KiB/s, as an answer must come: past that the connection is closed and the push fails (tried again, then
    said) with an error naming the NAS. Nothing is recorded as pushed, and the next push, the NAS well again, lands
    the session. smbprotocol's own send (an encrypted session's writes, every other request) waited on a blocking
    socket with no timeout at all: it goes through the same bounds. (512 KiB writes, 16 in flight: more than the
    socket's buffers hold, so a write waits in its send, as 8 MiB writes do; a 512 KiB write's deadline is 42 s
    here, the receive timeout being 10 s.)"""
    from tests.parts.smbrelay import HostileSmbRelay
    monkeypatch.setattr(smbtarget, "FAST_WRITES", fast)
    monkeypatch.setattr(smbtarget, "CHUNK", 512 * 1024)
    monkeypatch.setattr(smbtarget, "PIPELINE", 16)
    _, remote = start_office_nas(smb_tmp, smbd_factory)
    db = make_recorder(smb_tmp / "rec-slow", sizes=(12 << 20,))
    folder = smb_tmp / "nas" / "rec-slow"
    relay = HostileSmbRelay(remote.port, "slowread", after=256 * 1024, interval=0.5, piece=2048)
    try:
        with caplog.at_level(logging.INFO):
            th, out = _push_in_thread(cfg_for(smb_tmp, db, remote, "rec-slow", port=relay.port, timeout=5))
            th.join(300)
            held = th.is_alive()
    finally:
        relay.close()
        th.join(60)
    try:
        assert not held, "the push waited on a NAS taking its writes a few bytes at a time"
        assert relay.tampered >= 1
        assert out and not isinstance(out[0], Exception) and [r.ok for r in out[0]] == [False], out
        error = out[0][0].error
        assert error.startswith(f"127.0.0.1:{relay.port} took ") and "too slowly" in error, error
        assert "16 KiB/s" in error, error
        assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
        assert not sessions_on_nas(folder)
        res = push(cfg_for(smb_tmp, db, remote, "rec-slow"))
        assert [(r.ok, r.error) for r in res] == [(True, "")], res
        assert_landed(folder, db, sessions=1)
    finally:
        db.close()
