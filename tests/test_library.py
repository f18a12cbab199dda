"""The recorder library on real SQLite files made from the upstream schema."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from steno_exportd import config
from steno_exportd.errors import NotFoundError, SourceError
from steno_exportd.library import Library, SessionsDelta, parse_datetime
from tests import parts
from tests.recorder_db import RecorderDB, loose_schema

UTC = dt.timezone.utc
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def rec(tmp_path):
    r = RecorderDB(tmp_path / "data")
    yield r
    r.close()


@pytest.fixture
def loose(tmp_path):
    r = RecorderDB(tmp_path / "loose", schema=loose_schema())
    yield r
    r.close()


def fields(session) -> dict[str, str]:
    return {p.field: p.reason for p in session.problems}


def good_session(rec: RecorderDB, **cols) -> int:
    cols.setdefault("audio_file_path", rec.audio(f"good{rec._n + 1}.wav"))
    sid = rec.session(**cols)
    rec.participant(sid, "S0", "Alice Martin", role="PM", total_speaking_time_seconds=4.0, speaking_percentage=66.7)
    rec.participant(sid, "S1", "Bob Okafor")
    rec.entry(sid, 0.0, 2.0, "Good morning everyone", "S0")
    rec.entry(sid, 2.5, 4.0, "Morning", "S1")
    rec.entry(sid, 4.5, 6.5, "Let us start with the budget", "S0")
    rec.analysis(sid, "summary", "We talked about the budget.")
    rec.analysis(sid, "action_items", "2 items", action_items=json.dumps(
        ["Send the notes", {"text": "Book the room", "owner": "Bob Okafor", "due": "2026-10-08"}]))
    rec.analysis(sid, "topics", "budget", key_topics=json.dumps(["budget", "rooms"]))
    return sid


# ---- a complete session ------------------------------------------------------------------

def test_complete_session_reads_every_part(rec):
    sid = good_session(rec, title="Budget review")
    rec.file(sid, "exports/notes.txt", "transcript", 5)
    (rec.root / "exports").mkdir()
    (rec.root / "exports" / "notes.txt").write_text("notes")
    lib = Library(rec.path)
    s = lib.get_session(sid)
    assert s.problems == ()
    assert s.title == "Budget review" and s.summary.status == "completed" and s.summary.exportable
    assert s.start_time == dt.datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
    assert [seg.speaker_name for seg in s.segments] == ["Alice Martin", "Bob Okafor", "Alice Martin"]
    assert [seg.index for seg in s.segments] == [0, 1, 2]
    alice, bob = s.participants
    assert (alice.name, alice.role, alice.word_count, alice.speaking_seconds, alice.speaking_percentage) == (
        "Alice Martin", "PM", 9, 4.0, 66.7)
    assert bob.word_count == 1 and bob.speaking_seconds == pytest.approx(1.5)
    assert s.summary_text == "We talked about the budget."
    assert [a.text for a in s.action_items] == ["Send the notes", "Book the room"]
    assert s.action_items[1].owner == "Bob Okafor" and s.action_items[1].due == dt.date(2026, 10, 8)
    assert s.topics == ("budget", "rooms")
    assert s.audio is not None and s.audio.path == (rec.root / "audio" / "good1.wav").resolve()
    assert s.audio.size == s.audio.path.stat().st_size and s.audio.mime_type == "audio/wav"
    assert [f.filename for f in s.files] == ["notes.txt"] and s.files[0].path.read_text() == "notes"
    assert s.summary.tags == ("demo",)


def test_lookup_by_id_uuid_and_short_id(rec):
    """One rule: an id, a whole uuid or a short id (the uuid's first 8 hex digits); never a prefix."""
    a = good_session(rec, uuid="abcdef12-0000-4000-8000-000000000001")
    b = good_session(rec, uuid="abcdef34-0000-4000-8000-000000000002")
    c = good_session(rec, uuid="abcdef34-1111-4000-8000-000000000003")
    lib = Library(rec.path)
    assert lib.get_session(a).id == a
    assert lib.get_session(str(b)).id == b
    assert lib.get_session("ABCDEF34-0000-4000-8000-000000000002").id == b
    assert lib.get_session("abcdef12").id == a
    assert lib.get_session(" ABCDEF12 ").id == a
    with pytest.raises(NotFoundError, match="ambiguous"):
        lib.get_session("abcdef34")             # the short id of b and c
    for prefix in ("abcdef", "abcdef1", "abcdef12-0000", "abcdef120000"):
        with pytest.raises(NotFoundError, match="no session"):
            lib.get_session(prefix)
    with pytest.raises(NotFoundError):
        lib.get_session(999)
    with pytest.raises(NotFoundError):
        lib.get_session("ffff0000")
    with pytest.raises(NotFoundError):
        lib.get_session("9" * 100_000)          # bounded: never an int conversion of a huge text
    assert lib.get_session(f"{c}").id == c


def test_from_config_uses_recorder_section(rec, tmp_path):
    good_session(rec)
    other = tmp_path / "elsewhere"
    (other / "audio").mkdir(parents=True)
    shutil.copy(rec.root / "audio" / "good1.wav", other / "audio" / "good1.wav")
    toml = tmp_path / "c.toml"
    toml.write_text(f'[recorder]\ndb_path = "{rec.path}"\ndata_dir = "{other}"\nlock_timeout = 1.5\n')
    lib = Library.from_config(config.load(toml))
    assert lib.lock_timeout == 1.5 and lib.data_dir == other
    assert lib.get_session(1).audio.path == (other / "audio" / "good1.wav").resolve()


def test_listing_exportable_only_and_order(rec):
    a = good_session(rec, start_time="2026-10-01 09:00:00.000000")
    b = good_session(rec, start_time="2026-10-03 09:00:00.000000", status="archived")
    c = rec.session(start_time="2026-10-02 09:00:00.000000", status="recording", end_time=None)
    lib = Library(rec.path)
    assert [s.id for s in lib.list_sessions()] == [b, c, a]
    assert [s.id for s in lib.list_sessions(exportable_only=True)] == [b, a]


# ---- bad input, one session at a time ----------------------------------------------------------

def test_missing_audio_is_reported_and_other_files_still_exported(rec):
    sid = good_session(rec)
    rec.conn.execute("UPDATE sessions SET audio_file_path = 'audio/gone.flac' WHERE id = ?", (sid,))
    (rec.root / "notes.txt").write_text("x")
    rec.file(sid, "notes.txt")
    s = Library(rec.path).get_session(sid)
    assert s.audio is None
    (p,) = s.problems
    assert p.field == "audio_file_path" and "missing" in p.reason and "gone.flac" in p.reason and not p.fatal
    assert s.summary.exportable and len(s.segments) == 3 and s.files[0].filename == "notes.txt"


def test_audio_paths_escaping_the_data_dir(rec, tmp_path):
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"secret")
    (rec.root / "audio" / "link.wav").symlink_to(outside)
    (rec.root / "audio" / "inside.wav").write_bytes(b"ok")
    (rec.root / "audio" / "innerlink.wav").symlink_to(rec.root / "audio" / "inside.wav")
    dotdot = good_session(rec, audio_file_path="audio/../../secret.wav")
    absolute = good_session(rec, audio_file_path=str(outside))
    link = good_session(rec, audio_file_path="audio/link.wav")
    abs_inside = good_session(rec, audio_file_path=str(rec.root / "audio" / "inside.wav"))
    inner = good_session(rec, audio_file_path="audio/innerlink.wav")
    lib = Library(rec.path)
    for sid, why in ((dotdot, "'..'"), (absolute, "absolute path"), (link, "symlink")):
        s = lib.get_session(sid)
        assert s.audio is None, sid
        reason = fields(s)["audio_file_path"]
        assert "escapes the data dir" in reason and why in reason, reason
        assert len(s.segments) == 3
    assert lib.get_session(abs_inside).audio.path == (rec.root / "audio" / "inside.wav").resolve()
    assert lib.get_session(inner).problems == ()


