"""SMB push to a real smbd: lands, verifies, incremental, resumable, faults, several recorders."""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

import pytest

from steno_exportd.smb import push as smbpush
from steno_exportd.config import Config, SmbConfig, SmbRemote
from steno_exportd.errors import NotFoundError, VerifyError
from tests import parts
from tests.parts.smbd import PW
from tests.parts.smbdata import make_export_tree



def _on_nas(root: pathlib.Path, folder: str) -> dict[str, str]:
    base = root / "nas" / folder
    return {p.relative_to(base).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in base.rglob("*") if p.is_file()}


def _assert_landed(root, folder, sums):
    got = _on_nas(root, folder)
    for rel, h in sums.items():
        assert got.get(rel) == h, rel
    assert not [r for r in got if r.rsplit("/", 1)[-1].startswith(smbpush.TEMP_PREFIX)]
    lines = (root / "nas" / folder / "SHA256SUMS").read_text().splitlines()
    remote_sums = dict(reversed(ln.split("  ", 1)) for ln in lines)
    for rel, h in sums.items():
        assert remote_sums[rel] == h


@pytest.mark.parametrize("with_sums", [True, False])
def test_small_writes_reuse_read_buffers_without_mixing_files(office, monkeypatch, with_sums):
    """64 KiB writes: every file spans many times the reused read buffers; what lands is exact
    (checked on the server's disk, not by our own read-back), hashes too when SHA256SUMS is absent."""
    smbd, remote, root, sums = office
    monkeypatch.setattr(smbpush, "CHUNK", 65536)
    if not with_sums:
        (root / "export" / "SHA256SUMS").unlink()
    t = smbpush.SmbTarget(remote, "rec-small")
    try:
        assert t.connect() is None and t.max_write == 65536
        res = smbpush.push_dir(t, root / "export", verify=False)
    finally:
        t.close()
    assert set(sums) <= set(res.sent)
    assert max((root / "export" / r).stat().st_size for r in sums) > 40 * 65536
    _assert_landed(root, "rec-small", sums)


def test_push_lands_verifies_and_is_incremental(office):
    smbd, remote, root, sums = office
    t = smbpush.SmbTarget(remote, "rec-a")
    try:
        res = smbpush.push_dir(t, root / "export")
        assert set(sums) <= set(res.sent) and not res.skipped
        _assert_landed(root, "rec-a", sums)
        manifest = json.loads((root / "nas" / "rec-a" / smbpush.MANIFEST_NAME).read_text())
        assert all(manifest["files"][r]["verified"] for r in sums)

        again = smbpush.push_dir(t, root / "export")
        assert again.sent == () and again.bytes_sent == 0

        gone = sorted(sums)[0]
        (root / "nas" / "rec-a" / gone).unlink()
        third = smbpush.push_dir(t, root / "export")
        assert third.sent == (gone,)
        _assert_landed(root, "rec-a", sums)
        assert t.free_space() > 0
    finally:
        t.close()


def test_target_for_resolves_configured_remote(office):
    smbd, remote, root, sums = office
    cfg = Config(smb=SmbConfig(recorder_folder="rec-x", remotes=[remote]))
    t = smbpush.target_for(cfg, "smb:office")
    assert t.folder == "rec-x" and t.label == "smb:office"
    with pytest.raises(NotFoundError, match="office"):
        smbpush.target_for(cfg, "smb:nope")


def test_wrong_password_fails_once_with_logon_failed(office):
    smbd, remote, root, sums = office
    t = smbpush.SmbTarget(remote, "rec-a", password="wrong")
    sleeps = []
    with pytest.raises(smbpush.SmbError, match="logon failed") as ei:
        smbpush.push_with_retries(t, root / "export", sleep=sleeps.append)
    assert ei.value.permanent and sleeps == []           # no retry storm


@pytest.mark.parametrize("change,message", [
    (dict(share="nosuch"), "not found"),
    (dict(path="missing/folder"), "path not found"),
    (dict(share="ro", username="", password_file=""), "access denied"),
])
def test_share_path_and_permission_errors(office, change, message):
    import dataclasses
    smbd, remote, root, sums = office
    t = smbpush.SmbTarget(dataclasses.replace(remote, **change), "rec-a")
    with pytest.raises(smbpush.SmbError, match=message) as ei:
        smbpush.push_with_retries(t, root / "export", sleep=lambda s: None)
    assert ei.value.permanent


