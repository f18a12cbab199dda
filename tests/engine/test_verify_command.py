"""`steno-exportd verify` as an admin runs it, on a real recorder's export: the lines it prints (CHANGED, NOTE, ...),
its exit code, and what it records in manifest.json (or, with --no-mark, does not)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from steno_exportd import events as ev
from steno_exportd.core import Core
from steno_exportd.engine.targets import TEMP_PREFIX, DirectoryTarget
from tests.configs import make_config

END = "; checked SilentSteno/\n"      # the summary line's end: the root folder checked (export.root_folder)
NOT_RECORDED = ("NOTE     could not record in the manifest that the files were verified ({why}): the next export that "
                "verifies sends again those a job without verify wrote")


def steno(*argv: str, cwd: Path, default_config: Path | None = None) -> tuple[int, str, str]:
    """The program as a person runs it: (exit code, what it printed, its errors). ``default_config``: the config
    file it reads without --config (else a test's folder's, which does not exist: the defaults), never the
    machine's /etc/steno-exportd/config.toml."""
    config = default_config or cwd / "etc" / "steno-exportd" / "config.toml"
    p = subprocess.run([sys.executable, "-m", "steno_exportd", *argv], capture_output=True, text=True, cwd=cwd,
                       env=dict(os.environ, PYTHONPATH=os.getcwd(), STENO_CONFIG=str(config)), timeout=120)
    return p.returncode, p.stdout, p.stderr


def marks(out: Path) -> dict[str, dict]:
    """manifest.json's files, by 'folder/name'."""
    doc = json.loads((out / "SilentSteno" / "manifest.json").read_text())
    return {f"{s['folder']}/{n}": f for s in doc["sessions"].values() for n, f in s["files"].items()}


def unverified_export(demo_library, tmp_path: Path, out: Path, sessions: str = "all") -> Path:
    """A real recorder's sessions exported to ``out`` by `steno-exportd export --no-verify`: every file marked
    unverified. The database's path."""
    db = Path(demo_library(tmp_path / "rec", sessions=4))
    rc, said, err = steno("export", "--db", str(db), "--to", str(out), "--sessions", sessions,
                          "--formats", "txt,json,audio", "--no-verify", cwd=tmp_path)
    assert rc == 0, (said, err)
    assert marks(out) and all(f.get("unverified") for f in marks(out).values())
    return db


class _Writing(DirectoryTarget):
    """The daemon's export to a folder, stopped at its first session folder (it holds the folder then, as it does
    while it writes) until the test lets it go."""

    def __init__(self, root: Path, go: threading.Event, holding: threading.Event) -> None:
        super().__init__(root)
        self._go, self._holding = go, holding

    def mkdir(self, rel: str) -> None:
        if "/" in rel:
            self._holding.set()
            self._go.wait(60)
        super().mkdir(rel)


async def test_a_verify_while_the_daemon_exports_to_the_folder_says_it_recorded_nothing(tmp_path, demo_library):
    """`steno-exportd verify` of a folder a job without verify wrote, while the daemon's export writes more into it:
    every file checks out, and the verify cannot record that (the export holds the folder). It says so in a NOTE line
    (also in --json's notes) and exits 0, and manifest.json is as the export left it. Run again once the export has
    ended, it records it: no NOTE, and no file is left marked unverified."""
    out = tmp_path / "stick"
    out.mkdir()
    db = await asyncio.to_thread(unverified_export, demo_library, tmp_path, out, "1,2")
    before = (out / "SilentSteno" / "manifest.json").read_bytes()
    files = len(marks(out))
    core = Core(make_config(tmp_path, **{"recorder.db_path": str(db)}))
    await core.start()
    go, holding = threading.Event(), threading.Event()
    try:
        job = await core.export_sessions([3], ["txt", "json"], _Writing(out, go, holding), trusted=True)
        assert await asyncio.to_thread(holding.wait, 30)
        rc, said, err = await asyncio.to_thread(steno, "verify", str(out), cwd=tmp_path)
        rc_json, said_json, _ = await asyncio.to_thread(steno, "verify", str(out), "--json", cwd=tmp_path)
        assert (out / "SilentSteno" / "manifest.json").read_bytes() == before
        go.set()
        assert (await core.jobs.wait(job.id, 60)).state == ev.JobState.COMPLETED
    finally:
        go.set()
        await core.stop()
    why = "an export is writing to this folder now; verify again once it has ended"
    assert (rc, said, err) == (0, f"{NOT_RECORDED.format(why=why)}\n{files} files verified, 0 changed, 0 missing, "
                                  f"0 extra{END}", ""), (rc, said, err)
    rep = json.loads(said_json)
    assert rc_json == 0 and rep["ok"] and rep["verified"] == files, rep
    assert rep["notes"] == [NOT_RECORDED.format(why=why).removeprefix("NOTE     ")], rep["notes"]
    rc, said, err = await asyncio.to_thread(steno, "verify", str(out), cwd=tmp_path)
    assert (rc, said, err) == (0, f"{len(marks(out))} files verified, 0 changed, 0 missing, 0 extra{END}", "")
    assert not [rel for rel, f in marks(out).items() if f.get("unverified")], marks(out)