def test_file_info_escaping_or_missing_is_reported(rec, tmp_path):
    sid = good_session(rec)
    rec.file(sid, "../../etc/passwd")
    rec.file(sid, "exports/nothere.pdf", "export")
    s = Library(rec.path).get_session(sid)
    reasons = [p.reason for p in s.problems]
    assert any("escapes the data dir" in r for r in reasons)
    assert any("file missing" in r for r in reasons)
    assert [f.path for f in s.files] == [None, None]
    assert s.audio is not None


def test_malformed_json_columns(rec):
    sid = good_session(rec, tags="[not json", session_metadata="[" * 20_000)
    rec.analysis(sid, "insights", "x", action_items="oops", key_topics='{"a": 1}')
    other = good_session(rec)
    lib = Library(rec.path)
    s = lib.get_session(sid)
    f = fields(s)
    assert "malformed JSON" in f["tags"] and "malformed JSON" in f["session_metadata"]
    assert "nested too deeply" in f["session_metadata"]     # json.loads raised RecursionError: the read failed
    assert any(k.endswith(".action_items") and "malformed JSON" in v for k, v in f.items())
    assert any(k.endswith(".key_topics") and "expected a JSON list" in v for k, v in f.items())
    assert s.summary.tags == () and s.summary_text == "We talked about the budget." and len(s.action_items) == 2
    listed = {x.id: x for x in lib.list_sessions()}
    assert "tags" in {p.field for p in listed[sid].problems}
    assert lib.get_session(other).problems == ()


