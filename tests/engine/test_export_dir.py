"""Export engine on a tmp_path folder: layout, SHA256SUMS, incremental, hostile content."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import subprocess
import threading
import time

import pytest

from steno_exportd import config
from steno_exportd.engine.export import SimpleSpec, run_export
from steno_exportd.engine.options import ExportOptions
from steno_exportd.engine.targets import MARKER, DirectoryTarget
from steno_exportd.errors import TargetError
from tests.configs import make_config
from tests.fakes import FakeLibrary, library, make_session
from tests.parts import nest_folders


def _run(lib, cfg, target, ids, formats=("txt", "json", "audio")):
    return run_export(lib, SimpleSpec(str(target), tuple(ids), tuple(formats), ExportOptions()), cfg)


def test_export_layout_sums_and_incremental(tmp_path):
    lib = library(tmp_path, 3)
    out = tmp_path / "out"
    out.mkdir()
    cfg = make_config(tmp_path)
    res = _run(lib, cfg, out, [1, 2, 3])
    assert all(r.ok and not r.skipped for r in res), res
    root = out / "SilentSteno"
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert len(folders) == 3 and all("Meeting" in f for f in folders)
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0
    m = json.loads((root / "manifest.json").read_text())
    assert m["version"] == 1 and len(m["sessions"]) == 3
    assert not [p for p in root.rglob("*") if ".partial" in p.name or ".steno-tmp" in p.name]
    # rerun: nothing new
    res = _run(lib, cfg, out, [1, 2, 3])
    assert all(r.skipped for r in res)
    # a deleted file is re-copied
    victim = next((root / folders[0]).glob("audio.wav"))
    victim.unlink()
    res = _run(lib, cfg, out, [1, 2, 3])
    assert [r.skipped for r in res] == [False, True, True] and res[0].ok
    assert victim.exists()
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0


def test_a_sha256sums_out_of_step_with_the_manifest_is_saved_again_by_an_export_that_finds_nothing_new(tmp_path,
                                                                                                       caplog):
    """A SHA256SUMS that lacks lines of sessions manifest.json records (someone cut it short, a sync client restored
    an old one), or is gone: an export that then found nothing new left it so for good (`sha256sum -c` passed on
    fewer files than the folder holds, or had nothing to check). Now an export that finds SHA256SUMS of another size
    than the lines manifest.json makes saves it again, said in one line; one in step is left alone. (A save cut
    between its two names, where it names them at once: test_a_save_cut_between_its_two_names_at_once_is_made_good_
    by_the_next_export.)"""
    lib = library(tmp_path, 3)
    out = tmp_path / "out"
    out.mkdir()
    cfg = make_config(tmp_path)
    assert all(r.ok and not r.skipped for r in _run(lib, cfg, out, [1, 2, 3]))
    root = out / "SilentSteno"
    sums = root / "SHA256SUMS"
    whole = sums.read_text()
    assert len(whole.splitlines()) == 9, whole
    for stale in ("".join(whole.splitlines(True)[:-3]), None):     # a save cut before the last session's lines; gone
        if stale is None:
            sums.unlink()
        else:
            sums.write_text(stale)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            res = _run(lib, cfg, out, [1, 2, 3])
        assert [(r.ok, r.skipped) for r in res] == [(True, True)] * 3, res
        assert sums.read_text() == whole
        assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0
        said = [r.getMessage() for r in caplog.records if "SHA256SUMS" in r.getMessage()]
        assert len(said) == 1 and "is not the one manifest.json lists: written again" in said[0], said
    before = {name: (root / name).stat().st_mtime_ns for name in ("SHA256SUMS", "manifest.json")}
    time.sleep(0.01)
    assert all(r.skipped for r in _run(lib, cfg, out, [1, 2, 3]))
    assert {name: (root / name).stat().st_mtime_ns for name in before} == before


def test_a_save_cut_between_its_two_names_at_once_is_made_good_by_the_next_export(tmp_path, caplog):
    """Where a target takes several requests at once (a store far away: each name is three round trips), a save
    names SHA256SUMS and manifest.json at once, once the recorder's own record says so (engine/begun.py). Here a
    session is sent again (its summary corrected: session.json changes, its size does not) and the save names
    manifest.json but SHA256SUMS fails: the store now holds a manifest.json that records the new session.json
    beside a SHA256SUMS of the same size with the old hash, which `sha256sum -c` calls FAILED. The next export, which
    finds nothing new, knows from the record that a save was cut and saves again: SHA256SUMS right, said in one line.
    (Its size alone could not tell: test_a_sha256sums_out_of_step_with_the_manifest_is_saved_again_by_an_export_
    that_finds_nothing_new.)"""
    import dataclasses
    from steno_exportd.engine.targets import DirectoryTarget
    from tests.fakes import make_session
    lib = library(tmp_path, 3)
    out = tmp_path / "out"
    out.mkdir()
    cfg = make_config(tmp_path)
    failing: list[str] = []

    class Far(DirectoryTarget):
        """Two files read back at once, no marker in a .partial folder (the recorder's own record: as rclone's
        WebDAV); the naming of SHA256SUMS fails while ``failing`` says so."""

        def __init__(self, root):
            super().__init__(root)
            self.checks, self.marks_partial = 2, False

        def open_write(self, rel, **kw):
            h = super().open_write(rel, **kw)
            if rel.endswith("/SHA256SUMS") and failing:
                def refused():
                    h.abort()
                    raise TargetError(f"{failing[0]}: the store refused the move")
                h.commit = refused
            return h

    def export():
        return run_export(lib, SimpleSpec(Far(out), (1, 2, 3), ("txt", "json", "audio"), ExportOptions()), cfg)
    assert all(r.ok and not r.skipped for r in export())
    root = out / "SilentSteno"
    old = lib.sessions[2]
    fixed = make_session(2, old.audio.path)
    fixed = dataclasses.replace(fixed, summary=dataclasses.replace(
        fixed.summary, updated_at=fixed.summary.updated_at + dt.timedelta(hours=1)))
    lib.add(dataclasses.replace(fixed, summary_text="SUMMARY"))     # ("summary" before: the same length)
    assert lib.sessions[2] is not old
    sums_before = (root / "SHA256SUMS").read_text()
    failing.append("cut")
    res = export()
    failing.clear()
    assert not all(r.ok for r in res), [(r.ok, r.error) for r in res]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["sessions"][fixed.uuid]["updated_at"].startswith("2026-01-03T10"), manifest["sessions"]
    assert (root / "SHA256SUMS").read_text() == sums_before     # the old hash beside the new manifest
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root,
                          capture_output=True).returncode != 0, "the cut left nothing out of step"
    caplog.clear()
    with caplog.at_level(logging.INFO):
        res = export()
    assert [(r.ok, r.skipped) for r in res] == [(True, True)] * 3, [(r.ok, r.skipped, r.error) for r in res]
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0
    said = [r.getMessage() for r in caplog.records if "SHA256SUMS" in r.getMessage()]
    assert len(said) == 1 and "a save there was cut" in said[0], said
    before = {name: (root / name).stat().st_mtime_ns for name in ("SHA256SUMS", "manifest.json")}
    time.sleep(0.01)
    assert all(r.skipped for r in export())
    assert {name: (root / name).stat().st_mtime_ns for name in before} == before


def test_a_cancel_ends_the_rendered_files_queued_behind_it(tmp_path):
    """A target that takes several requests at once (a store far away) gets each session's rendered files written
    and read back on threads of their own, queued behind those of the sessions before: a cancel ends the queued
    ones at once, none is begun after it (each an upload and a read-back of a store a round trip away). Here the
    cancel comes while each of those threads is inside a write and more wait their turn. The export records what it
    finished before the cancel, and the next one finishes the rest."""
    from steno_exportd.engine.targets import DirectoryTarget
    lib = library(tmp_path, 9)
    out = tmp_path / "out"
    out.mkdir()
    cfg = make_config(tmp_path)
    cancel, release = threading.Event(), threading.Event()
    entered: list[str] = []
    begun_after: list[str] = []
    count = threading.Lock()

    class Far(DirectoryTarget):
        """Two files read back at once, three sessions in flight (and two threads for rendered files); the
        rendered files' writes wait until the cancel."""

        def __init__(self, root):
            super().__init__(root)
            self.checks, self.in_flight = 2, 3

        def open_write(self, rel, **kw):
            name = rel.rpartition("/")[2]
            if name.endswith((".txt", ".json")) and name != "manifest.json":
                with count:
                    (begun_after if cancel.is_set() else entered).append(rel)
                release.wait(10)
            return super().open_write(rel, **kw)

    class CancelAtTheFourthSession:
        """The cancel once the export begins the fourth session's files: the two threads for rendered files each
        inside a write (session 1's), those of sessions 2 and 3 waiting their turn."""
        fields: dict = {}

        @property
        def cancelled(self) -> bool:
            return cancel.is_set()

        def update(self, force: bool = False, **fields) -> None:
            self.fields.update(fields)
            if "Meeting 4 " in fields.get("current_file", "") and not cancel.is_set():
                deadline = time.monotonic() + 10
                while len(entered) < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
                cancel.set()
                release.set()
    res = run_export(lib, SimpleSpec(Far(out), tuple(range(1, 10)), ("txt", "json", "audio"), ExportOptions()),
                     cfg, CancelAtTheFourthSession())
    assert cancel.is_set(), "never cancelled"
    assert len(entered) == 2, entered
    assert begun_after == [], begun_after
    assert len([r for r in res if r.ok]) < 9, [(r.ok, r.error) for r in res]
    root = out / "SilentSteno"
    cancel.clear()
    res = run_export(lib, SimpleSpec(Far(out), tuple(range(1, 10)), ("txt", "json", "audio"), ExportOptions()), cfg)
    assert [r.ok for r in res] == [True] * 9, [r.error for r in res]
    assert not [p for p in root.rglob("*") if ".partial" in p.name or ".steno-tmp" in p.name or p.name == MARKER]
    assert len(json.loads((root / "manifest.json").read_text())["sessions"]) == 9
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0