def test_no_mark_prints_what_it_found_and_writes_nothing(tmp_path, demo_library):
    """`verify --no-mark` on a stick where a transcript was changed: it says CHANGED and exits 1, like a verify that
    marks, but manifest.json and SHA256SUMS are not written (the same bytes, the same times, no temp file left), so
    the files stay unverified and the changed one unflagged. Without --no-mark the changed file is flagged bad and
    the others lose their unverified mark: the next export sends the changed file's session again, and only it."""
    out = tmp_path / "stick"
    out.mkdir()
    db = unverified_export(demo_library, tmp_path, out)
    root = out / "SilentSteno"
    txt = sorted(root.rglob("transcript.txt"))[0]
    changed = txt.relative_to(root).as_posix()
    txt.write_bytes(txt.read_bytes() + b"changed on the stick\n")
    kept = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (root / "manifest.json", root / "SHA256SUMS")}
    listing = sorted(os.listdir(root))
    files = len(marks(out))
    found = (f"CHANGED  {changed}\n{files - 1} files verified, 1 changed, 0 missing, 0 extra{END}")
    assert steno("verify", str(out), "--no-mark", cwd=tmp_path) == (1, found, "")
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (root / "manifest.json", root / "SHA256SUMS")} \
        == kept
    assert sorted(os.listdir(root)) == listing and not [p for p in root.rglob(f"{TEMP_PREFIX}*")]
    assert all(f.get("unverified") and not f.get("bad") for f in marks(out).values())

    assert steno("verify", str(out), cwd=tmp_path) == (1, found, "")
    after = marks(out)
    assert after[changed].get("bad") is True, after[changed]
    assert not [rel for rel, f in after.items() if rel != changed and (f.get("unverified") or f.get("bad"))], after
    rc, said, err = steno("export", "--db", str(db), "--to", str(out), "--sessions", "all", "--formats",
                          "txt,json,audio", cwd=tmp_path)
    sessions = len(json.loads((root / "manifest.json").read_text())["sessions"])
    assert rc == 0 and f"1 exported, {sessions - 1} already there, 0 failed" in said, (said, err)
    assert steno("verify", str(out), cwd=tmp_path) == (0, f"{files} files verified, 0 changed, 0 missing, 0 extra{END}",
                                                       "")