def test_datetime_formats_and_unparseable(rec):
    a = good_session(rec, start_time="2026-01-02 03:04:05.123456")
    b = good_session(rec, start_time="2026-01-02T03:04:05.123456")
    c = good_session(rec, start_time="2026-01-02T05:04:05.123456+02:00")
    d = good_session(rec, start_time="2026-01-02T03:04:05.123456Z")
    bad = good_session(rec, start_time="yesterday", updated_at="2026-13-45 99:00:00")
    lib = Library(rec.path)
    want = dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    for sid in (a, b, c, d):
        s = lib.get_session(sid)
        assert s.start_time == want and s.start_time.utcoffset() == dt.timedelta(0) and s.problems == ()
    s = lib.get_session(bad)
    assert s.start_time is None and s.updated_at is None
    assert "yesterday" in fields(s)["start_time"] and "updated_at" in fields(s)
    assert len(s.segments) == 3 and s.summary.exportable
    assert parse_datetime("2026-01-02") == dt.datetime(2026, 1, 2, tzinfo=UTC)


def test_nulls_where_values_are_expected(loose):
    sid = loose.session(title=None, start_time=None, status=None, updated_at=None)
    loose.entry(sid, 0.0, 1.0, None, speaker_id=None)
    loose.entry(sid, 2.0, None, "no end")
    loose.entry(sid, None, 3.0, "no start")
    ok = good_session(loose)
    lib = Library(loose.path)
    s = lib.get_session(sid)
    f = fields(s)
    assert {"title", "start_time", "status", "updated_at"} <= set(f)
    assert s.title == f"Session {sid}" and s.summary.status == "unknown" and not s.summary.exportable
    assert [seg.text for seg in s.segments] == ["", "no end"]
    assert s.segments[0].speaker_name == "Unknown speaker" and s.segments[1].end == 2.0
    assert sum("NULL" in r for r in f.values()) >= 6
    assert lib.get_session(ok).problems == ()