def test_hostile_target_content(tmp_path):
    lib = library(tmp_path, 2)
    out = tmp_path / "out"
    (out / "SilentSteno").mkdir(parents=True)
    (out / "SilentSteno" / "notes.txt").write_text("mine")
    cfg = make_config(tmp_path)
    res = _run(lib, cfg, out, [1])
    assert res[0].ok
    folder = next(p for p in (out / "SilentSteno").iterdir() if p.is_dir())
    # a lost manifest is rebuilt from SHA256SUMS; nothing crashes and nothing foreign is touched
    (out / "SilentSteno" / "manifest.json").write_text("{garbage")
    res = _run(lib, cfg, out, [1, 2])
    assert all(r.ok for r in res), res
    assert (out / "SilentSteno" / "notes.txt").read_text() == "mine"
    assert len([p for p in (out / "SilentSteno").iterdir() if p.is_dir()]) == 2


def test_a_newer_manifest_version_with_line_breaks_is_said_in_one_line(tmp_path, caplog):
    """A manifest whose version is "\n\n\n9" (int() takes the whitespace): its words went into the log as they came,
    raw line breaks forging lines in the journal. Now escaped, in the one warning that says it is rebuilt."""
    from steno_exportd.engine.manifest import FORMAT
    lib = library(tmp_path, 1)
    out = tmp_path / "out"
    (out / "SilentSteno").mkdir(parents=True)
    (out / "SilentSteno" / "manifest.json").write_text(json.dumps({"format": FORMAT, "version": "\n\n\n9",
                                                                    "sessions": {}}))
    with caplog.at_level(logging.INFO):
        res = _run(lib, make_config(tmp_path), out, [1])
    assert res[0].ok, res
    said = [r.getMessage() for r in caplog.records if "is newer than ours" in r.getMessage()]
    assert len(said) == 1 and "manifest version \\n\\n\\n9 is newer than ours" in said[0], said
    assert not [m for m in (r.getMessage() for r in caplog.records) if "\n" in m], "a line break went into the log"


