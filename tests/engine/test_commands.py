"""`export` and `verify` subcommands, on an in-memory library of real sessions."""
from __future__ import annotations

import json

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