def test_a_verify_of_a_read_only_stick_says_it_recorded_nothing(tmp_path, demo_library):
    """A stick mounted read-only (its write-protect switch, a filesystem the kernel would not write): every file
    checks out, nothing can be recorded; a NOTE says why and the exit code is 0. A changed file found there is a
    PROBLEM line (it could not be flagged for the next export) and exit code 1."""
    from tests.parts.loopfs import loop_fs, mount, umount
    with loop_fs(tmp_path, "ext4", size_mb=64) as (mnt, dev, _img):
        unverified_export(demo_library, tmp_path, mnt)
        files = len(marks(mnt))
        txt = sorted((mnt / "SilentSteno").rglob("transcript.txt"))[0]
        changed = txt.relative_to(mnt / "SilentSteno").as_posix()
        umount(mnt)
        mount(dev, mnt, "ext4", ro=True)
        before = (mnt / "SilentSteno" / "manifest.json").read_bytes()
        why = "target is read-only (SilentSteno/SHA256SUMS)"
        assert steno("verify", str(mnt), cwd=tmp_path) == (
            0, f"{NOT_RECORDED.format(why=why)}\n{files} files verified, 0 changed, 0 missing, 0 extra{END}", "")
        umount(mnt)
        mount(dev, mnt, "ext4")
        txt.write_bytes(txt.read_bytes() + b"changed\n")
        umount(mnt)
        mount(dev, mnt, "ext4", ro=True)
        assert steno("verify", str(mnt), cwd=tmp_path) == (
            1, f"CHANGED  {changed}\nPROBLEM  could not flag changed files in the manifest: {why}\n"
               f"{files - 1} files verified, 1 changed, 0 missing, 0 extra{END}", "")
        assert (mnt / "SilentSteno" / "manifest.json").read_bytes() == before


HOSTILE = {"\x1b]2;owned\x07\x1b[2J": "\\x1b]2;owned\\x07\\x1b[2J",      # name -> as verify prints it
           "notes\nNOTE     every file checks out": "notes\\nNOTE     every file checks out",
           "\u202etxt.exe": "\\u202etxt.exe"}


def test_names_a_sticks_author_chose_reach_the_terminal_without_their_escapes(tmp_path, demo_library):
    """A stick is anyone's: its author can name a file in a session folder with a terminal's escape sequences (a
    window title set, the screen cleared), a line break (a line of verify's own forged: 'NOTE every file checks
    out') or a right-to-left override. The EXTRA lines printed them as they were, and the terminal ran them. Each
    name is now one line of visible characters, its controls shown as escapes (\\x1b), on every line verify prints;
    --json says them exactly (escaped by JSON)."""
    out = tmp_path / "stick"
    out.mkdir()
    unverified_export(demo_library, tmp_path, out)
    folder = sorted(p for p in (out / "SilentSteno").iterdir() if p.is_dir())[0]
    for name in HOSTILE:
        (folder / name).write_text("the stick's author's\n")
    rc, said, err = steno("verify", str(out), "--no-mark", cwd=tmp_path)
    files = len(marks(out))
    assert (rc, err) == (0, ""), (rc, said, err)
    assert said.splitlines() == [f"EXTRA    {folder.name}/{HOSTILE[n]}" for n in sorted(HOSTILE)] + \
        [f"{files} files verified, 0 changed, 0 missing, 3 extra{END.rstrip()}"], said
    assert not [c for c in said if c != "\n" and not c.isprintable()], said
    rc, said, _ = steno("verify", str(out), "--no-mark", "--json", cwd=tmp_path)
    assert rc == 0 and sorted(json.loads(said)["extra"]) == sorted(f"{folder.name}/{n}" for n in HOSTILE)