def test_symlink_root_is_refused(tmp_path):
    lib = library(tmp_path, 1)
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "SilentSteno")
    cfg = make_config(tmp_path)
    try:
        _run(lib, cfg, out, [1])
    except Exception as e:  # noqa: BLE001
        assert "symlink" in str(e) or "in the way" in str(e)
    else:
        raise AssertionError("exported through a symlink")
    assert list(elsewhere.iterdir()) == []


def test_missing_audio_other_files_exported(tmp_path):
    lib = library(tmp_path, 1)
    lib.sessions[1].audio.path.unlink()
    out = tmp_path / "out"
    out.mkdir()
    res = _run(lib, make_config(tmp_path), out, [1])
    # ok with warnings: every file it could write is there; the missing recording is reported, not a failure
    assert res[0].ok and res[0].status == "ok with warnings" and not res[0].error
    assert "audio" in res[0].warnings[0]
    assert sum(f.ok for f in res[0].files) == 2


def test_transient_source_error_is_retried(tmp_path):
    from steno_exportd.errors import SourceError
    lib = library(tmp_path, 1)
    calls = {"n": 0}
    real = lib.get_session

    def flaky(key):
        calls["n"] += 1
        if calls["n"] == 1:
            raise SourceError("database is locked")
        return real(key)

    lib.get_session = flaky
    out = tmp_path / "out"
    out.mkdir()
    res = _run(lib, make_config(tmp_path), out, [1])
    assert res[0].ok and calls["n"] == 2


def test_merge_writes_one_document_per_format(tmp_path):
    lib = library(tmp_path, 3)
    out = tmp_path / "out"
    out.mkdir()
    res = run_export(lib, SimpleSpec(str(out), (1, 2, 3), ("txt", "md", "json"), ExportOptions(merge=True)),
                     make_config(tmp_path))
    merged = res[-1]
    assert merged.session_id == 0 and not merged.ok and len(merged.files) == 3
    assert [f.error for f in merged.files if not f.ok] == ["format 'json' cannot merge sessions"]
    f = next((out / "SilentSteno").glob("Merged */merged.txt"))
    text = f.read_text()
    assert all(f"Meeting {i}" in text for i in (1, 2, 3))
    assert text.index("Meeting 1") < text.index("Meeting 2") < text.index("Meeting 3")
    assert next((out / "SilentSteno").glob("Merged */merged.md")).stat().st_size > 0
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out / "SilentSteno").returncode == 0


class _BadOnce:
    """A read handle whose first chunk comes back with one byte changed (a stick that returned other bytes)."""

    def __init__(self, h):
        self._h, self._first = h, True

    def read(self, n):
        data = self._h.read(n)
        if self._first and data:
            self._first = False
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return data

    def readinto(self, buf):
        n = self._h.readinto(buf)
        if self._first and n:
            self._first = False
            buf[0] ^= 0xFF
        return n

    def close(self):
        self._h.close()


