"""`export` and `verify` subcommands, on an in-memory library of real sessions."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from steno_exportd import cli
from steno_exportd.library import Library
from tests.fakes import library


@pytest.fixture
def fake_lib(tmp_path, monkeypatch):
    lib = library(tmp_path, 2)
    monkeypatch.setattr(Library, "from_config", staticmethod(lambda cfg: lib))
    return lib


def test_export_then_verify_cli(tmp_path, fake_lib, capsys):
    out = tmp_path / "out"
    out.mkdir()
    rc = cli.main(["export", "--db", str(tmp_path / "rec" / "db"), "--to", str(out), "--sessions", "all",
                   "--formats", "txt,audio", "--json"])
    cap = capsys.readouterr()
    assert cap.out, cap.err
    data = json.loads(cap.out)
    assert rc == 0 and data["ok"] and len(data["sessions"]) == 2
    assert cli.main(["verify", str(out)]) == 0
    assert "4 files verified" in capsys.readouterr().out
    extra = next(p for p in (out / "SilentSteno").iterdir() if p.is_dir()) / "notes.txt"
    extra.write_text("mine")
    victim = next((out / "SilentSteno").rglob("transcript.txt"))
    victim.write_text("changed")
    assert cli.main(["verify", str(out), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["changed"]) == 1 and rep["changed"][0].endswith("transcript.txt")
    assert rep["extra"] and rep["extra"][0].endswith("notes.txt")
    rc = cli.main(["export", "--db", str(tmp_path / "rec" / "db"), "--to", str(out), "--formats", "txt,audio"])
    assert rc == 0
    assert cli.main(["verify", str(out)]) == 0


def test_export_cli_bad_format(tmp_path, fake_lib, capsys):
    assert cli.main(["export", "--to", str(tmp_path), "--formats", "nope"]) == 2


def test_export_refuses_the_recorder_data_dir(tmp_path, fake_lib, capsys):
    rc = cli.main(["export", "--db", str(tmp_path / "rec" / "db"), "--to", str(tmp_path / "rec")])
    assert rc == 1 and "recorder's data folder" in capsys.readouterr().err



@pytest.mark.parametrize("name", ["backup.zip", "backup.tar.gz"])
def test_export_refuses_an_archive_in_the_recorder_data_dir(tmp_path, fake_lib, capsys, name):
    """The recorder's folders are never a target: a folder there was refused, an archive written into it was not (an
    admin's --to /var/lib/silentsteno/data/backup.zip wrote the ZIP beside the recordings)."""
    before = sorted(p.name for p in (tmp_path / "rec").iterdir())
    rc = cli.main(["export", "--db", str(tmp_path / "rec" / "db"), "--to", str(tmp_path / "rec" / name)])
    assert rc == 1 and "recorder's data folder" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == before       # nothing written there


# What the offline export's process must not import: the daemon's (its event loop, the render worker's process pool,
# TLS, the web server, D-Bus, the schedules' cron parser, mail) and the heavy renderers of formats not asked for.
NOT_FOR_AN_EXPORT = ("asyncio", "multiprocessing", "ssl", "aiohttp", "dbus_fast", "croniter", "aiosmtplib",
                     "reportlab", "docx", "openpyxl", "steno_exportd.core", "steno_exportd.daemon",
                     "steno_exportd.web", "steno_exportd.dbus")


def test_the_export_command_starts_without_the_daemons_modules(tmp_path, demo_library):
    """`steno-exportd export` of text and recordings, as a person runs it: every file lands and checks out, and its
    process never imports the daemon's event loop, process pool or servers (start-up the export does not need:
    each costs the command's start, on a Pi several times what it costs here)."""
    db = demo_library(tmp_path / "rec", sessions=7, small=False)     # (six of them exportable)
    out = tmp_path / "stick"
    out.mkdir()
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "steno_exportd", "export", "--db", str(db),
                        "--data-dir", str(db.parent), "--to", str(out), "--sessions", "all",
                        "--formats", "txt,audio"], capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6 exported, 0 already there, 0 failed" in r.stdout
    sums = out / "SilentSteno" / "SHA256SUMS"
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=sums.parent).returncode == 0
    assert len([n for n in sums.read_text().splitlines() if n.endswith(".txt")]) == 6
    imported = {line.rpartition("|")[2].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "steno_exportd.engine.export" in imported        # (what -X importtime lists)
    unwanted = sorted(m for m in imported if m.split(".")[0] in NOT_FOR_AN_EXPORT or m in NOT_FOR_AN_EXPORT
                      or any(m.startswith(f"{p}.") for p in NOT_FOR_AN_EXPORT))
    assert not unwanted, unwanted
