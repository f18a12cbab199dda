"""`demo-data`: a real library the daemon reads, with real sound, the same for the same seed."""
from __future__ import annotations

import array
import hashlib
import math
import re
import sqlite3
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from steno_exportd.demo import recorder as demo
from steno_exportd.library import Library
from tests import parts

FAT_ILLEGAL = set(':/\\?*"<>|')


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    stats = demo.generate(out, sessions=12, seed=1)
    assert stats["sessions"] == 12
    return out


@pytest.fixture(scope="module")
def sessions(demo_dir):
    lib = Library(demo_dir / demo.DB_NAME)
    yield {s.id: lib.get_session(s.id) for s in lib.list_sessions()}
    lib.close()


def by_title(sessions, pattern):
    found = [s for s in sessions.values() if re.search(pattern, s.title)]
    assert len(found) == 1, pattern
    return found[0]


def test_twelve_sessions_readable_and_the_rest_complete(sessions):
    assert len(sessions) == 12
    problem = [s for s in sessions.values() if s.problems]
    assert [s.title for s in problem] == ["Customer call: Northwind pilot"]
    for s in sessions.values():
        assert 2 <= len(s.participants) <= 6
        if s.summary.status == "completed" and s.segments and not s.problems:
            assert s.summary_text and s.action_items and s.topics and s.audio is not None
            assert any(a.owner and a.due for a in s.action_items)
            assert all(p.name and not p.name.startswith("SPEAKER_") for p in s.participants)


def test_the_awkward_sessions_are_there(sessions):
    long = by_title(sessions, "Quarterly roadmap")
    words = sum(len(seg.text.split()) for seg in long.segments)
    assert long.duration_seconds == 7200 and len(long.segments) == 2000 and 17_000 <= words <= 24_000
    assert len(long.participants) == 6
    short = by_title(sessions, "Quick sync")
    assert short.duration_seconds == 60
    intl = by_title(sessions, "Встреча")
    text = intl.title + " ".join(p.name for p in intl.participants) + " ".join(s.text for s in intl.segments)
    assert re.search("[А-я]", text) and re.search("[Α-ω]", text) and re.search("[éüñçåřö]", text)
    assert re.search("[\u3040-\u30ff\u4e00-\u9fff]", text)
    fat = [s for s in sessions.values() if FAT_ILLEGAL <= set(s.title)]
    assert len(fat) == 1 and fat[0].summary.exportable
    rec = [s for s in sessions.values() if s.summary.status == "recording"]
    assert len(rec) == 1 and not rec[0].summary.exportable and rec[0].summary.end_time is None
    missing = by_title(sessions, "Northwind")
    assert missing.summary.status == "completed" and missing.summary.exportable and missing.audio is None
    assert [p.field for p in missing.problems] == ["audio_file_path"] and not missing.problems[0].fatal
    empty = [s for s in sessions.values() if not s.segments]
    assert len(empty) == 1 and empty[0].summary.exportable and empty[0].audio is not None


def test_audio_is_real_sound_with_recorded_sizes(demo_dir, sessions):
    db = sqlite3.connect(f"file:{demo_dir / demo.DB_NAME}?mode=ro", uri=True)
    total = 0
    kinds = set()
    for s in sessions.values():
        if s.audio is None:
            continue
        size = s.audio.path.stat().st_size
        total += size
        kinds.add(s.audio.file_format)
        assert s.audio.size == size == s.summary.audio_size
        (fi_size, fi_sum), = db.execute("SELECT size_bytes, checksum FROM file_info WHERE session_id = ?"
                                        " AND file_type = 'audio'", (s.id,))
        assert fi_size == size and fi_sum == hashlib.sha256(s.audio.path.read_bytes()).hexdigest()
        assert s.audio.checksum == fi_sum
    assert kinds == {"flac", "wav"}
    assert total <= 150_000_000


def _rms(pcm: bytes, width: int) -> float:
    a = array.array("h" if width == 2 else "B", pcm)
    vals = [(x - 128) * 256 if width == 1 else x for x in a[::7]]
    return math.sqrt(sum(v * v for v in vals) / max(1, len(vals)))


def _loud_fraction(w: wave.Wave_read, windows: int = 40) -> float:
    """Share of 0.25 s windows (spread by the golden ratio, so never in step with
    the speaker turns) that hold sound rather than room noise."""
    n = w.getnframes()
    size = w.getframerate() // 4
    loud = 0
    for k in range(windows):
        w.setpos(int((n - size) * ((k * 0.6180339887) % 1.0)))
        loud += _rms(w.readframes(size), w.getsampwidth()) > 1000
    return loud / windows