def test_verify_checks_the_root_folder_the_daemons_config_names(tmp_path, demo_library):
    """The daemon exports into export.root_folder of its config ('Meetings' here). `steno-exportd verify DIR`
    looked for SilentSteno/ whatever the config said, with or without --config: 'verify failed: no SilentSteno/
    folder'. It reads the config the daemon reads (--config, else the default file) and says which root folder it
    checked; --root-folder still names another."""
    cfg = tmp_path / "config.toml"
    cfg.write_text('[export]\nroot_folder = "Meetings"\n')
    out = tmp_path / "stick"
    out.mkdir()
    db = Path(demo_library(tmp_path / "rec", sessions=2))
    rc, said, err = steno("--config", str(cfg), "export", "--db", str(db), "--to", str(out), "--sessions", "all",
                          "--formats", "txt,json", cwd=tmp_path)
    assert rc == 0 and (out / "Meetings" / "manifest.json").is_file(), (said, err)
    files = sum(len(s["files"]) for s in json.loads((out / "Meetings" / "manifest.json").read_text())["sessions"]
                .values())
    found = f"{files} files verified, 0 changed, 0 missing, 0 extra; checked Meetings/\n"
    assert steno("--config", str(cfg), "verify", str(out), cwd=tmp_path) == (0, found, "")
    # the config the daemon reads without --config (/etc/steno-exportd/config.toml; the test's own here)
    assert steno("verify", str(out), cwd=tmp_path, default_config=cfg) == (0, found, "")
    rc, said, _ = steno("verify", str(out), "--json", cwd=tmp_path, default_config=cfg)
    rep = json.loads(said)
    assert (rc, rep["root"], rep["root_from"]) == (0, "Meetings", f"export.root_folder of {cfg}"), rep
    rc, said, err = steno("verify", str(out), "--root-folder", "SilentSteno", cwd=tmp_path)
    assert (rc, said) == (1, "") and err.startswith("verify failed: no SilentSteno/ folder on "), err


def test_a_verify_while_another_verify_records_says_so(tmp_path, demo_library):
    """Two verifies of one folder: while one records what it found in the manifest (it holds the folder, as every
    verify that records does), the other's NOTE said 'an export is writing to this folder now', which no export
    was. It says another verify is recording (once it has waited VERIFY_WAIT for it: this one never lets go)."""
    out = tmp_path / "stick"
    out.mkdir()
    unverified_export(demo_library, tmp_path, out, "1,2")
    files = len(marks(out))
    t = DirectoryTarget(out)
    with t.held("", wait=False) as one, t.held("SilentSteno", wait=False) as two:    # as a verify recording holds
        assert one and two
        rc, said, err = steno("verify", str(out), cwd=tmp_path)
    why = ("another verify of this folder is recording what it found in the manifest now; verify again once it has "
           "ended")
    assert (rc, said, err) == (0, f"{NOT_RECORDED.format(why=why)}\n{files} files verified, 0 changed, 0 missing, "
                                  f"0 extra{END}", ""), (rc, said, err)


def test_two_verifies_of_one_folder_at_once_both_record_what_they_found(tmp_path, demo_library):
    """Two verifies of one folder at once, each recording what it found: one's look at who holds the folder (a
    moment) or its save (milliseconds) made the other's save give up at once, each saying 'another verify is
    recording', and often neither recorded. A verify waits for another's save a bounded while (VERIFY_WAIT): every
    file is recorded verified, and neither says it could not record."""
    from steno_exportd.engine.verify import verify_target

    out = tmp_path / "stick"
    out.mkdir()
    unverified_export(demo_library, tmp_path, out, "1,2")
    root = out / "SilentSteno"
    saved = {n: (root / n).read_bytes() for n in ("manifest.json", "SHA256SUMS")}
    rounds, lost, unrecorded = 20, 0, 0
    for _ in range(rounds):
        for n, data in saved.items():           # unverified again: each round both have something to record
            (root / n).write_bytes(data)
        start = threading.Barrier(2)
        reps: list = []

        def one() -> None:
            start.wait(30)
            reps.append(verify_target(str(out), "SilentSteno", mark=True))
        both = [threading.Thread(target=one) for _ in range(2)]
        for th in both:
            th.start()
        for th in both:
            th.join(120)
        assert len(reps) == 2 and all(r.ok and r.ok_count == len(marks(out)) for r in reps), [r.to_json() for r in reps]
        lost += sum(1 for r in reps for n in r.notes if "could not record" in n)
        unrecorded += any(f.get("unverified") for f in marks(out).values())
    assert (lost, unrecorded) == (0, 0), (lost, unrecorded, rounds)


