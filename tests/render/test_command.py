"""`steno-exportd render` end to end: a demo recorder library, the CLI as a subprocess."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.parts import require

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "steno_exportd", *args], capture_output=True, cwd=ROOT,
                          timeout=120, check=check)


def test_unknown_format_and_template_list_valid_names(tmp_path):
    p = run("render", "--db", str(tmp_path / "x.db"), "--session", "1", "--format", "rtf", "-o", "-")
    assert p.returncode == 1 and b"valid formats: txt, md, html" in p.stderr
    p = run("render", "--db", str(tmp_path / "x.db"), "--session", "1", "--format", "pdf", "--template", "fancy",
            "-o", "-")
    assert p.returncode == 1 and b"summary, detailed, action_items, transcript" in p.stderr


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    """A demo recorder library written by `steno-exportd demo-data`."""
    have = all(importlib.util.find_spec(m) for m in ("steno_exportd.library", "steno_exportd.demo"))
    require(have, "steno_exportd.library and steno_exportd.demo (issue 1; merge main)")
    out = tmp_path_factory.mktemp("demo")
    run("demo-data", "--out", str(out), "--sessions", "4", "--seed", "1", check=True)
    from steno_exportd.library import Library
    lib = Library(str(out / "silent_steno.db"))
    try:
        sessions = lib.list_sessions()
    finally:
        lib.close()
    return out / "silent_steno.db", sessions


@pytest.mark.parametrize("fmt", ["txt", "md", "html", "json", "srt", "vtt", "csv", "pdf", "docx", "ics"])
def test_render_a_demo_session_to_a_file(demo_db, tmp_path, fmt):
    db, sessions = demo_db
    s = sessions[0]
    out = tmp_path / f"out.{fmt}"
    p = run("render", "--db", str(db), "--session", s.uuid, "--format", fmt, "-o", str(out))
    assert p.returncode == 0, p.stderr.decode()
    data = out.read_bytes()
    assert data and not [f for f in os.listdir(tmp_path) if f.startswith(".render-")]
    if fmt == "pdf":
        assert data.startswith(b"%PDF")
    if fmt == "txt":
        assert s.title in data.decode()


def test_render_merged_to_stdout(demo_db):
    db, sessions = demo_db
    ids = ",".join(str(s.id) for s in sessions[:3])
    p = run("render", "--db", str(db), "--merge", ids, "--format", "md", "--template", "summary", "-o", "-")
    assert p.returncode == 0, p.stderr.decode()
    text = p.stdout.decode()
    assert "## Contents" in text
    for s in sessions[:3]:
        assert f"(#s{s.id})" in text and f'<a id="s{s.id}"></a>' in text


def test_unknown_session_is_an_error(demo_db):
    db, _ = demo_db
    p = run("render", "--db", str(db), "--session", "does-not-exist", "--format", "txt", "-o", "-")
    assert p.returncode == 1 and p.stderr