def test_duplicate_uuids(loose, rec):
    a = good_session(loose, uuid="dddddddd-0000-4000-8000-000000000001")
    b = good_session(loose, uuid="dddddddd-0000-4000-8000-000000000001")
    c = good_session(loose)
    lib = Library(loose.path)
    listed = {s.id: s for s in lib.list_sessions()}
    assert "duplicate uuid" in fields(listed[a])["uuid"] and f"session {b}" in fields(listed[a])["uuid"]
    assert "duplicate uuid" in fields(listed[b])["uuid"]
    assert listed[c].problems == ()
    assert "duplicate uuid" in fields(lib.get_session(b))["uuid"]
    with pytest.raises(NotFoundError, match="ambiguous"):
        lib.get_session("dddddddd-0000-4000-8000-000000000001")
    # Upstream schema (uuid UNIQUE) still lets the same uuid in different case through.
    x = good_session(rec, uuid="eeeeeeee-0000-4000-8000-00000000000a")
    y = good_session(rec, uuid="EEEEEEEE-0000-4000-8000-00000000000A")
    listed = {s.id: s for s in Library(rec.path).list_sessions()}
    assert "uuid" in fields(listed[x]) and "uuid" in fields(listed[y])


def test_negative_durations(rec):
    rec.conn.execute("PRAGMA ignore_check_constraints = ON")   # a recorder bug got past the CHECK
    sid = good_session(rec, duration_seconds=-5)
    rec.conn.execute("UPDATE transcript_entries SET end_time_seconds = start_time_seconds - 1 WHERE id = 2")
    s = Library(rec.path).get_session(sid)
    f = fields(s)
    assert "negative duration" in f["duration_seconds"]
    assert s.duration_seconds == 3600          # from start/end time instead
    assert any("ends" in r and "before it starts" in r for r in f.values())
    assert all(seg.end >= seg.start for seg in s.segments)


def test_infinite_and_nan_numbers_are_problems_and_never_stop_the_listing(rec):
    """SQLite stores an overflowing REAL (9e999) as Infinity, and a text 'nan' reads as a number to float():
    int() of either raised, and one such session stopped the whole listing (every page and export)."""
    rec.conn.execute("PRAGMA ignore_check_constraints = ON")
    good = good_session(rec)
    dur_inf, dur_nan, line_inf, line_nan, odd = (good_session(rec) for _ in range(5))
    rec.conn.execute("UPDATE sessions SET duration_seconds = 9e999 WHERE id = ?", (dur_inf,))
    rec.conn.execute("UPDATE sessions SET duration_seconds = 'nan' WHERE id = ?", (dur_nan,))
    last = "(SELECT max(id) FROM transcript_entries WHERE session_id = ?)"
    rec.conn.execute(f"UPDATE transcript_entries SET start_time_seconds = 9e999 WHERE id = {last}", (line_inf,))
    rec.conn.execute(f"UPDATE transcript_entries SET end_time_seconds = 'nan', confidence = 'nan' WHERE id = {last}",
                     (line_nan,))
    rec.conn.execute("UPDATE participants SET total_speaking_time_seconds = -9e999, speaking_percentage = 'nan' "
                     "WHERE session_id = ?", (odd,))
    rec.file(odd, "audio/gone.txt", size=0)
    rec.conn.execute("UPDATE file_info SET size_bytes = 9e999 WHERE session_id = ?", (odd,))
    lib = Library(rec.path)
    assert {s.id for s in lib.list_sessions()} == {good, dur_inf, dur_nan, line_inf, line_nan, odd}
    assert lib.get_session(good).problems == ()
    for sid in (dur_inf, dur_nan):
        s = lib.get_session(sid)
        assert "not a number" in fields(s)["duration_seconds"] and s.duration_seconds == 3600, sid
    s = lib.get_session(line_inf)
    assert [seg.text for seg in s.segments] == ["Good morning everyone", "Morning"]
    assert any("invalid start time" in r for r in fields(s).values())
    s = lib.get_session(line_nan)
    assert s.segments[-1].end == s.segments[-1].start == 4.5 and s.segments[-1].confidence is None
    s = lib.get_session(odd)
    reasons = " | ".join(p.reason for p in s.problems)
    assert "invalid speaking time" in reasons and "invalid speaking percentage" in reasons
    assert all(math.isfinite(p.speaking_seconds) and math.isfinite(p.speaking_percentage) for p in s.participants)
    assert [f.size for f in s.files] == [0]