class _Saving(DirectoryTarget):
    """The daemon's export to a folder, stopped when it has put its files' new versions under their names and is
    about to record them in the manifest (SHA256SUMS is saved first), until the test lets it go."""

    def __init__(self, root: Path, go: threading.Event, holding: threading.Event) -> None:
        super().__init__(root)
        self._go, self._holding = go, holding

    def open_write(self, rel: str, *, resume: str | None = None):
        if rel == "SilentSteno/SHA256SUMS" and not self._holding.is_set():
            self._holding.set()
            self._go.wait(60)
        return super().open_write(rel, resume=resume)


def test_a_verify_while_an_export_rewrites_files_says_the_folder_is_being_written(tmp_path, demo_library):
    """A session exported, then exported again after the admin set another render.time_zone: the export puts each
    file's new version in place, then records them in the manifest. `steno-exportd verify` in between said CHANGED
    for each, and (marking) flagged them bad, as if the stick had damaged them. It says the folder is being written
    (the export holds its lock), no CHANGED line, exit code 75, and flags nothing; once the export has ended every
    file checks out."""
    import hashlib

    from steno_exportd.engine.export import SimpleSpec, run_export
    from steno_exportd.engine.options import ExportOptions
    from steno_exportd.library import Library
    out = tmp_path / "stick"
    out.mkdir()
    db = Path(demo_library(tmp_path / "rec", sessions=1))
    first = tmp_path / "first.toml"
    first.write_text('[render]\ntime_zone = "UTC"\n')
    rc, said, err = steno("--config", str(first), "export", "--db", str(db), "--to", str(out), "--sessions", "1",
                          "--formats", "txt,html,json", cwd=tmp_path)
    assert rc == 0, (said, err)
    files = len(marks(out))
    cfg = make_config(tmp_path, **{"recorder.db_path": str(db), "render.time_zone": "Pacific/Auckland"})
    go, holding = threading.Event(), threading.Event()
    ran: list = []
    export = threading.Thread(target=lambda: ran.append(run_export(
        Library.from_config(cfg), SimpleSpec(_Saving(out, go, holding), (1,), ("txt", "html", "json"),
                                             ExportOptions()), cfg)), daemon=True)
    export.start()
    try:
        assert holding.wait(60)
        rewritten = sorted(rel for rel, f in marks(out).items()
                           if hashlib.sha256((out / "SilentSteno" / rel).read_bytes()).hexdigest() != f["sha256"])
        rc, said, err = steno("verify", str(out), cwd=tmp_path)
        rc_json, said_json, _ = steno("verify", str(out), "--json", cwd=tmp_path)
        flagged = [rel for rel, f in marks(out).items() if f.get("bad")]
    finally:
        go.set()
        export.join(60)
    assert rewritten, "the second export rewrote no file: nothing for a verify to misjudge"
    busy = ("BUSY     the folder is being written: an export is writing to it now (it holds the folder's lock while "
            f"it runs), and files that did not match its manifest ({len(rewritten)} changed) may be ones it is "
            "writing; they are not judged: verify again once it has ended")
    assert (rc, err) == (75, "") and "CHANGED" not in said, (rc, said, err)
    assert said == f"{busy}\n{files - len(rewritten)} files verified, 0 changed, 0 missing, 0 extra{END}", said
    rep = json.loads(said_json)
    assert rc_json == 75 and rep["changed"] == [] and not rep["ok"] and rep["busy"] == busy[9:], rep
    assert flagged == [], f"files the export was writing were flagged bad: {flagged}"
    assert ran and all(r.ok for r in ran[0]), ran
    assert steno("verify", str(out), cwd=tmp_path) == (0, f"{files} files verified, 0 changed, 0 missing, 0 extra"
                                                          f"{END}", "")


