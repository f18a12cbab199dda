"""A small real recorder (database + recordings) and one push of it through the engine into smb:<remote>."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess
from typing import Any, Callable

from steno_exportd import config
from steno_exportd.config import SmbRemote
from steno_exportd.engine.export import SimpleSpec, run_export
from steno_exportd.engine.options import ExportOptions
from steno_exportd.engine.registry import local
from steno_exportd.engine.targets import TEMP_PREFIX
from steno_exportd.library import Library
from steno_exportd.smb.push import SmbKind
from tests.parts.smbdata import _pseudo
from tests.recorder_db import RecorderDB

FORMATS = ("txt", "html", "audio")


def make_recorder(root: pathlib.Path, sizes: tuple[int, ...] = (3 << 20, (3 << 20) + 1000, (3 << 20) + 2000),
                  seed: int = 0) -> RecorderDB:
    """Sessions "Meeting 1..n", each with a short transcript and a recording of the given size (another
    ``seed``: other recordings and, as on another recorder, other session uuids)."""
    db = RecorderDB(root)
    for i, size in enumerate(sizes):
        other = {"uuid": f"{i + 1:08x}-{seed:04x}-4222-8333-{i + 1:012x}"} if seed else {}
        sid = db.session(title=f"Meeting {i + 1}", audio_format="flac", audio_size_bytes=size, **other,
                         start_time=f"2026-11-{10 + i:02d} 09:00:00.000000",
                         audio_file_path=db.audio(f"meeting-{i + 1}.flac", _pseudo(size, seed + i)))
        for k in range(3):
            db.entry(sid, k * 10.0, k * 10.0 + 9, f"Session {i + 1}, line {k + 1}: hello from the recorder.")
    return db


def recorder_config(db_path: pathlib.Path, state: pathlib.Path, remote: SmbRemote, folder: str) -> config.Config:
    return config.from_dict({
        "recorder": {"db_path": str(db_path)},
        "state": {"dir": str(state), "runtime_dir": str(state / "run")},
        "usb": {"enabled": False}, "http": {"enabled": False},
        "smb": {"recorder_folder": folder, "remotes": [dataclasses.asdict(remote)]}})


def remote_toml(remote: SmbRemote, **over: Any) -> str:
    """The [[smb.remotes]] table of a daemon's config file for ``remote`` (``over``: further keys)."""
    r = dict(name=remote.name, server=remote.server, port=remote.port, share=remote.share, path=remote.path,
             username=remote.username, password_file=remote.password_file, timeout=remote.timeout, **over)
    return "\n[[smb.remotes]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in r.items()) + "\n"


class Progress:
    """What a job's progress would show: the last fields, and every bytes_done reported."""

    def __init__(self, cancel_when: Callable[[dict], bool] = lambda f: False) -> None:
        self.fields: dict = {}
        self.cancelled = False
        self._cancel_when = cancel_when

    def update(self, force: bool = False, **fields: Any) -> None:
        self.fields.update(fields)
        if self._cancel_when(self.fields):
            self.cancelled = True


def push(cfg: config.Config, ids: Any = None, formats: tuple[str, ...] = FORMATS, *, recorder_id: str | None = None,
         sleep: Callable[[float], None] | None = None, progress: Any = None, kind: SmbKind | None = None,
         options: ExportOptions = ExportOptions(), remote: str = "office") -> list:
    """One push of sessions ``ids`` (default: all) to smb:<remote>, as a job runs it (recorder_id None:
    this machine's)."""
    targets = local()
    targets.register(kind or SmbKind(recorder_id=recorder_id, sleep=sleep))
    lib = Library.from_config(cfg)
    try:
        if ids is None:
            ids = [s.id for s in lib.list_sessions(exportable_only=True)]
        return run_export(lib, SimpleSpec(f"smb:{remote}", tuple(ids), tuple(formats), options,
                                          target_name=f"smb:{remote}"), cfg, progress, targets=targets)
    finally:
        lib.close()


def on_nas(folder: pathlib.Path) -> dict[str, str]:
    """rel -> sha256 of every file below a recorder folder on the NAS's disk."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def stamps(folder: pathlib.Path) -> dict[str, int]:
    """rel -> mtime_ns of every session file below a recorder folder (what a re-send would change)."""
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file() and p.parent != folder}


def assert_landed(folder: pathlib.Path, db: RecorderDB, sessions: int | None = None,
                  formats: tuple[str, ...] = FORMATS) -> None:
    """Checked on the NAS's disk: sha256sum -c passes, every recording is byte-exact, no temp file is left."""
    r = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    listed = (folder / "SHA256SUMS").read_text().splitlines()
    got = on_nas(folder)
    recordings = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (db.root / "audio").iterdir()}
    landed = [h for rel, h in got.items() if rel.endswith(".flac")]
    n = sessions if sessions is not None else len(recordings)
    if "audio" in formats:
        assert len(landed) == n and set(landed) <= recordings, (sorted(got), n)
    assert len([x for x in listed if x.endswith(".txt")]) == n, listed
    assert not [r for r in got if r.rsplit("/", 1)[-1].startswith(TEMP_PREFIX)], sorted(got)
    assert not [r for r in got if ".partial/" in r], sorted(got)
    assert os.path.isfile(folder / "manifest.json")


def assert_stopped_by_folder_in_the_way(folder: pathlib.Path, name: str, db: RecorderDB,
                                        push_once: Callable[[], Any]) -> None:
    """A push (``push_once``) with someone's folder ``name`` (holding their theirs.txt) where it keeps its manifest.json
    or SHA256SUMS, a new session to send: it stops before sending anything, naming that folder, left as it is."""
    import pytest
    from steno_exportd.errors import TargetError
    db.session(title="Late", audio_format="flac", audio_size_bytes=50_000,
               audio_file_path=db.audio("late.flac", _pseudo(50_000, 9)))
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(TargetError) as e:
        push_once()
    assert f"a folder named {name!r} is in the way" in str(e.value), str(e.value)
    assert (folder / name / "theirs.txt").read_text() == "a person's own file\n"
    assert sorted(p.name for p in folder.iterdir()) == before          # nothing sent