def test_transcript_out_of_order_and_overlapping(rec):
    sid = rec.session()
    rec.entry(sid, 10.0, 12.0, "third")
    rec.entry(sid, 0.0, 3.0, "first")
    rec.entry(sid, 2.0, 5.0, "second overlaps first")
    rec.entry(sid, 20.0, 21.0, "fourth")
    s = Library(rec.path).get_session(sid)
    assert [seg.text for seg in s.segments] == ["first", "second overlaps first", "third", "fourth"]
    assert [seg.index for seg in s.segments] == [0, 1, 2, 3]
    reasons = " | ".join(p.reason for p in s.problems)
    assert "out of order" in reasons and "overlap" in reasons
    assert not any(p.fatal for p in s.problems)


def test_speaker_names_and_analysis_fallbacks(rec):
    sid = rec.session()
    rec.participant(sid, "S0", "Анна Смирнова")
    rec.participant(sid, "S9", None)
    rec.entry(sid, 0, 1, "Привет всем", "S0", speaker_name="ignored")
    rec.entry(sid, 1, 2, "hi", "S1", speaker_name="Zoë Dvořák")
    rec.entry(sid, 2, 3, "who am i", None)
    rec.entry(sid, 3, 4, "just an id", "S7")
    rec.analysis(sid, "comprehensive", "prose", structured_data=json.dumps({"summary": "Structured summary"}),
                 action_items=json.dumps([{"task": "Do it", "assignee": "Анна", "deadline": "2026-11-01T12:00:00",
                                           "status": "done"}, {"owner": "nobody"}, {"text": "x", "due": "soon"}]),
                 key_topics=json.dumps([{"topic": "Δοκιμή"}, "budget", "Budget"]))
    s = Library(rec.path).get_session(sid)
    assert [seg.speaker_name for seg in s.segments] == ["Анна Смирнова", "Zoë Dvořák", "Unknown speaker", "S7"]
    names = {p.speaker_id: p.name for p in s.participants}
    assert names == {"S0": "Анна Смирнова", "S9": "S9", "S1": "Zoë Dvořák", "S7": "S7"}
    assert {p.speaker_id: p.word_count for p in s.participants}["S0"] == 2
    assert s.summary_text == "Structured summary"
    assert s.action_items[0].text == "Do it" and s.action_items[0].owner == "Анна"
    assert s.action_items[0].due == dt.date(2026, 11, 1) and s.action_items[0].done
    assert s.action_items[1].text == "x" and s.action_items[1].due is None
    assert s.topics == ("Δοκιμή", "budget")
    reasons = " | ".join(p.reason for p in s.problems)
    assert "without text" in reasons and "due date" in reasons


def test_bad_sessions_never_stop_the_others(loose, tmp_path):
    loose.conn.execute("PRAGMA ignore_check_constraints = ON")
    good = [good_session(loose) for _ in range(2)]
    bad = [
        loose.session(audio_file_path="audio/missing.flac"),
        loose.session(audio_file_path="../../x.wav"),
        loose.session(tags="{{", session_metadata="[1,"),
        loose.session(start_time="not a date"),
        loose.session(title=None, status=None),
        loose.session(duration_seconds=-1),
        loose.session(uuid="same"), loose.session(uuid="same"),
    ]
    for sid in bad:
        loose.entry(sid, 5, 6, "b")
        loose.entry(sid, 0, 5.5, "a")
    lib = Library(loose.path)
    listed = lib.list_sessions()
    assert len(listed) == len(good) + len(bad)
    for sid in bad:
        s = lib.get_session(sid)
        assert s.problems, sid
        assert [seg.text for seg in s.segments] == ["a", "b"]
    for sid in good:
        assert lib.get_session(sid).problems == ()


def test_invalid_utf8_text_is_read_with_replacement_characters(rec):
    sid = good_session(rec)
    other = good_session(rec)
    rec.conn.execute("UPDATE sessions SET title = CAST(x'4d656574ff696e67' AS TEXT) WHERE id = ?", (sid,))
    rec.conn.execute("UPDATE transcript_entries SET text = CAST(x'c3' AS TEXT) WHERE session_id = ? AND id = 1",
                     (sid,))
    lib = Library(rec.path)
    assert {s.id: s.title for s in lib.list_sessions()}[sid] == "Meet\ufffding"
    assert lib.get_session(sid).segments[0].text == "\ufffd"
    assert lib.get_session(other).title == "Meeting 2"


