"""`verify` checks a folder, a .zip and a .tar.gz alike against the SHA256SUMS and manifest inside."""
from __future__ import annotations

import io
import json
import tarfile
import zipfile

import pytest

from steno_exportd import cli, config
from steno_exportd.engine.export import SimpleSpec, run_export
from steno_exportd.engine.options import ExportOptions
from steno_exportd.engine.verify import verify_target
from tests.fakes import library


def _export(tmp_path, name: str):
    cfg = config.from_dict({"recorder": {"db_path": str(tmp_path / "rec" / "db.sqlite")}})
    target = tmp_path / name
    if "." not in name:
        target.mkdir()
    res = run_export(library(tmp_path, 2), SimpleSpec(str(target), (1, 2), ("txt", "json", "audio"),
                                                      ExportOptions()), cfg)
    assert all(r.ok for r in res), res
    return target


@pytest.mark.parametrize("name", ["out", "x.zip", "x.tar.gz"])
def test_verify_accepts_folders_and_archives(tmp_path, name, capsys):
    target = _export(tmp_path, name)
    rep = verify_target(str(target))
    assert rep.ok and rep.ok_count == 6 and not rep.extra, rep.to_json()
    assert cli.main(["verify", str(target)]) == 0
    assert "6 files verified, 0 changed, 0 missing" in capsys.readouterr().out


def _rewrite_zip(src, dst, change):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)


