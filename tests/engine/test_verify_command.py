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

NOT_RECORDED = ("NOTE     could not record in the manifest that the files were verified ({why}): the next export that "
                "verifies sends again those a job without verify wrote")


def steno(*argv: str, cwd: Path) -> tuple[int, str, str]:
    """The program as a person runs it: (exit code, what it printed, its errors)."""
    p = subprocess.run([sys.executable, "-m", "steno_exportd", *argv], capture_output=True, text=True, cwd=cwd,
                       env=dict(os.environ, PYTHONPATH=os.getcwd()), timeout=120)
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
                                  f"0 extra\n", ""), (rc, said, err)
    rep = json.loads(said_json)
    assert rc_json == 0 and rep["ok"] and rep["verified"] == files, rep
    assert rep["notes"] == [NOT_RECORDED.format(why=why).removeprefix("NOTE     ")], rep["notes"]
    rc, said, err = await asyncio.to_thread(steno, "verify", str(out), cwd=tmp_path)
    assert (rc, said, err) == (0, f"{len(marks(out))} files verified, 0 changed, 0 missing, 0 extra\n", "")
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
    found = (f"CHANGED  {changed}\n{files - 1} files verified, 1 changed, 0 missing, 0 extra\n")
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
    assert steno("verify", str(out), cwd=tmp_path) == (0, f"{files} files verified, 0 changed, 0 missing, 0 extra\n",
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
            0, f"{NOT_RECORDED.format(why=why)}\n{files} files verified, 0 changed, 0 missing, 0 extra\n", "")
        umount(mnt)
        mount(dev, mnt, "ext4")
        txt.write_bytes(txt.read_bytes() + b"changed\n")
        umount(mnt)
        mount(dev, mnt, "ext4", ro=True)
        assert steno("verify", str(mnt), cwd=tmp_path) == (
            1, f"CHANGED  {changed}\nPROBLEM  could not flag changed files in the manifest: {why}\n"
               f"{files - 1} files verified, 1 changed, 0 missing, 0 extra\n", "")
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
        [f"{files} files verified, 0 changed, 0 missing, 3 extra"], said
    assert not [c for c in said if c != "\n" and not c.isprintable()], said
    rc, said, _ = steno("verify", str(out), "--no-mark", "--json", cwd=tmp_path)
    assert rc == 0 and sorted(json.loads(said)["extra"]) == sorted(f"{folder.name}/{n}" for n in HOSTILE)