# ---- database-level errors ------------------------------------------------------------------

def test_missing_database(tmp_path):
    lib = Library(tmp_path / "nope.db")
    with pytest.raises(SourceError, match="missing.*nope.db"):
        lib.list_sessions()


def test_not_sqlite(tmp_path):
    p = tmp_path / "silent_steno.db"
    p.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(SourceError, match="not an SQLite database"):
        Library(p).list_sessions()


def test_missing_table_and_column_named(tmp_path):
    r = RecorderDB(tmp_path / "a")
    r.conn.execute("DROP TABLE file_info")
    r.close()
    with pytest.raises(SourceError, match="table 'file_info'"):
        Library(r.path).list_sessions()
    r2 = RecorderDB(tmp_path / "b", schema=loose_schema().replace("    status VARCHAR(20),\n", "").replace(
        "CREATE INDEX idx_session_status ON sessions (status);", ""))
    r2.close()
    with pytest.raises(SourceError, match=r"column 'sessions\.status'"):
        Library(r2.path).get_session(1)


def test_extra_columns_and_tables_are_ignored(rec):
    rec.conn.execute("ALTER TABLE sessions ADD COLUMN future_thing TEXT DEFAULT 'x'")
    rec.conn.execute("ALTER TABLE transcript_entries ADD COLUMN emotion TEXT")
    rec.conn.execute("CREATE TABLE new_stuff (id INTEGER)")
    sid = good_session(rec)
    assert Library(rec.path).get_session(sid).problems == ()


def test_locked_longer_than_timeout(tmp_path):
    r = RecorderDB(tmp_path / "d", wal=False)        # rollback journal: a writer locks readers out
    good_session(r)
    r.conn.execute("BEGIN EXCLUSIVE")
    r.conn.execute("UPDATE sessions SET title = 'x'")
    try:
        lib = Library(r.path, lock_timeout=0.3)
        t = time.monotonic()
        with pytest.raises(SourceError, match="locked"):
            lib.list_sessions()
        assert time.monotonic() - t >= 0.25
    finally:
        r.conn.execute("ROLLBACK")
    assert len(lib.list_sessions()) == 1          # usable again once the lock is gone
    r.close()


def test_reads_while_a_wal_writer_holds_a_write_transaction(rec):
    good_session(rec)
    lib = Library(rec.path, lock_timeout=0.5)
    _, token = lib.changed_since(None)
    version = lib.data_version()
    writer = sqlite3.connect(rec.path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO sessions (uuid, title, status, start_time, created_at, updated_at)"
                   " VALUES ('new-uuid', 'New', 'recording', '2026-10-05 09:00:00', '2026-10-05', '2026-10-05')")
    t = time.monotonic()
    assert [s.title for s in lib.list_sessions()] == ["Meeting 1"]     # the committed state
    assert lib.get_session(1).segments
    assert time.monotonic() - t < 0.4 and lib.data_version() == version
    writer.execute("COMMIT")
    writer.close()
    assert lib.data_version() != version
    delta, token = lib.changed_since(token)
    assert [s.title for s in delta.added] == ["New"] and not delta.changed and not delta.removed


def test_concurrent_threads_share_one_library(rec):
    for _ in range(5):
        good_session(rec)
    lib = Library(rec.path)
    errors = []

    def work():
        try:
            for _ in range(20):
                assert len(lib.list_sessions()) == 5
                assert len(lib.get_session(3).segments) == 3
        except Exception as e:      # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---- changes ------------------------------------------------------------------------------------