def test_verify_zip_finds_changed_missing_and_extra(tmp_path, capsys):
    target = _export(tmp_path, "x.zip")
    bad = tmp_path / "bad.zip"

    def change(name, data):
        if name.endswith("transcript.txt") and "Meeting 1" in name:
            return data + b"tampered"
        if name.endswith("session.json") and "Meeting 2" in name:
            return None
        return data
    _rewrite_zip(target, bad, change)
    with zipfile.ZipFile(bad, "a") as z:
        z.writestr(next(n for n in z.namelist() if n.endswith("/audio.wav")).rsplit("/", 1)[0] + "/notes.txt", "x")
    rep = verify_target(str(bad))
    assert not rep.ok
    assert len(rep.changed) == 1 and rep.changed[0].endswith("transcript.txt")
    assert len(rep.missing) == 1 and rep.missing[0].endswith("session.json")
    assert len(rep.extra) == 1 and rep.extra[0].endswith("notes.txt")
    assert cli.main(["verify", str(bad), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False


def test_verify_tar_gz_finds_a_changed_member(tmp_path):
    target = _export(tmp_path, "x.tar.gz")
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(target) as tin, tarfile.open(bad, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None
            if data is not None and m.name.endswith("audio.wav") and "Meeting 1" in m.name:
                data = bytes([data[0] ^ 1]) + data[1:]
            if data is not None:
                m.size = len(data)
                tout.addfile(m, io.BytesIO(data))
            else:
                tout.addfile(m)
    rep = verify_target(str(bad))
    assert not rep.ok and len(rep.changed) == 1 and rep.changed[0].endswith("audio.wav")


def test_verify_hostile_archives_are_clear_errors(tmp_path, capsys):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 not really")
    assert cli.main(["verify", str(junk)]) == 1
    assert "verify failed" in capsys.readouterr().err
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as t:
        ti = tarfile.TarInfo("SilentSteno/../../etc/passwd")
        ti.size = 1
        t.addfile(ti, io.BytesIO(b"x"))
        link = tarfile.TarInfo("SilentSteno/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        t.addfile(link)
    rep = verify_target(str(evil))
    assert not rep.ok and rep.problems
    assert not (tmp_path / "etc").exists()



def test_an_archive_whose_manifest_unpacks_to_gigabytes_is_a_clear_problem(tmp_path):
    """A .zip handed to an admin to `steno-exportd verify`: its manifest.json and SHA256SUMS compress a thousand
    times (spaces). Each was unpacked whole into memory (1 GB of spaces is 1 GB); now reading stops at the
    bound a manifest read from any target has, and the report says so."""
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for name in ("SilentSteno/manifest.json", "SilentSteno/SHA256SUMS"):
            with z.open(name, "w", force_zip64=True) as f:
                for _ in range(24):
                    f.write(b" " * (1 << 20))
    assert bomb.stat().st_size < 1 << 20
    rep = verify_target(str(bomb))
    assert not rep.ok
    assert rep.problems == ["manifest.json is larger than 20 MiB",
                            "SHA256SUMS is larger than 20 MiB"], rep.problems


def test_a_manifest_naming_a_file_outside_its_folder_is_a_problem_not_a_failed_verify(tmp_path):
    """A stick's author edits manifest.json so that a session lists '../manifest.json' among its files: verify
    failed with 'bad target path' (the export's pruning would too); such a name is not ours, like a folder that is
    not a plain name."""
    out = _export(tmp_path, "out")
    path = out / "SilentSteno" / "manifest.json"
    m = json.loads(path.read_text())
    session = next(iter(m["sessions"].values()))
    session["files"]["../manifest.json"] = dict(next(iter(session["files"].values())))
    path.write_text(json.dumps(m))
    rep = verify_target(str(out))
    assert rep.ok, rep.problems



def _stamps(out) -> dict[str, tuple[int, int]]:
    """rel -> (mtime_ns, inode) of every session file (what sending it again changes)."""
    root = out / "SilentSteno"
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_ino) for p in root.rglob("*")
            if p.is_file() and p.parent != root}


def test_a_verify_job_after_an_export_without_verify_spares_the_next_verifying_export_the_files_it_found_good(
        tmp_path, capsys):
    """An export with verify off marks its files "unverified" in the manifest, so that an export that verifies
    sends them again rather than trusting them. The admin ran `steno-exportd verify` on that folder: every file read
    back and found good, yet the next verifying export sent every file again whole (each session written, every
    file's mtime new). Now the verify records in the manifest what it found: the files it read back good are no
    longer unverified, and the next verifying export skips them; a file it found changed stays flagged and is sent
    again (with its session's documents, rendered anew; not its recording)."""
    cfg = config.from_dict({"recorder": {"db_path": str(tmp_path / "rec" / "db.sqlite")}})
    lib = library(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()

    def export(verify: bool):
        return run_export(lib, SimpleSpec(str(out), (1, 2), ("txt", "json", "audio"), ExportOptions(verify=verify)),
                          cfg)
    assert all(r.ok and not r.skipped for r in export(False))
    manifest = out / "SilentSteno" / "manifest.json"
    assert all(f.get("unverified") for s in json.loads(manifest.read_text())["sessions"].values()
               for f in s["files"].values())
    txt = sorted((out / "SilentSteno").rglob("transcript.txt"))[0]
    changed = txt.relative_to(out / "SilentSteno").as_posix()
    txt.write_bytes(txt.read_bytes() + b"changed on the stick\n")
    assert cli.main(["verify", str(out)]) == 1
    said = capsys.readouterr().out
    assert f"CHANGED  {changed}" in said and "5 files verified, 1 changed, 0 missing" in said, said
    before = _stamps(out)
    res = export(True)
    assert all(r.ok for r in res), [(r.error, r.files) for r in res]
    sent = {rel for rel, ns in _stamps(out).items() if before.get(rel) != ns}
    # the changed file's session alone, its recording not sent again (its documents are rendered anew with it)
    assert changed in sent and {rel.split("/")[0] for rel in sent} == {changed.split("/")[0]}, sorted(sent)
    assert not [rel for rel in sent if rel.endswith(".wav")], sorted(sent)
    assert [r.skipped for r in res] == [False, True] or [r.skipped for r in res] == [True, False], res
    assert verify_target(str(out)).ok
    before = _stamps(out)
    assert all(r.ok and r.skipped for r in export(True))    # nothing left to send
    assert _stamps(out) == before


def test_a_verify_recording_what_it_found_while_an_export_saves_loses_none_of_the_exports_sessions(tmp_path):
    """`steno-exportd verify` records what it found by rewriting the manifest whole (read again, changed, saved), as
    an export does with its own copy at each save. Run while an export writes to the same folder, an export's save
    between the verify's read and its save was lost: the session it recorded vanished from manifest.json and
    SHA256SUMS, and the next export wrote that meeting again beside its own folder, as "<folder> (2)". Raced for real:
    the verify reads the manifest while the export (in a thread) has a session to save, which it saves then; the
    verify's save comes last. Now the folder is held by the export's run (Target.held) and the verify records
    nothing while it is (it says so); every session the export wrote is in its manifest."""
    import threading
    from steno_exportd.engine import manifest as mf
    cfg = config.from_dict({"recorder": {"db_path": str(tmp_path / "rec" / "db.sqlite")}})
    lib = library(tmp_path, 3)
    out = tmp_path / "out"
    out.mkdir()
    assert all(r.ok for r in run_export(lib, SimpleSpec(str(out), (1, 2), ("txt", "json"),
                                                        ExportOptions(verify=False)), cfg))
    verify_read, export_done = threading.Event(), threading.Event()
    exporting = threading.Event()
    real_read, real_save = mf.read, mf.save

    def read(t, root, *a, **kw):
        got = real_read(t, root, *a, **kw)
        if threading.current_thread() is threading.main_thread() and exporting.is_set():   # the verify's
            verify_read.set()
        return got

    def save(t, root, m, **kw):
        if threading.current_thread() is threading.main_thread():          # the verify's: after the export's
            export_done.wait(30)
        else:                                                               # the export's: after the verify read
            exporting.set()
            verify_read.wait(3)         # (held: the verify reads nothing, and the export saves after 3 s)
        real_save(t, root, m, **kw)
    results = []

    def export() -> None:
        try:
            results.extend(run_export(lib, SimpleSpec(str(out), (3,), ("txt", "json"), ExportOptions(verify=False)),
                                      cfg))
        finally:
            export_done.set()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mf, "read", read)
        mp.setattr(mf, "save", save)
        job = threading.Thread(target=export)
        job.start()
        assert exporting.wait(30)
        rep = verify_target(str(out), mark=True)
        job.join(60)
    assert [r.ok for r in results] == [True], results
    folders = {s["folder"] for s in json.loads((out / "SilentSteno" / "manifest.json").read_text())["sessions"]
               .values()}
    on_disk = {p.name for p in (out / "SilentSteno").iterdir() if p.is_dir()}
    assert len(folders) == 3 and folders == on_disk, (folders, on_disk)
    assert any("an export is writing to this folder" in n for n in rep.notes), rep.notes
    assert verify_target(str(out)).ok
    # run again once the export has ended, the verify records it: the next verifying export sends nothing
    assert verify_target(str(out), mark=True).notes == []
    res = run_export(lib, SimpleSpec(str(out), (1, 2, 3), ("txt", "json"), ExportOptions(verify=True)), cfg)
    assert [(r.ok, r.skipped) for r in res] == [(True, True)] * 3, [(r.ok, r.skipped, r.error) for r in res]


def test_a_file_written_again_after_the_verify_read_it_back_keeps_its_unverified_mark(tmp_path, monkeypatch):
    """Between a verify's read-back of a file and its record of what it found, an export without verify wrote that
    file again (the same bytes: its documents rendered anew) and recorded it "unverified", with the same sha256 and
    size. The verify took the entry for the one it had read back (it compared the sha256 alone) and cleared the
    mark of a write nobody read back: a bad write then passed for verified, skipped by every later verifying
    export. Now an entry changed in any field since the verify read it (its time of writing at least) is left as
    the export wrote it. The rewrite is the export's save, made on the folder's manifest.json where the verify's
    read-back ends."""
    from steno_exportd.engine import manifest as mf
    from steno_exportd.engine import verify as verify_mod
    cfg = config.from_dict({"recorder": {"db_path": str(tmp_path / "rec" / "db.sqlite")}})
    lib = library(tmp_path, 1)
    out = tmp_path / "out"
    out.mkdir()
    assert all(r.ok for r in run_export(lib, SimpleSpec(str(out), (1,), ("txt", "json"),
                                                        ExportOptions(verify=False)), cfg))
    path = out / "SilentSteno" / "manifest.json"
    real_incomplete, rewritten = verify_mod._incomplete, []

    def incomplete(t, root, m):          # (after every read-back, before the record)
        doc = json.loads(path.read_text())
        (s,) = doc["sessions"].values()
        f = s["files"]["transcript.txt"]
        f["exported_at"] = "2099-01-01T00:00:00Z"          # written again, as a save records it: not read back
        rewritten.append(f"{s['folder']}/transcript.txt")
        path.write_text(json.dumps(doc))
        return real_incomplete(t, root, m)
    monkeypatch.setattr(verify_mod, "_incomplete", incomplete)
    rep = verify_target(str(out), mark=True)
    assert rep.ok, rep
    files = {f"{s['folder']}/{n}": f for s in json.loads(path.read_text())["sessions"].values()
             for n, f in s["files"].items()}
    assert files[rewritten[0]].get("unverified"), files[rewritten[0]]
    assert not [rel for rel, f in files.items() if rel != rewritten[0] and f.get("unverified")], files