def test_world_readable_password_file_refused(office):
    smbd, remote, root, sums = office
    os.chmod(remote.password_file, 0o644)
    with pytest.raises(smbpush.SmbError, match="readable by others"):
        smbpush.SmbTarget(remote, "rec-a").connect()


def test_server_that_accepts_but_never_answers_fails_within_twice_the_timeout(office):
    """TCP accepted, no SMB reply: the whole job (retries included) ends within ~2x timeout and
    says the server is not answering (not 'SMB2 needed')."""
    import dataclasses
    smbd, remote, root, sums = office
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        r = dataclasses.replace(remote, port=silent.getsockname()[1], timeout=2)
        t = smbpush.SmbTarget(r, "rec-a")
        t0 = time.monotonic()
        with pytest.raises(smbpush.SmbError) as ei:
            smbpush.push_with_retries(t, root / "export")      # real backoff sleeps, if any
        elapsed = time.monotonic() - t0
    msg = str(ei.value)
    assert elapsed <= 2 * r.timeout + 0.5, elapsed
    assert "not answering" in msg and "timed out after 2s" in msg and "SMB2" not in msg and "SMB1" not in msg
    assert msg.startswith(f"127.0.0.1:{r.port} ")


def test_closed_port_is_unreachable_and_retried(office):
    import dataclasses
    smbd, remote, root, sums = office
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    r = dataclasses.replace(remote, port=closed_port)
    sleeps = []
    with pytest.raises(smbpush.SmbError, match="unreachable.*[Rr]efused") as ei:
        smbpush.push_with_retries(smbpush.SmbTarget(r, "rec-a"), root / "export", sleep=sleeps.append)
    assert not ei.value.permanent and sleeps == [2.0, 4.0]


def test_unknown_server_name_fails_at_once_saying_dns(office):
    import dataclasses
    smbd, remote, root, sums = office
    r = dataclasses.replace(remote, server="steno-nas-nowhere.invalid")
    sleeps = []
    with pytest.raises(smbpush.SmbError) as ei:
        smbpush.push_with_retries(smbpush.SmbTarget(r, "rec-a"), root / "export", sleep=sleeps.append)
    assert str(ei.value) == "server name 'steno-nas-nowhere.invalid' not found (DNS)"
    assert ei.value.permanent and sleeps == []


@pytest.mark.parametrize("kind", ["directory", "not-utf8"])
def test_unreadable_password_file_is_a_clear_permanent_error(office, kind):
    import dataclasses
    smbd, remote, root, sums = office
    bad = root / f"pw-{kind}"
    if kind == "directory":
        bad.mkdir(mode=0o700)
        expected = f"password file {bad} is not a regular file"
    else:
        bad.write_bytes(b"\xff\xfe\xfa\n")
        os.chmod(bad, 0o600)
        expected = f"password file {bad} cannot be read: not UTF-8 text"
    t = smbpush.SmbTarget(dataclasses.replace(remote, password_file=str(bad)), "rec-a")
    sleeps = []
    with pytest.raises(smbpush.SmbError) as ei:
        smbpush.push_with_retries(t, root / "export", sleep=sleeps.append)
    assert str(ei.value) == expected and ei.value.permanent and sleeps == []


def test_smb1_only_server_says_smb2_needed(smb_tmp, smbd_factory):
    (smb_tmp / "old").mkdir()
    smbd = smbd_factory(extra_global="server min protocol = NT1\nserver max protocol = NT1",
                        shares=f"[old]\n   path = {smb_tmp / 'old'}\n   guest ok = yes\n")
    smbd.start()
    r = SmbRemote(name="old", server="127.0.0.1", port=smbd.port, share="old", timeout=5)
    with pytest.raises(smbpush.SmbError, match="SMB2") as ei:
        smbpush.SmbTarget(r, "rec").connect()
    assert ei.value.permanent