def test_a_config_verify_cannot_load_says_how_to_verify_without_it(tmp_path, demo_library):
    """The daemon's config has a key it refuses (a typo), or cannot be read (a folder under its name): verify
    stopped at 'verify failed: invalid configuration ...' with no way on for an admin who only wants a stick
    checked. It says what is wrong with the config, on one line, and that --root-folder verifies without it; with
    --root-folder it verifies."""
    out = tmp_path / "stick"
    out.mkdir()
    unverified_export(demo_library, tmp_path, out, "1")
    files = len(marks(out))
    typo = tmp_path / "typo.toml"
    typo.write_text('[export]\nroot_foldr = "Meetings"\n')
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    hint = " (pass --root-folder NAME to verify without the config)\n"
    for cfg, why in ((typo, "export.root_foldr"), (folder, "cannot read")):
        for how in ({"default_config": cfg}, {"argv": ("--config", str(cfg))}):
            rc, said, err = steno(*how.get("argv", ()), "verify", str(out), "--no-mark", cwd=tmp_path,
                                  default_config=how.get("default_config"))
            assert (rc, said) == (1, "") and err.startswith(f"verify failed: invalid configuration in {cfg}: ") \
                and why in err and err.endswith(hint) and err.count("\n") == 1, (cfg, how, err)
        assert steno("verify", str(out), "--no-mark", "--root-folder", "SilentSteno", cwd=tmp_path,
                     default_config=cfg) == (0, f"{files} files verified, 0 changed, 0 missing, 0 extra{END}", "")


def test_verify_of_the_root_folder_itself_checks_it_whatever_the_config_names(tmp_path, demo_library):
    """`steno-exportd verify /media/x/SilentSteno`, the root folder itself (as the help says it may be given), on a
    recorder whose config names another export.root_folder ('Meetings': a stick exported before it was set, or by
    another recorder): 'verify failed: no Meetings/ folder'. A folder holding manifest.json or SHA256SUMS is the
    root folder, whatever its name and whatever the config says (a config verify cannot load included), and the
    summary line names it."""
    out = tmp_path / "stick"
    out.mkdir()
    unverified_export(demo_library, tmp_path, out, "1")
    files = len(marks(out))
    meetings = tmp_path / "meetings.toml"
    meetings.write_text('[export]\nroot_folder = "Meetings"\n')
    typo = tmp_path / "typo.toml"
    typo.write_text('[export]\nroot_foldr = "Meetings"\n')
    found = (0, f"{files} files verified, 0 changed, 0 missing, 0 extra{END}", "")
    for cfg in (meetings, typo):
        assert steno("verify", str(out / "SilentSteno"), "--no-mark", cwd=tmp_path, default_config=cfg) == found
        assert steno("verify", ".", "--no-mark", cwd=out / "SilentSteno", default_config=cfg) == found
    rc, said, _ = steno("verify", str(out / "SilentSteno"), "--no-mark", "--json", cwd=tmp_path,
                        default_config=meetings)
    rep = json.loads(said)
    assert (rc, rep["root"], rep["root_from"]) == (0, "SilentSteno", "the folder given: it holds manifest.json"), rep
    # the folder above it is still checked by the config's root folder, a manifest.json of the stick's own beside it
    # or not
    rc, said, err = steno("verify", str(out), "--no-mark", cwd=tmp_path, default_config=meetings)
    assert (rc, said) == (1, "") and err.startswith("verify failed: no Meetings/ folder on "), err
    (out / "manifest.json").write_text("{}\n")
    assert steno("verify", str(out), "--no-mark", cwd=tmp_path) == found


def test_verify_of_an_archive_says_the_root_folder_it_checked(tmp_path, demo_library):
    """`steno-exportd verify FILE.zip --json` said "root": "", though it checked the members under SilentSteno/ (as
    its summary line says) as for a folder."""
    db = Path(demo_library(tmp_path / "rec", sessions=1))
    for name in ("out.zip", "out.tar.gz"):
        rc, said, err = steno("export", "--db", str(db), "--to", str(tmp_path / name), "--sessions", "all",
                              "--formats", "txt", cwd=tmp_path)
        assert rc == 0, (said, err)
        rc, said, err = steno("verify", str(tmp_path / name), "--json", cwd=tmp_path)
        rep = json.loads(said)
        assert (rc, rep["ok"], rep["root"]) == (0, True, "SilentSteno"), (name, rep, err)
        rc, said, err = steno("verify", str(tmp_path / name), cwd=tmp_path)
        assert rc == 0 and said.endswith(END), (name, said, err)