def test_wav_decodes_to_sound_of_the_right_length(sessions):
    wavs = [s for s in sessions.values() if s.audio and s.audio.file_format == "wav" and s.segments]
    assert wavs
    for s in wavs:
        with wave.open(str(s.audio.path)) as w:
            seconds = w.getnframes() / w.getframerate()
            assert abs(seconds - s.duration_seconds) < 1
            assert _loud_fraction(w) > 0.5, s.title             # speech-like sound, not silence


def test_flac_decodes_with_the_flac_tool(sessions, tmp_path):
    parts.require_tool("flac")
    flacs = [s for s in sessions.values() if s.audio and s.audio.file_format == "flac" and s.segments]
    assert flacs
    for s in flacs:
        r = subprocess.run(["flac", "-t", "-s", str(s.audio.path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        out = tmp_path / f"{s.id}.wav"
        subprocess.run(["flac", "-d", "-s", "-f", "-o", str(out), str(s.audio.path)], check=True)
        with wave.open(str(out)) as w:
            if s.duration_seconds is not None:
                assert abs(w.getnframes() / w.getframerate() - s.duration_seconds) < 1
            assert _loud_fraction(w) > 0.5, s.title


def test_same_seed_same_library_other_seed_differs(tmp_path):
    a, b, c = (demo.generate(tmp_path / n, sessions=8, seed=s) for n, s in (("a", 5), ("b", 5), ("c", 6)))
    assert a == b

    def fingerprint(d: Path) -> tuple:
        conn = sqlite3.connect(d / demo.DB_NAME)
        dump = "\n".join(conn.iterdump())
        conn.close()
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((d / "audio").iterdir())}
        return dump, files
    assert fingerprint(tmp_path / "a") == fingerprint(tmp_path / "b")
    assert fingerprint(tmp_path / "a") != fingerprint(tmp_path / "c")
    assert not list((tmp_path / "a").glob("*.tmp")) and not list((tmp_path / "a" / "audio").glob("*.tmp"))


def test_database_has_exactly_the_upstream_schema(demo_dir, tmp_path):
    ref = sqlite3.connect(tmp_path / "ref.db")
    ref.executescript(demo.schema_sql())
    got = sqlite3.connect(demo_dir / demo.DB_NAME)
    q = "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
    assert got.execute(q).fetchall() == ref.execute(q).fetchall()
    assert got.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_cli_and_small_mode(tmp_path):
    r = subprocess.run([sys.executable, "-m", "steno_exportd", "demo-data", "--out", str(tmp_path / "s"),
                        "--sessions", "300", "--seed", "2", "--small"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "300 sessions" in r.stdout
    lib = Library(tmp_path / "s" / demo.DB_NAME)
    listed = lib.list_sessions()
    assert len(listed) == 300
    assert sum(s.exportable for s in listed) > 250
    s = lib.get_session(listed[-1].id)
    assert s.audio is not None and s.audio.path.stat().st_size > 1000
    assert len(list((tmp_path / "s" / "audio").iterdir())) == 2


def test_never_replaces_a_real_recorder_database(tmp_path):
    from tests.recorder_db import RecorderDB
    real = RecorderDB(tmp_path / "real")
    real.session(title="A real meeting")
    real.close()
    before = (tmp_path / "real" / demo.DB_NAME).read_bytes()
    r = subprocess.run([sys.executable, "-m", "steno_exportd", "demo-data", "--out", str(tmp_path / "real")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not a demo library" in r.stderr
    assert (tmp_path / "real" / demo.DB_NAME).read_bytes() == before
    demo.generate(tmp_path / "d", sessions=7, seed=1, small=True)
    demo.generate(tmp_path / "d", sessions=7, seed=2, small=True)       # a demo library is replaced
    assert len(Library(tmp_path / "d" / demo.DB_NAME).list_sessions()) >= 7


def test_fewer_sessions_still_hold_every_awkward_case(tmp_path):
    demo.generate(tmp_path, sessions=1, seed=9, small=True)
    listed = Library(tmp_path / demo.DB_NAME).list_sessions()
    statuses = [s.status for s in listed]
    assert len(listed) >= 6 and "recording" in statuses
    assert any(FAT_ILLEGAL <= set(s.title) for s in listed)