def test_server_killed_mid_push_then_rerun_completes(office):
    smbd, remote, root, sums = office
    manifest = root / "nas" / "rec-k" / smbpush.MANIFEST_NAME
    t = smbpush.SmbTarget(remote, "rec-k")
    errors = []

    def run():
        try:
            smbpush.push_dir(t, root / "export", bandwidth_limit_kbps=2048)   # ~5 s in all
        except Exception as e:
            errors.append(e)

    th = threading.Thread(target=run)
    th.start()
    try:
        parts.wait_for(lambda: manifest.exists() and json.loads(manifest.read_text())["files"],
                           timeout=20, what="first verified files on the NAS")
        smbd.kill()
    finally:
        th.join(30)
    assert not th.is_alive()
    assert errors and isinstance(errors[0], smbpush.SmbError) and not errors[0].permanent
    done_before = set(json.loads(manifest.read_text())["files"])
    t.close()

    smbd.start()
    t2 = smbpush.SmbTarget(remote, "rec-k")
    try:
        res = smbpush.push_dir(t2, root / "export")
    finally:
        t2.close()
    assert done_before and not (set(res.sent) & done_before)     # verified files not re-sent
    _assert_landed(root, "rec-k", sums)


@pytest.fixture
def resumable(office, smb_tmp, monkeypatch):
    """Resume thresholds scaled down (64 MiB in the product) to an 8 MiB recording pushed at 2 MiB/s."""
    monkeypatch.setattr(smbpush, "RESUME_MIN", 1024 * 1024)
    monkeypatch.setattr(smbpush, "RESUME_BACKOFF", 1024 * 1024)
    monkeypatch.setattr(smbpush, "RESUME_ALIGN", 64 * 1024)
    smbd, remote, root, _ = office
    sums = make_export_tree(smb_tmp / "big-export", sessions=1, big=8 * 1024 * 1024, seed=3)
    return smbd, remote, root, sums, smb_tmp / "big-export"


def _cut_mid_file(smbd, remote, src: pathlib.Path, nas: pathlib.Path, at: int) -> pathlib.Path:
    """Push ``src`` slowly and kill smbd once the recording's temp file holds ``at`` bytes: its path."""
    t = smbpush.SmbTarget(remote, nas.name)
    errors = []

    def run():
        try:
            smbpush.push_dir(t, src, bandwidth_limit_kbps=2048)
        except Exception as e:  # noqa: BLE001 - the drop is the point
            errors.append(e)

    def temp():
        for p in nas.rglob(f"{smbpush.TEMP_PREFIX}*audio.flac"):
            try:
                if p.stat().st_size >= at:
                    return p
            except FileNotFoundError:       # renamed meanwhile
                pass
        return None
    th = threading.Thread(target=run)
    th.start()
    try:
        cut = parts.wait_for(temp, timeout=30, what=f"{at} bytes of the recording on the NAS")
        smbd.kill()
    finally:
        th.join(30)
    t.close()
    assert not th.is_alive() and errors and isinstance(errors[0], smbpush.SmbError), errors
    assert not errors[0].permanent
    assert not (cut.parent / "audio.flac").exists(), "the cut recording sits under its final name"
    return cut


def test_a_recording_cut_by_a_drop_resumes_where_it_stopped(resumable):
    smbd, remote, root, sums, src = resumable
    nas = root / "nas" / "rec-resume"
    cut = _cut_mid_file(smbd, remote, src, nas, at=5 * 1024 * 1024)
    have = cut.stat().st_size
    smbd.start()
    t = smbpush.SmbTarget(remote, "rec-resume")
    try:
        res = smbpush.push_dir(t, src)
    finally:
        t.close()
    rel = next(r for r in sums if r.endswith("audio.flac"))
    size = (src / rel).stat().st_size
    assert res.bytes_resumed == (have - 1024 * 1024) // 65536 * 65536 >= 4 * 1024 * 1024
    assert res.bytes_sent <= size - res.bytes_resumed + 64 * 1024      # the rest of it, plus the small files
    assert rel in res.sent
    _assert_landed(root, "rec-resume", sums)              # byte-exact, read back over SMB and on disk
    assert not [p for p in nas.rglob(smbpush.TEMP_PREFIX + "*")], "a temp file was left"
    assert "partial" not in json.loads((nas / smbpush.MANIFEST_NAME).read_text())


def test_a_cut_recording_changed_since_is_sent_again_whole(resumable):
    smbd, remote, root, sums, src = resumable
    nas = root / "nas" / "rec-changed"
    _cut_mid_file(smbd, remote, src, nas, at=3 * 1024 * 1024)
    rel = next(r for r in sums if r.endswith("audio.flac"))
    data = bytearray((src / rel).read_bytes())
    data[:4] = b"NEW!"                                     # re-exported meanwhile: same size, new bytes
    (src / rel).write_bytes(bytes(data))
    sums[rel] = hashlib.sha256(data).hexdigest()
    (src / smbpush.SUMS_NAME).write_text("".join(f"{h}  {r}\n" for r, h in sorted(sums.items())))
    smbd.start()
    t = smbpush.SmbTarget(remote, "rec-changed")
    try:
        res = smbpush.push_dir(t, src)
    finally:
        t.close()
    assert res.bytes_resumed == 0 and res.bytes_sent >= len(data)
    _assert_landed(root, "rec-changed", sums)
    assert not [p for p in nas.rglob(smbpush.TEMP_PREFIX + "*")], "the old temp file was left"


