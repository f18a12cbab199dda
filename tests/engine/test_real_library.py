"""The export engine end to end on a real demo library with the real renderers."""
from __future__ import annotations

import subprocess

import pytest

from steno_exportd import cli, demo


@pytest.fixture(scope="module")
def demo_lib(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    demo.generate(d, sessions=8, seed=3)
    return d


def export(demo_lib, out, *args):
    return cli.main(["export", "--db", str(demo_lib / demo.DB_NAME), "--data-dir", str(demo_lib),
                     "--to", str(out), *args])


def test_changing_formats_between_exports_keeps_earlier_files_ours(demo_lib, tmp_path, capsys):
    out = tmp_path / "stick"
    out.mkdir()
    export(demo_lib, out, "--sessions", "all", "--formats", "txt,pdf,csv,audio")
    first = capsys.readouterr().out
    assert "0 already there" in first
    export(demo_lib, out, "--sessions", "new", "--formats", "md,json")
    second = capsys.readouterr().out
    assert "in the way" not in second, second
    # back to the first formats: nothing new to write, nothing foreign in the way
    export(demo_lib, out, "--sessions", "new", "--formats", "txt,pdf,csv,audio")
    third = capsys.readouterr().out
    assert "in the way" not in third, third
    assert third.splitlines()[-1].startswith("0 exported"), third
    sums = (out / "SilentSteno" / "SHA256SUMS").read_text()
    for name in ("transcript.txt", "report-detailed.pdf", "transcript.csv", "transcript.md", "session.json"):
        assert f"/{name}\n" in sums, name
    r = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out / "SilentSteno",
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_session_without_audio_is_reported_once_not_rewritten_every_time(demo_lib, tmp_path, capsys):
    out = tmp_path / "stick"
    out.mkdir()
    export(demo_lib, out, "--sessions", "all", "--formats", "txt,audio")
    first = capsys.readouterr().out
    assert "no usable audio file" in first      # the demo has a session whose recording is missing
    export(demo_lib, out, "--sessions", "new", "--formats", "txt,audio")
    again = capsys.readouterr().out
    assert again.splitlines()[-1].startswith("0 exported"), again
    assert "FAILED" not in again