def test_a_file_rewritten_after_a_failed_read_back_lands_as_its_recording_while_the_next_is_copied(tmp_path, caplog):
    """The rewrite runs on the verifier thread while the main thread copies the next session's recording: each
    copy reads into its own buffers (they shared one ring: either file could land with the other's bytes, and a
    hash taken of the mixed bytes would even pass the read-back)."""
    from steno_exportd.engine.targets import DirectoryTarget
    from tests.fakes import FakeLibrary, make_session

    src = tmp_path / "rec"
    src.mkdir()
    sizes = {1: 16 << 20, 2: 48 << 20}
    audio = {}
    for i, size in sizes.items():
        audio[i] = src / f"s{i}.wav"
        with open(audio[i], "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
    lib = FakeLibrary([make_session(i, audio[i]) for i in sizes])
    out = tmp_path / "out"
    out.mkdir()
    spoiled = []
    opened: list[str] = []
    rewriting = threading.Event()

    class Held:
        """Session 2's copy: held after its first chunk until session 1's rewrite begins, then copied beside it."""

        def __init__(self, h):
            self._h, self._writes = h, 0

        def __getattr__(self, name):
            return getattr(self._h, name)

        def write(self, data):
            self._writes += 1
            if self._writes == 2:
                rewriting.wait(60)
            self._h.write(data)

    class Stick(DirectoryTarget):
        def open_read(self, rel, *, uncached=False):
            h = super().open_read(rel, uncached=uncached)
            if rel.endswith("audio.wav") and "Meeting 1 " in rel and not spoiled:
                spoiled.append(rel)
                return _BadOnce(h)
            return h

        def open_write(self, rel, *, resume=None):
            h = super().open_write(rel, resume=resume)
            if rel.endswith("audio.wav"):
                opened.append(rel)
                if "Meeting 1 " in rel and len([r for r in opened if "Meeting 1 " in r]) == 2:
                    rewriting.set()         # the rewrite of session 1
                if "Meeting 2 " in rel:
                    return Held(h)
            return h

    cfg = config.from_dict({"recorder": {"db_path": str(tmp_path / "rec" / "db.sqlite")}})
    with caplog.at_level(logging.WARNING):
        res = run_export(lib, SimpleSpec(Stick(out), (1, 2), ("audio",), ExportOptions()), cfg)
    assert spoiled and [r for r in caplog.records if "verify failed" in r.getMessage()], "no read-back failed"
    assert rewriting.is_set(), "session 1 was not written again"
    assert [r.ok for r in res] == [True, True], res
    root = out / "SilentSteno"
    for i, f in audio.items():
        landed = next(root.glob(f"*Meeting {i} */audio.wav"))
        assert hashlib.sha256(landed.read_bytes()).hexdigest() == hashlib.sha256(f.read_bytes()).hexdigest(), \
            f"session {i}'s recording landed with other bytes"
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0


def test_with_several_sessions_in_flight_results_keep_the_sessions_order(tmp_path):
    """A target that reads back several files at once (target.checks, as a store far away does) has several
    sessions in flight: results still come in the sessions' order, unchanged ones between them, each session
    lands once and verified, and the manifest records them all."""
    from steno_exportd.engine.targets import DirectoryTarget

    lib = library(tmp_path, 9, audio_size=3 << 20)
    out = tmp_path / "out"
    out.mkdir()
    cfg = make_config(tmp_path)

    class Far(DirectoryTarget):
        """Recordings' read-backs counted; the first one held until a second one runs beside it (10 s at most)."""

        def __init__(self, root):
            super().__init__(root)
            self.checks = 4
            self.reading = self.most = 0
            self._count = threading.Lock()
            self.second = threading.Event()

        def open_read(self, rel, *, uncached=False):
            h = super().open_read(rel, uncached=uncached)
            if not rel.endswith("audio.wav"):
                return h
            with self._count:
                self.reading += 1
                self.most = max(self.most, self.reading)
                first = self.most == 1
                if self.reading > 1:
                    self.second.set()
            target = self

            class Counted:
                def read(self, n):
                    if first:
                        target.second.wait(10)
                    return h.read(n)

                def readinto(self, buf):
                    if first:
                        target.second.wait(10)
                    return h.readinto(buf)

                def close(self):
                    with target._count:
                        target.reading -= 1
                    h.close()
            return Counted()

    res = run_export(lib, SimpleSpec(Far(out), (2, 5, 8), ("txt", "audio"), ExportOptions()), cfg)
    assert [r.ok for r in res] == [True] * 3, res
    far = Far(out)
    res = run_export(lib, SimpleSpec(far, tuple(range(1, 10)), ("txt", "audio"), ExportOptions()), cfg)
    assert [r.session_id for r in res] == list(range(1, 10))
    assert [r.skipped for r in res] == [i in (2, 5, 8) for i in range(1, 10)]
    assert all(r.ok for r in res), [r.error for r in res if not r.ok]
    assert far.most > 1, "never more than one recording read back at a time"
    root = out / "SilentSteno"
    assert len([p for p in root.iterdir() if p.is_dir()]) == 9
    assert len(json.loads((root / "manifest.json").read_text())["sessions"]) == 9
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0


def test_sessions_in_flight_beyond_the_read_backs_never_cut_the_read_backs_at_once(tmp_path):
    """A target may keep more sessions in flight than it reads back at once (Target.in_flight: rclone's WebDAV), of
    at most in_flight_bytes to send together. That bound applies beyond the ``checks`` sessions the target always
    had in flight: with large recordings it kept one session in flight beside the one being written, so two were
    read back at once where four were before. Here four are read back at once (the first four read-backs held
    until then, 5 s at most), and every session lands once, verified."""
    from steno_exportd.engine.targets import DirectoryTarget
    lib = library(tmp_path, 8, audio_size=3 << 20)
    out = tmp_path / "out"
    out.mkdir()
    cfg = make_config(tmp_path)

    class Far(DirectoryTarget):
        """Four files read back at once, eight sessions in flight of 1 MiB to send together; the recordings'
        read-backs counted, the first four held until four run at once (5 s at most)."""

        def __init__(self, root):
            super().__init__(root)
            self.checks, self.in_flight, self.in_flight_bytes = 4, 8, 1 << 20
            self.reading = self.most = self.started = 0
            self._count = threading.Lock()
            self.four = threading.Event()

        def open_read(self, rel, *, uncached=False):
            h = super().open_read(rel, uncached=uncached)
            if not rel.endswith("audio.wav"):
                return h
            with self._count:
                self.reading += 1
                self.started += 1
                self.most = max(self.most, self.reading)
                first = self.started <= 4
                if self.reading >= 4:
                    self.four.set()
            target = self

            class Counted:
                def read(self, n):
                    if first:
                        target.four.wait(5)
                    return h.read(n)

                def readinto(self, buf):
                    if first:
                        target.four.wait(5)
                    return h.readinto(buf)

                def close(self):
                    with target._count:
                        target.reading -= 1
                    h.close()
            return Counted()
    far = Far(out)
    res = run_export(lib, SimpleSpec(far, tuple(range(1, 9)), ("audio",), ExportOptions()), cfg)
    assert [r.ok for r in res] == [True] * 8, [r.error for r in res]
    assert far.most == 4, f"{far.most} recordings read back at once at most"
    root = out / "SilentSteno"
    assert len(json.loads((root / "manifest.json").read_text())["sessions"]) == 8
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0


def test_a_store_far_away_lists_the_folders_of_sessions_already_exported_several_at_once(tmp_path):
    """Finding what is new looks at the folder of every session already exported: on a target that takes several
    requests at once (target.checks, as a store far away does: each listing a round trip), several at once. What
    they show still counts: a recording deleted on the target is sent again, the rest is skipped."""
    from steno_exportd.engine.targets import DirectoryTarget

    lib = library(tmp_path, 8)
    out = tmp_path / "out"
    out.mkdir()
    cfg = make_config(tmp_path)
    assert all(r.ok for r in _run(lib, cfg, out, range(1, 9), ("txt", "audio")))
    root = out / "SilentSteno"

    class Far(DirectoryTarget):
        """Listings of session folders counted; the first one held until a second one runs beside it (10 s at most)."""

        def __init__(self, root):
            super().__init__(root)
            self.checks = 4
            self.listing = self.most = self.calls = 0
            self._count = threading.Lock()
            self.second = threading.Event()

        def scandir(self, rel):
            if "/" not in rel:                  # the export's root
                return super().scandir(rel)
            with self._count:
                self.calls += 1
                self.listing += 1
                self.most = max(self.most, self.listing)
                first = self.calls == 1
                if self.listing > 1:
                    self.second.set()
            try:
                if first:
                    self.second.wait(10)
                return super().scandir(rel)
            finally:
                with self._count:
                    self.listing -= 1

    victim = next(root.glob("*Meeting 3 */audio.wav"))
    victim.unlink()
    far = Far(out)
    res = run_export(lib, SimpleSpec(far, tuple(range(1, 9)), ("txt", "audio"), ExportOptions()), cfg)
    assert [r.skipped for r in res] == [i != 3 for i in range(1, 9)], res
    assert all(r.ok for r in res), [r.error for r in res if not r.ok]
    assert victim.exists()
    assert far.most > 1, "the folders of the sessions already exported were listed one at a time"
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0


class _SavedNowAndThen(DirectoryTarget):
    """A target saved every second at most (save_every, as a store far away is); Meeting 2's recording written a
    MiB every 0.1 s until Meeting 1 is saved and in place. ``seen``: for each MiB written, whether it was then."""

    def __init__(self, root):
        super().__init__(root)
        self.save_every = 1.0
        self.seen: list[bool] = []

    def first_saved(self) -> bool:
        root = self.root / "SilentSteno"
        try:
            m = json.loads((root / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        return any(e["title"] == "Meeting 1" for e in m["sessions"].values()) and \
            any(p.is_dir() and p.name.endswith("Meeting 1 (00000001)") for p in root.iterdir())

    def open_write(self, rel, *, resume=None):
        h = super().open_write(rel, resume=resume)
        if "Meeting 2" in rel and rel.endswith("audio.wav"):
            h.chunk = 1 << 20               # a MiB a write (a local target's own writes are larger: COPY_CHUNK)
            write = h.write

            def slow(data):
                write(data)
                self.seen.append(self.first_saved())
                if not self.seen[-1]:
                    time.sleep(0.1)
            h.write = slow
        return h


def _short_then_long(tmp_path, long_mib):
    """Session 1 with a 100 KB recording, session 2 with one of ``long_mib`` MiB; the export folder (empty)."""
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "s1.wav").write_bytes(os.urandom(100_000))
    (rec / "s2.wav").write_bytes(os.urandom(long_mib << 20))
    out = tmp_path / "out"
    out.mkdir()
    return FakeLibrary([make_session(1, rec / "s1.wav"), make_session(2, rec / "s2.wav")]), out


def test_sessions_held_for_a_later_save_are_saved_while_a_long_recording_is_still_being_written(tmp_path):
    """On a target saved now and then (save_every, as a store far away is), a finished session waits at most
    save_every for the save that records it, even while the next session's long recording is written: it was
    held until that session ended, minutes later on a slow link, its folder still named .partial, and a push cut
    meanwhile sent it again."""
    lib, out = _short_then_long(tmp_path, 24)
    root = out / "SilentSteno"
    target = _SavedNowAndThen(out)
    res = run_export(lib, SimpleSpec(target, (1, 2), ("txt", "audio"), ExportOptions()), make_config(tmp_path))
    assert all(r.ok for r in res), [r.error for r in res if not r.ok]
    assert len(target.seen) == 24
    assert any(target.seen), "the first session was saved only after the second one's recording was written"
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0
    assert not [p for p in root.rglob("*") if ".partial" in p.name]


def test_a_failed_due_save_loses_no_session_and_is_tried_again(tmp_path, caplog, capsys):
    """The save that held sessions wait for (save_every has passed while the next session's long recording is
    written) fails once: the store refuses manifest.json. The sessions stay held and the next save records them:
    the push ends with both sessions exported, verified, recorded and in place, one warning said, no traceback."""
    lib, out = _short_then_long(tmp_path, 32)
    root = out / "SilentSteno"
    refused: list[int] = []                 # MiB of Meeting 2's recording written when the save was refused

    class RefusesOnce(_SavedNowAndThen):
        def open_write(self, rel, *, resume=None):
            h = super().open_write(rel, resume=resume)
            if rel == "SilentSteno/manifest.json" and self.seen and not refused:

                def refuse():
                    refused.append(len(self.seen))
                    h.abort()
                    raise TargetError("SilentSteno/manifest.json: the store refused the upload")
                h.commit = refuse
            return h

    target = RefusesOnce(out)
    with caplog.at_level(logging.WARNING):
        res = run_export(lib, SimpleSpec(target, (1, 2), ("txt", "audio"), ExportOptions()), make_config(tmp_path))
    assert refused and refused[0] < 32, "no save was refused while the long recording was written"
    assert [(r.session_id, r.ok, r.skipped) for r in res] == [(1, True, False), (2, True, False)], \
        [r.error for r in res]
    assert any(target.seen), "the first session was saved only after the second one's recording was written"
    m = json.loads((root / "manifest.json").read_text())
    assert sorted(e["title"] for e in m["sessions"].values()) == ["Meeting 1", "Meeting 2"]
    for e in m["sessions"].values():
        folder = root / e["folder"]
        assert folder.is_dir() and not (folder / MARKER).exists(), f"{e['folder']} not in place"
        for name, f in e["files"].items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == f["sha256"], f"{e['folder']}/{name}"
    assert not [p for p in root.rglob("*") if ".partial" in p.name or ".steno-tmp" in p.name]
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "manifest not saved" in warnings[0] and "refused the upload" in warnings[0], \
        warnings
    assert not [r for r in caplog.records if r.exc_info]
    assert "Traceback" not in caplog.text + capsys.readouterr().err


_PEAK = ("import atexit, runpy, sys; atexit.register(lambda: sys.stderr.write('VmHWM %s' % "
         "open('/proc/self/status').read().split('VmHWM:')[1].split()[0])); "
         "sys.argv[0] = 'steno-exportd'; runpy.run_module('steno_exportd', run_name='__main__')")


def _export_rss(db_root, out) -> tuple[dict, int]:
    """`steno-exportd export` of every session to ``out`` in a process of its own: (its JSON result, its peak
    RSS in MiB, read from the kernel as it exits)."""
    import sys
    p = subprocess.run([sys.executable, "-c", _PEAK, "export", "--db", str(db_root / "silent_steno.db"),
                        "--data-dir", str(db_root), "--to", str(out), "--sessions", "all", "--formats", "txt,audio",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert p.stdout, p.stderr[-2000:]
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    return json.loads(p.stdout), int(p.stderr.rpartition("VmHWM ")[2]) // 1024


def _hostile_manifest(root) -> None:
    with open(root / "manifest.json", "wb") as f:     # 2.4 million small entries in 24 MiB: 400 MB once parsed
        f.write(b'{"format":"steno-exportd-manifest","version":1,"sessions":{"x":{}')
        for k in range(0, 2_400_000, 100_000):
            f.write(b"".join(b',"%07d":{}' % i for i in range(k, k + 100_000)))
        f.write(b"}}")


def _huge_manifest(root) -> None:
    with open(root / "manifest.json", "wb") as f:     # one 60 MiB string: about 250 MB to read and parse
        f.write(b'{"format":"steno-exportd-manifest","version":1,"sessions":{},"x":"')
        for _ in range(60):
            f.write(b"a" * (1 << 20))
        f.write(b'"}')


def _huge_sums(root) -> None:
    (root / "manifest.json").unlink()
    line = b"%s  %%07d/audio.flac\n" % (b"0" * 64)
    with open(root / "SHA256SUMS", "wb") as f:        # 27 MiB, 330,000 lines of files that are not there
        for k in range(0, 330_000, 10_000):
            f.write(b"".join(line % i for i in range(k, k + 10_000)))


def _sums_in_cr_lines(root) -> None:
    (root / "manifest.json").unlink()
    line = b"%s  %%07d/audio.flac\r" % (b"0" * 64)
    with open(root / "SHA256SUMS", "wb") as f:        # 19 MiB, 290,000 lines ended by '\r' alone, no '\n'
        for k in range(0, 290_000, 10_000):
            f.write(b"".join(line % i for i in range(k, k + 10_000)))


def _costliest_within_bounds(root) -> None:
    with open(root / "manifest.json", "wb") as f:     # unique keys and strings, just inside the bounds
        f.write(b'{"format":"steno-exportd-manifest","version":1,"sessions":{},"x":{"a":0')
        for k in range(0, 490_000, 10_000):
            f.write(b"".join(b',"%07d":"%030d"' % (i, i) for i in range(k, k + 10_000)))
        f.write(b"}}")


@pytest.mark.parametrize("plant", [_hostile_manifest, _huge_manifest, _huge_sums, _sums_in_cr_lines,
                                   _costliest_within_bounds])
def test_a_hostile_manifest_on_a_stick_is_rebuilt_in_bounded_memory(tmp_path, plant):
    """A stick's author (or anyone who can write the store) leaves a manifest.json or SHA256SUMS that is JSON or
    text of the right shape but huge in Python objects. The daemon's unit has MemoryMax=256M, and it idles near
    60 MB: parsing such a file got it killed by the kernel, and with it every job, each time the stick came back.
    The export must treat it as any unusable manifest (rebuilt, the sessions land and verify), costing no more
    memory than the largest manifest a recorder writes (about 15,000 meetings). Before: peak RSS 502, 212 and 186
    MiB, against 57-87 MiB for a clean export."""
    from tests.smb.recorder import make_recorder
    db = make_recorder(tmp_path / "rec", sizes=(100_000, 100_500))
    db.close()
    clean = tmp_path / "clean"
    clean.mkdir()
    result, base_rss = _export_rss(tmp_path / "rec", clean)
    assert result["ok"], result
    out = tmp_path / "stick"
    out.mkdir()
    result, _ = _export_rss(tmp_path / "rec", out)
    assert result["ok"], result
    plant(out / "SilentSteno")
    (next(p for p in (out / "SilentSteno").iterdir() if p.is_dir()) / "transcript.txt").unlink()
    result, rss = _export_rss(tmp_path / "rec", out)
    assert result["ok"], result
    # refused before they are parsed: about 40 MB (the file read) over a clean export; parsed, the costliest file
    # within the bounds: about 145 MB over it, and the unit's MemoryMax is 256 MB
    limit = 230 if plant is _costliest_within_bounds else 160
    assert rss < limit, f"peak RSS {rss} MiB (a clean export: {base_rss} MiB)"
    root = out / "SilentSteno"
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0
    sessions = json.loads((root / "manifest.json").read_text())["sessions"]
    exported = [s for u, s in sessions.items() if not u.startswith(("rebuilt:", "merged:"))]
    assert len(exported) == 2 and all((root / s["folder"] / "transcript.txt").is_file() for s in exported)


def test_the_largest_manifest_a_recorder_writes_is_read_not_rebuilt(tmp_path):
    """The bounds on a manifest.json read from a target (above) leave room for the meetings of the 5 files a push
    writes by default, each entry as the export writes it, with commas in the titles (each counts): 8,000 of them."""
    from steno_exportd.engine import manifest as mf
    names = ["audio.flac", "transcript.txt", "transcript.html", "transcript.pdf", "transcript.json"]
    m = mf.Manifest()
    for i in range(8_000):
        u = f"{i:08x}-1234-4567-89ab-{i:012x}"
        title = f"Weekly planning: budget, hiring, roadmap, {i}"
        m.sessions[u] = {"id": i, "title": title, "folder": f"2026-11-{i % 28 + 1:02d} 10-00 {title}",
                         "updated_at": mf.now_iso(), "exported_at": mf.now_iso(),
                         "files": {n: mf.entry(123456789, hashlib.sha256(f"{i}{n}".encode()).hexdigest(),
                                               "transcript-pdf", "1.4.2", "default") for n in names}}
    (tmp_path / "SilentSteno").mkdir()
    t = DirectoryTarget(str(tmp_path))
    mf.save(t, "SilentSteno", m)
    got = mf.load(t, "SilentSteno")
    assert not got.rebuilt and len(got.exported()) == 8_000 and got.owned_paths() == m.owned_paths()
    assert len(mf.read_sums(t, "SilentSteno")) == 40_000


@pytest.mark.parametrize("planted", ["Holiday.partial", "Holiday"])
def test_a_deeply_nested_folder_left_in_the_export_folder_does_not_stop_the_export(tmp_path, planted, caplog):
    """A stick's author leaves in SilentSteno/ a folder that the export cleans up as an interrupted one of its own
    (a '<name>.partial' folder, or a folder holding the '.steno-incomplete' marker) with 5,000 folders nested in
    it. Its removal recursed once per level: RecursionError ('maximum recursion depth exceeded') failed every
    export to that stick, as the job's and the stick's only message. Now the export goes on (the folder is left
    alone, saying why in one line) and the session lands."""
    lib = library(tmp_path, 1)
    out = tmp_path / "out"
    (out / "SilentSteno").mkdir(parents=True)
    nest_folders(out / "SilentSteno" / planted, 5_000)
    if not planted.endswith(".partial"):
        (out / "SilentSteno" / planted / MARKER).write_text("incomplete\n")
    try:
        with caplog.at_level(logging.INFO):
            res = _run(lib, make_config(tmp_path), out, [1])
    finally:
        if (out / "SilentSteno" / planted).exists():        # (pytest's own clean-up recurses too)
            subprocess.run(["rm", "-rf", str(out / "SilentSteno" / planted)], check=True)
    assert [r.ok for r in res] == [True], res
    root = out / "SilentSteno"
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0
    assert not [r for r in caplog.records if r.exc_info]


def test_an_export_folder_of_a_million_entries_is_refused_in_bounded_memory(tmp_path):
    """A stick's author fills SilentSteno/ with a million entries (hard links with 237-character names: no inode,
    no data, a few seconds to make). Every listing of the folder read them all at once: the export's peak RSS was
    about 450 MiB, over the daemon's MemoryMax=256M (killed by the kernel with every job, each time the stick came
    back). A recorder writes no folder of more than 50,000 entries: beyond that the listing stops, and the export
    is refused with one line saying why."""
    import sys
    from tests.smb.recorder import make_recorder
    db = make_recorder(tmp_path / "rec", sizes=(100_000, 100_500))
    db.close()
    out = tmp_path / "stick"
    root = out / "SilentSteno"
    root.mkdir(parents=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(1_000_000):
            if i % 60_000 == 0:                     # (ext4 allows 65,000 links to one file)
                src = out / f"x{i}"
                src.write_bytes(b"")
            os.link(src, f"{i:07d}" + "n" * 230, dst_dir_fd=fd)
    finally:
        os.close(fd)
    p = subprocess.run([sys.executable, "-c", _PEAK, "export", "--db", str(tmp_path / "rec" / "silent_steno.db"),
                        "--data-dir", str(tmp_path / "rec"), "--to", str(out), "--sessions", "all",
                        "--formats", "txt,audio", "--json"], capture_output=True, text=True, timeout=300)
    rss = int(p.stderr.rpartition("VmHWM ")[2]) // 1024
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert rss < 160, f"peak RSS {rss} MiB"
    message = p.stderr.rpartition("VmHWM ")[0].strip()
    assert p.returncode == 1 and message == ("export failed: SilentSteno holds more than 50,000 entries: not a "
                                             "folder this recorder writes"), p.stdout[-500:] + p.stderr[-500:]


_READ = ("import atexit, runpy, sys; atexit.register(lambda: sys.stderr.write('rchar %s' % "
         "open('/proc/self/io').read().split('rchar:')[1].split()[0])); "
         "sys.argv[0] = 'steno-exportd'; runpy.run_module('steno_exportd', run_name='__main__')")


def test_a_rebuild_reads_no_more_than_the_stick_holds(tmp_path):
    """A stick's author leaves SilentSteno/ without manifest.json and with a SHA256SUMS naming a sparse file of
    32 GiB (a moment to make on ext4, no space taken; 16 TiB works as well). The rebuild hashed every byte of it:
    the export read 32 GiB (hours per stick for 16 TiB, and no cancel or eject stops a hash). Now a rebuild reads
    no more than the filesystem holds in use: a file larger than that is not one we wrote, and is left unchecked;
    the sessions land."""
    import sys
    from tests.parts.loopfs import loop_fs
    from tests.smb.recorder import make_recorder
    db = make_recorder(tmp_path / "rec", sizes=(100_000, 100_500))
    db.close()
    with loop_fs(tmp_path, "ext4", 600) as (out, dev, img):       # (4 KiB blocks: files up to 16 TiB)
        root = out / "SilentSteno"
        (root / "Big").mkdir(parents=True)
        with open(root / "Big" / "audio.flac", "wb") as f:
            f.truncate(32 << 30)
        (root / "SHA256SUMS").write_text(f"{'0' * 64}  Big/audio.flac\n")
        p = subprocess.run([sys.executable, "-c", _READ, "export", "--db", str(tmp_path / "rec" / "silent_steno.db"),
                            "--data-dir", str(tmp_path / "rec"), "--to", str(out), "--sessions", "all",
                            "--formats", "txt,audio", "--json"], capture_output=True, text=True, timeout=600)
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    read = int(p.stderr.rpartition("rchar ")[2])
    assert read < 1 << 30, f"read {read / 2**30:.1f} GiB"
    assert json.loads(p.stdout)["ok"], p.stdout


def _folder_of_first(root, folder: str) -> None:
    m = json.loads((root / "manifest.json").read_text())
    m["sessions"][min(m["sessions"])]["folder"] = folder
    (root / "manifest.json").write_text(json.dumps(m))


def _sums_line(root, path: str) -> None:
    (root / "manifest.json").unlink()
    with open(root / "SHA256SUMS", "a") as f:
        f.write(f"{'0' * 64}  {path}\n")


def _two_exported(tmp_path):
    """(library, config, target folder): two sessions exported there as text."""
    lib = library(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    cfg = make_config(tmp_path)
    assert all(r.ok for r in _run(lib, cfg, out, [1, 2], formats=("txt",)))
    return lib, cfg, out


@pytest.mark.parametrize("plant", [lambda r: _folder_of_first(r, "../elsewhere"), lambda r: _folder_of_first(r, ""),
                                   lambda r: _folder_of_first(r, "a/b"), lambda r: _sums_line(r, "../audio.wav")],
                         ids=["manifest ..", "manifest empty", "manifest a/b", "sums .."])
def test_a_manifest_naming_a_folder_that_is_not_a_plain_name_is_not_ours(tmp_path, plant):
    """A stick's author edits manifest.json (or SHA256SUMS, with manifest.json gone) so that a session's folder is
    '../elsewhere', '', 'a/b', or a line names '../audio.wav': the export used the folder as given. '..' failed every
    export to the stick ('bad target path'), '' wrote the session's files into SilentSteno/ itself, 'a/b' into a
    folder nested in another. A folder that is not a plain name is not one we wrote: the entry is ignored, and
    each session lands in a folder of its own."""
    lib, cfg, out = _two_exported(tmp_path)
    root = out / "SilentSteno"
    plant(root)
    res = _run(lib, cfg, out, [1, 2], formats=("txt", "json"))
    assert [r.ok for r in res] == [True, True], res
    sessions = json.loads((root / "manifest.json").read_text())["sessions"]
    folders = sorted(s["folder"] for u, s in sessions.items() if not u.startswith("rebuilt:"))
    assert len(folders) == 2 and all(f and "/" not in f and f != ".." for f in folders), folders
    assert all(sorted(os.listdir(root / f)) == ["session.json", "transcript.txt"] for f in folders)
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == ["SHA256SUMS", "manifest.json"]
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0


def _first_entry(root, change) -> None:
    m = json.loads((root / "manifest.json").read_text())
    change(m["sessions"][min(m["sessions"])])
    (root / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("change,first", [
    (lambda e: e["files"].update({"transcript.txt": 5}), "transcript.txt: a file we did not write is in the way; "
                                                          "not overwritten"),
    (lambda e: e.update({"errors": 5}), "")], ids=["a file's record not a table", "errors not a table"])
def test_a_manifest_entry_of_the_wrong_shape_is_ignored_not_an_attribute_error(tmp_path, change, first):
    """A stick's author edits one session's entry in manifest.json: a file's record is a number, or its 'errors'
    is. Every export to the stick failed as a whole with "'int' object has no attribute 'get'" (or 'items'), the
    job's and the stick's only message. A record of the wrong shape is not ours: it is ignored (a file it named is
    then one we did not write, left alone and said so), and the rest lands, recorded and checkable."""
    lib, cfg, out = _two_exported(tmp_path)
    root = out / "SilentSteno"
    _first_entry(root, change)
    res = _run(lib, cfg, out, [1, 2], formats=("txt", "json"))
    assert [(r.ok, r.error) for r in res] == [(not first, first), (True, "")], res
    sessions = json.loads((root / "manifest.json").read_text())["sessions"]
    files = [sorted(s["files"]) for _, s in sorted(sessions.items())]
    assert files == [["session.json"] if first else ["session.json", "transcript.txt"],
                     ["session.json", "transcript.txt"]], sessions
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0


def test_the_manifest_is_one_line_per_session_and_an_indented_one_of_before_is_read(tmp_path):
    """manifest.json is encoded whole after every session: json.dumps(indent=1) ran the pure-Python encoder, whose
    cost grew with the square of an export's sessions (~0.4 s a save at 1,000 sessions on a Pi 4). Now one line per
    session by the C encoder: still JSON with sorted keys that any reader (and `python -m json.tool`) reads, each
    session's record on a line of its own; a manifest an older version wrote (indented) is read as before: a second
    export finds nothing new in it."""
    lib = library(tmp_path, 12)
    out = tmp_path / "out"
    out.mkdir()
    cfg = make_config(tmp_path)
    res = _run(lib, cfg, out, range(1, 13), formats=("txt", "audio"))
    assert all(r.ok and not r.skipped for r in res), res
    path = out / "SilentSteno" / "manifest.json"
    text = path.read_text()
    m = json.loads(text)
    assert len(m["sessions"]) == 12
    lines = text.splitlines()
    for uuid, record in m["sessions"].items():
        mine = [line for line in lines if line.lstrip().startswith(json.dumps(uuid) + ": ")]
        assert len(mine) == 1, (uuid, mine)
        assert json.loads("{" + mine[0].rstrip(",") + "}") == {uuid: record}
    assert len(lines) == 12 + 9, text[:2000]
    # an older version's manifest (indented, pure-Python encoder): read as before
    path.write_text(json.dumps(m, indent=1, sort_keys=True, ensure_ascii=False))
    assert all(r.skipped for r in _run(lib, cfg, out, range(1, 13), formats=("txt", "audio")))
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out / "SilentSteno").returncode == 0


@pytest.mark.parametrize("temp", [["a.part"], {"a": 1}, 7])
def test_a_resume_record_of_the_wrong_shape_in_the_manifest_is_not_ours(tmp_path, temp):
    """Whoever can write the export's folder (a share, a stick) can edit manifest.json: a record of a file being
    resumed whose temp name is a JSON list or object failed the update of that session's folder with 'unhashable
    type' (a TypeError, a traceback), at every export. Such a record is not ours: left out, the session updated."""
    lib = library(tmp_path, 1)
    out = tmp_path / "out"
    out.mkdir()
    cfg = make_config(tmp_path)
    assert all(r.ok for r in _run(lib, cfg, out, [1]))
    root = out / "SilentSteno"
    folder = next(p.name for p in root.iterdir() if p.is_dir())
    m = json.loads((root / "manifest.json").read_text())
    m["partial"] = {f"{folder}/audio.wav": {"uuid": next(iter(m["sessions"])), "folder": folder, "temp": temp}}
    (root / "manifest.json").write_text(json.dumps(m))
    victim = root / folder / "audio.wav"
    victim.unlink()
    res = _run(lib, cfg, out, [1])
    assert [(r.ok, r.skipped) for r in res] == [(True, False)], [r.error for r in res]
    assert victim.exists()
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root).returncode == 0