def test_a_damaged_cut_recording_is_caught_by_read_back_and_sent_again(resumable):
    """The part kept from before the drop is not trusted: the read-back of the whole file catches a
    damaged one (nothing wrong lands under the final name) and the next push sends it whole."""
    smbd, remote, root, sums, src = resumable
    nas = root / "nas" / "rec-damaged"
    cut = _cut_mid_file(smbd, remote, src, nas, at=4 * 1024 * 1024)
    with open(cut, "r+b") as f:
        f.write(b"\0" * 4096)                              # the NAS lost a block of the kept part
    smbd.start()
    rel = next(r for r in sums if r.endswith("audio.flac"))
    t = smbpush.SmbTarget(remote, "rec-damaged")
    try:
        with pytest.raises(VerifyError, match="read-back differs"):
            smbpush.push_dir(t, src)
        assert not (nas / rel).exists()
        res = smbpush.push_dir(t, src)
    finally:
        t.close()
    assert res.bytes_resumed == 0 and rel in res.sent
    _assert_landed(root, "rec-damaged", sums)


def test_stale_temp_files_from_a_drop_are_removed_on_the_next_push(office):
    smbd, remote, root, sums = office
    t = smbpush.SmbTarget(remote, "rec-t")
    try:
        smbpush.push_dir(t, root / "export")
        folder = root / "nas" / "rec-t"
        session = sorted(p for p in folder.iterdir() if p.is_dir())[0]
        mine = f"{smbpush.TEMP_PREFIX}{socket.gethostname()}-999-dead00-"
        stale = [folder / f"{mine}{smbpush.MANIFEST_NAME}", session / f"{mine}audio.flac"]
        other = folder / f"{smbpush.TEMP_PREFIX}another-host-1-beef00-SHA256SUMS"
        for p in (*stale, other):
            p.write_bytes(b"cut short")
        (root / "export" / sorted(sums)[0]).touch()          # something to send in that folder
        smbpush.push_dir(t, root / "export")
    finally:
        t.close()
    assert not [p for p in stale if p.exists()], "our temp files left by a drop are still there"
    assert other.exists(), "another host's temp file is not ours to remove"
    other.unlink()
    _assert_landed(root, "rec-t", sums)