def test_changed_since(rec):
    a, b, c = good_session(rec), good_session(rec), good_session(rec)
    lib = Library(rec.path)
    delta, tok = lib.changed_since(None)
    assert sorted(s.id for s in delta.added) == [a, b, c]
    delta, tok = lib.changed_since(tok)
    assert delta == SessionsDelta() and not delta
    rec.conn.execute("UPDATE sessions SET title = 'Renamed', updated_at = '2026-10-09 00:00:00' WHERE id = ?", (b,))
    d = good_session(rec)
    rec.conn.execute("DELETE FROM sessions WHERE id = ?", (a,))
    delta, tok = lib.changed_since(tok)
    assert [s.id for s in delta.added] == [d]
    assert [s.title for s in delta.changed] == ["Renamed"]
    assert delta.removed == (a,)
    assert delta.ids == ((d,), (b,), (a,))
    rec.entry(c, 10, 11, "appended while processing")
    delta, tok = lib.changed_since(tok)
    assert [s.id for s in delta.changed] == [c] and not delta.added
    rec.conn.execute("UPDATE sessions SET status = 'archived' WHERE id = ?", (c,))
    delta, tok = lib.changed_since(tok)
    assert [s.status for s in delta.changed] == ["archived"]


def test_replaced_database_file_is_reopened(rec, tmp_path):
    good_session(rec)
    lib = Library(rec.path)
    assert len(lib.list_sessions()) == 1
    other = RecorderDB(tmp_path / "other", wal=False)   # e.g. restored from a backup
    good_session(other)
    good_session(other)
    other.close()
    rec.close()
    for suffix in ("-wal", "-shm"):          # whoever swaps the file removes the old WAL too
        Path(str(rec.path) + suffix).unlink(missing_ok=True)
    os.replace(other.path, rec.path)
    assert len(lib.list_sessions()) == 2


# ---- never writes ------------------------------------------------------------------------------

def _digest(p: Path) -> tuple[str, int]:
    return hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns


def test_library_never_writes(rec):
    for _ in range(3):
        good_session(rec)
    rec.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = _digest(rec.path)
    lib = Library(rec.path)
    lib.list_sessions()
    lib.get_session(2)
    _, tok = lib.changed_since(None)
    lib.changed_since(tok)
    lib.data_version()
    with pytest.raises(sqlite3.OperationalError, match="readonly|read-only|query"):
        lib._conn().execute("DELETE FROM sessions")
    lib.close()
    assert _digest(rec.path) == before
    assert len(Library(rec.path).list_sessions()) == 3


def test_reads_a_read_only_copy_as_an_unprivileged_user(rec):
    parts.require_root()
    parts.require_tool("setpriv")
    for _ in range(2):
        good_session(rec)
    rec.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ro = Path(tempfile.mkdtemp(prefix="steno-ro-"))
    try:
        shutil.copytree(rec.root, ro / "data")
        for p in (ro / "data").rglob("*"):
            if p.name.endswith(("-wal", "-shm")):
                p.unlink()
        for p in (ro / "data").rglob("*"):
            p.chmod(0o555 if p.is_dir() else 0o444)
        (ro / "data").chmod(0o555)
        ro.chmod(0o755)
        before = _digest(ro / "data" / "silent_steno.db")
        code = ("import sys; from steno_exportd.library import Library; lib = Library(sys.argv[1]); "
                "print(len(lib.list_sessions()), len(lib.get_session(1).segments), lib.get_session(1).audio.size)")
        py = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", py, "-c", code,
                              str(ro / "data" / "silent_steno.db")], capture_output=True, text=True,
                             env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["2", "3", str((rec.root / "audio" / "good1.wav").stat().st_size)]
        assert _digest(ro / "data" / "silent_steno.db") == before
        assert sorted(p.name for p in (ro / "data").iterdir()) == ["audio", "silent_steno.db"]
    finally:
        for p in [ro, *ro.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(ro)


def test_a_token_from_another_library_instance_still_diffs(rec):
    a = good_session(rec)
    _, tok = Library(rec.path).changed_since(None)
    b = good_session(rec)
    delta, _ = Library(rec.path).changed_since(tok)
    assert [s.id for s in delta.added] == [b] and not delta.changed and a not in delta.removed