def test_three_recorders_push_at_once(office):
    smbd, remote, root, sums = office
    code = (
        "import sys, pathlib; from steno_exportd.smb import push as smbpush; from steno_exportd.config import SmbRemote;"
        "r = SmbRemote(name='office', server='127.0.0.1', port=int(sys.argv[1]), share='push',"
        " username=sys.argv[2], password_file=sys.argv[3], timeout=10);"
        "t = smbpush.SmbTarget(r, sys.argv[4]);"
        "res = smbpush.push_with_retries(t, pathlib.Path(sys.argv[5]));"
        "print(len(res.sent))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(remote.port), remote.username,
                               remote.password_file, f"rec-{i}", str(root / "export")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for i in range(3):
        _assert_landed(root, f"rec-{i}", sums)


def test_bandwidth_limit_and_push_remote(office, smb_tmp):
    import dataclasses
    smbd, remote, root, sums = office
    small = make_export_tree(smb_tmp / "small", sessions=1, big=2 * 1024 * 1024)
    cfg = Config(smb=SmbConfig(recorder_folder="rec-bw",
                               remotes=[dataclasses.replace(remote, bandwidth_limit_kbps=1024)]))
    seen = []
    t0 = time.monotonic()
    res = smbpush.push_remote(cfg, "office", smb_tmp / "small", progress=lambda rel, n: seen.append(n))
    elapsed = time.monotonic() - t0
    assert res.bytes_sent >= 2 * 1024 * 1024 and sum(seen) == res.bytes_sent
    assert elapsed >= 1.6                      # ~2.1 MiB at 1 MiB/s
    _assert_landed(root, "rec-bw", small)


def test_recorder_share_and_push_share_on_one_smbd(smb_tmp, smbd_factory):
    """The recorder's read-only share and a push target as two shares of the same smbd."""
    from steno_exportd.samba import share as samba
    from steno_exportd.config import SambaConfig
    from tests.parts.smbdata import connected, read_remote

    (smb_tmp / "nas").mkdir()
    snippet = smb_tmp / "steno-exportd.conf"
    smbd = smbd_factory(include=str(snippet),
                        shares=f"[push]\n   path = {smb_tmp / 'nas'}\n   read only = no\n   force user = root\n")
    smbd.start()
    sums = make_export_tree(smb_tmp / "export", sessions=2)
    samba.apply(SambaConfig(guest_ok=True, export_dir=str(smb_tmp / "export"), snippet_path=str(snippet),
                            reload_command=smbd.reload_command()), enabled=True)
    user = smbd.add_user(PW)
    remote = SmbRemote(name="office", server="127.0.0.1", port=smbd.port, share="push", username=user, timeout=5)
    t = smbpush.SmbTarget(remote, "rec-1", password=PW)
    try:
        assert len(smbpush.push_dir(t, smb_tmp / "export").sent) == len(sums)
        assert smbpush.push_dir(t, smb_tmp / "export").sent == ()
    finally:
        t.close()
    _assert_landed(smb_tmp, "rec-1", sums)
    with connected(smbd.port) as kw:
        assert read_remote("\\\\127.0.0.1\\meetings\\SHA256SUMS", kw) == (smb_tmp / "export" / "SHA256SUMS").read_bytes()


def test_stale_local_sha256sums_does_not_fail_the_push(office):
    smbd, remote, root, sums = office
    rel = sorted(sums)[0]
    (root / "export" / rel).write_bytes(b"changed after SHA256SUMS was written\n")
    t = smbpush.SmbTarget(remote, "rec-s")
    try:
        smbpush.push_dir(t, root / "export")
    finally:
        t.close()
    fresh = hashlib.sha256((root / "export" / rel).read_bytes()).hexdigest()
    assert _on_nas(root, "rec-s")[rel] == fresh
    assert f"{fresh}  {rel}" in (root / "nas" / "rec-s" / "SHA256SUMS").read_text()


def test_encrypted_push_uses_smb3_encryption(office):
    import dataclasses
    smbd, remote, root, sums = office
    t = smbpush.SmbTarget(dataclasses.replace(remote, require_encryption=True), "rec-e")
    try:
        smbpush.push_dir(t, root / "export")
        session = next(iter(next(iter(t._cache.values())).session_table.values()))
        assert session.encrypt_data
    finally:
        t.close()
    _assert_landed(root, "rec-e", sums)


def test_fast_path_still_checks_server_signatures(office):
    """smbwire replaces smbprotocol's response signature check: a wrong key must still be caught."""
    smbd, remote, root, sums = office
    t = smbpush.SmbTarget(remote, "rec-sig")
    try:
        t.connect()
        t.write_bytes("probe.txt", b"hello")
        assert t.read_hash("probe.txt")[0] == 5
        conn = next(iter(t._cache.values()))
        from steno_exportd.smb import wire as smbwire
        assert conn.verify_signature.__func__ is smbwire._verify_signature
        session = next(iter(conn.session_table.values()))
        session.signing_key = bytes(len(session.signing_key))
        with pytest.raises(smbpush.SmbError, match="signature could not be verified") as ei:
            t.read_hash("probe.txt")
    finally:
        t.close()


def test_server_that_stops_answering_fails_the_push_instead_of_hanging(office):
    import dataclasses
    import signal
    smbd, remote, root, sums = office
    manifest = root / "nas" / "rec-h" / smbpush.MANIFEST_NAME
    t = smbpush.SmbTarget(dataclasses.replace(remote, timeout=2), "rec-h")
    errors = []

    def run():
        try:
            smbpush.push_dir(t, root / "export", bandwidth_limit_kbps=2048)
        except Exception as e:
            errors.append(e)

    th = threading.Thread(target=run)
    th.start()
    try:
        parts.wait_for(lambda: manifest.exists() and json.loads(manifest.read_text())["files"],
                           timeout=20, what="first verified files on the NAS")
        smbd.signal_all(signal.SIGSTOP)
        th.join(40)
        if th.is_alive():
            import faulthandler
            faulthandler.dump_traceback(all_threads=True)
        assert not th.is_alive(), "push hung on a server that stopped answering"
    finally:
        smbd.signal_all(signal.SIGCONT)
        th.join(30)
        t.close()
    assert errors and isinstance(errors[0], smbpush.SmbError) and not errors[0].permanent


def test_remote_file_in_use_is_retried_and_named(office):
    """A file another client holds open without sharing: 'in use', retried (not 'unreachable');
    once released, the next run sends it."""
    from tests.parts.smbdata import connected
    smbd, remote, root, sums = office
    t = smbpush.SmbTarget(remote, "rec-lock")
    try:
        smbpush.push_dir(t, root / "export")
        rel = sorted(r for r in sums if r.endswith("transcript.txt"))[0]
        with open(root / "export" / rel, "ab") as f:
            f.write(b"one more line\n")                  # changed locally: to be sent again
        with connected(smbd.port, remote.username, PW) as kw:
            unc = "\\\\127.0.0.1\\push\\rec-lock\\" + rel.replace("/", "\\")
            import smbclient
            with smbclient.open_file(unc, mode="rb", share_access=None, **kw):   # no sharing at all
                sleeps = []
                with pytest.raises(smbpush.SmbError) as ei:
                    smbpush.push_with_retries(t, root / "export", sleep=sleeps.append)
        msg = str(ei.value)
        assert msg == f"rec-lock\\{rel.replace('/', chr(92))} on \\\\127.0.0.1\\push is in use by another program"
        assert "unreachable" not in msg and not ei.value.permanent
        assert sleeps == [2.0, 4.0]                       # retried: 3 attempts
        res = smbpush.push_dir(t, root / "export")       # released: goes through
        assert res.sent == (rel,)
    finally:
        t.close()
    assert _on_nas(root, "rec-lock")[rel] == hashlib.sha256((root / "export" / rel).read_bytes()).hexdigest()
    assert not [p for p in (root / "nas" / "rec-lock").rglob(smbpush.TEMP_PREFIX + "*")]


def _snapshot(base: pathlib.Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(base).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in base.rglob("*") if p.is_file()}


def test_two_recorders_with_one_folder_name_do_not_mix(office, smb_tmp):
    """Same host name (same recorder_folder): the second recorder fails, the first's files untouched."""
    smbd, remote, root, sums = office
    first = smbpush.SmbTarget(remote, "steno", recorder_id="a1" * 16)
    try:
        smbpush.push_dir(first, root / "export")
    finally:
        first.close()
    before = _snapshot(root / "nas" / "steno")
    other = make_export_tree(smb_tmp / "other-export", sessions=2, big=100_000, seed=7)
    second = smbpush.SmbTarget(remote, "steno", recorder_id="b2" * 16)
    sleeps = []
    with pytest.raises(smbpush.SmbError) as ei:
        smbpush.push_with_retries(second, smb_tmp / "other-export", sleep=sleeps.append)
    assert str(ei.value) == (f"folder steno on \\\\127.0.0.1\\push belongs to another recorder "
                             f"({socket.gethostname()}, id a1a1a1a1); set smb.recorder_folder")
    assert ei.value.permanent and sleeps == []
    assert set(other) & set(before)                      # same names, other contents: would have clashed
    assert _snapshot(root / "nas" / "steno") == before    # nothing written, overwritten or added
    _assert_landed(root, "steno", sums)


def test_two_recorders_first_push_at_the_same_moment_one_gets_the_folder(office, smb_tmp, monkeypatch):
    """Both find the new folder unclaimed; the second goes on only after the first has pushed everything.
    The second must still fail before writing a file: its look at the folder is stale by then."""
    smbd, remote, root, sums = office
    other = make_export_tree(smb_tmp / "other-export", sessions=2, big=100_000, seed=7)
    assert set(other) & set(sums)                          # same names, other contents
    a_done, b_looked = threading.Event(), threading.Event()
    real_load = smbpush._load_manifest

    def load(target):
        out = real_load(target)
        if target.recorder_id.startswith("b2") and not b_looked.is_set():
            b_looked.set()                                  # B has seen the folder unclaimed...
            assert a_done.wait(60)                          # ...and is held there while A pushes
        return out
    monkeypatch.setattr(smbpush, "_load_manifest", load)
    results: dict = {}

    def push(name, rid, src):
        t = smbpush.SmbTarget(remote, "steno", recorder_id=rid)
        try:
            if name == "a":
                assert b_looked.wait(60)
            results[name] = smbpush.push_dir(t, src)
        except Exception as e:  # noqa: BLE001 - the outcome is the test's subject
            results[name] = e
        finally:
            t.close()
            if name == "a":
                a_done.set()
    threads = [threading.Thread(target=push, args=("b", "b2" * 16, smb_tmp / "other-export")),
               threading.Thread(target=push, args=("a", "a1" * 16, root / "export"))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert isinstance(results["a"], smbpush.PushResult), results["a"]
    assert isinstance(results["b"], smbpush.SmbError), results["b"]
    assert "belongs to another recorder" in str(results["b"]) and "id a1a1a1a1" in str(results["b"])
    _assert_landed(root, "steno", sums)                    # A's files, none of B's
    manifest = json.loads((root / "nas" / "steno" / smbpush.MANIFEST_NAME).read_text())
    assert manifest["recorder_id"] == "a1" * 16


def test_an_unreadable_claim_file_is_a_clear_error_and_nothing_is_written(office):
    smbd, remote, root, sums = office
    folder = root / "nas" / "rec-claim"
    folder.mkdir()
    (folder / smbpush.CLAIM_NAME).write_text("{not json")
    t = smbpush.SmbTarget(remote, "rec-claim", recorder_id="d4" * 16)
    try:
        with pytest.raises(smbpush.SmbError) as ei:
            smbpush.push_dir(t, root / "export")
    finally:
        t.close()
    assert str(ei.value) == ("folder rec-claim on \\\\127.0.0.1\\push: .steno-push-owner.json is unreadable, so the "
                             "owner of the folder is unknown; delete that file if this recorder owns the folder")
    assert ei.value.permanent
    assert sorted(p.name for p in folder.iterdir()) == [smbpush.CLAIM_NAME]
    (folder / smbpush.CLAIM_NAME).unlink()              # the admin's fix: the next push claims and lands
    t = smbpush.SmbTarget(remote, "rec-claim", recorder_id="d4" * 16)
    try:
        smbpush.push_dir(t, root / "export")
    finally:
        t.close()
    _assert_landed(root, "rec-claim", sums)
    assert json.loads((folder / smbpush.CLAIM_NAME).read_text())["recorder_id"] == "d4" * 16


def test_older_manifest_without_recorder_id_is_adopted(office):
    smbd, remote, root, sums = office
    old = smbpush.SmbTarget(remote, "rec-old")                 # as older versions wrote it: no id
    try:
        smbpush.push_dir(old, root / "export")
    finally:
        old.close()
    manifest = root / "nas" / "rec-old" / smbpush.MANIFEST_NAME
    assert "recorder_id" not in json.loads(manifest.read_text())
    t = smbpush.SmbTarget(remote, "rec-old", recorder_id="c3" * 16)
    try:
        res = smbpush.push_dir(t, root / "export")
    finally:
        t.close()
    assert res.sent == () and set(sums) <= set(res.skipped)   # adopted: nothing sent again
    assert json.loads(manifest.read_text())["recorder_id"] == "c3" * 16
    _assert_landed(root, "rec-old", sums)


def test_recorder_id_from_machine_id_or_kept_in_state_dir(tmp_path):
    mid = tmp_path / "machine-id"
    mid.write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    a = smbpush.recorder_id(str(tmp_path / "state"), str(mid))
    assert a == smbpush.recorder_id(str(tmp_path / "elsewhere"), str(mid)) and len(a) == 32
    assert "3d1219c7" not in a                                  # the machine id itself is not published
    assert not (tmp_path / "state").exists()
    missing = str(tmp_path / "no-machine-id")
    b = smbpush.recorder_id(str(tmp_path / "state"), missing)
    assert b and b != a and b == smbpush.recorder_id(str(tmp_path / "state"), missing)
    assert (tmp_path / "state" / smbpush.RECORDER_ID_FILE).read_text().strip() == b
    assert smbpush.recorder_id(str(tmp_path / "state2"), missing) != b
    from steno_exportd.config import StateConfig
    cfg = Config(state=StateConfig(dir=str(tmp_path / "state")),
                 smb=SmbConfig(remotes=[SmbRemote(name="office", server="nas")]))
    assert smbpush.target_for(cfg, "smb:office").recorder_id == smbpush.recorder_id(str(tmp_path / "state"))
