"""Real recorder databases for tests: built row by row, or copied from a demo library and changed.

``RecorderDB`` writes rows the way the recorder would (plain sqlite3, WAL) with sane
defaults, so a test only states what is odd about its session. ``DemoLibraries`` hands out
copies of demo libraries (each kind generated once per test run); ``add_session_like`` and
``delete_session`` change such a copy as the recorder would (the real recorder's is never written).
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import uuid as uuidlib
from pathlib import Path
from typing import Iterator

from steno_exportd import demo
from steno_exportd.demo import schema_sql

TS = "2026-10-01 09:00:00.000000"


def loose_schema() -> str:
    """The upstream schema without NOT NULL/UNIQUE on a few columns (as an older or broken recorder)."""
    sql = schema_sql()
    for old, new in [("uuid VARCHAR(36) NOT NULL UNIQUE", "uuid VARCHAR(36)"),
                     ("title VARCHAR(255) NOT NULL", "title VARCHAR(255)"),
                     ("start_time DATETIME NOT NULL", "start_time DATETIME"),
                     ("status VARCHAR(20) NOT NULL", "status VARCHAR(20)"),
                     ("text TEXT NOT NULL", "text TEXT"),
                     ("end_time_seconds FLOAT NOT NULL", "end_time_seconds FLOAT"),
                     ("start_time_seconds FLOAT NOT NULL", "start_time_seconds FLOAT"),
                     ("created_at DATETIME NOT NULL,\n    updated_at DATETIME NOT NULL,\n    CONSTRAINT check_duration",
                      "created_at DATETIME,\n    updated_at DATETIME,\n    CONSTRAINT check_duration")]:
        assert old in sql, old
        sql = sql.replace(old, new)
    return sql


class RecorderDB:
    """A recorder data dir (``root``) with ``silent_steno.db`` and ``audio/``."""

    def __init__(self, root: Path, schema: str | None = None, wal: bool = True, threads: bool = False) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "audio").mkdir(exist_ok=True)
        self.path = self.root / "silent_steno.db"
        # threads: used from worker threads too (asyncio.to_thread in async tests), one at a time
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=not threads)
        self.conn.executescript(schema if schema is not None else schema_sql())
        if wal:
            self.conn.execute("PRAGMA journal_mode=WAL")
        self._n = 0

    def close(self) -> None:
        self.conn.close()

    def audio(self, name: str, data: bytes = b"RIFF....WAVEfmt demo audio bytes") -> str:
        """Create audio/<name>; returns the relative path the recorder stores."""
        (self.root / "audio" / name).write_bytes(data)
        return f"audio/{name}"

    def session(self, **cols) -> int:
        """Insert a session; every column has a sane default. Returns its id."""
        self._n += 1
        n = self._n
        row = {
            "uuid": f"{n:08x}-1111-4222-8333-{n:012x}", "title": f"Meeting {n}", "status": "completed",
            "start_time": TS, "end_time": "2026-10-01 10:00:00.000000", "duration_seconds": 3600,
            "audio_file_path": None, "audio_format": "wav", "audio_size_bytes": 32, "participant_count": 2,
            "location": "Room 1", "tags": json.dumps(["demo"]), "created_at": TS, "updated_at": TS,
        }
        row.update(cols)
        names = ", ".join(row)
        cur = self.conn.execute(f"INSERT INTO sessions ({names}) VALUES ({', '.join('?' * len(row))})",
                                tuple(row.values()))
        return cur.lastrowid

    def entry(self, session_id: int, start: float | None, end: float | None, text: str | None = "hello there",
              speaker_id: str | None = "S0", speaker_name: str | None = None, confidence: float | None = 0.9) -> int:
        dur = (end - start) if start is not None and end is not None else 0.0
        cur = self.conn.execute(
            "INSERT INTO transcript_entries (session_id, text, speaker_id, speaker_name, start_time_seconds,"
            " end_time_seconds, duration_seconds, confidence, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (session_id, text, speaker_id, speaker_name, start, end, dur, confidence, TS))
        return cur.lastrowid

    def participant(self, session_id: int, speaker_id: str, name: str | None, **cols) -> None:
        row = {"session_id": session_id, "speaker_id": speaker_id, "name": name, "created_at": TS,
               "updated_at": TS}
        row.update(cols)
        self.conn.execute(f"INSERT INTO participants ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                          tuple(row.values()))

    def analysis(self, session_id: int, analysis_type: str, content: str = "", **cols) -> None:
        row = {"session_id": session_id, "analysis_type": analysis_type, "title": analysis_type,
               "content": content, "created_at": TS}
        row.update(cols)
        self.conn.execute(f"INSERT INTO analysis_results ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                          tuple(row.values()))

    def file(self, session_id: int, file_path: str, file_type: str = "transcript", size: int = 0,
             checksum: str | None = None) -> None:
        self.conn.execute(
            "INSERT INTO file_info (session_id, filename, file_path, file_type, file_format, size_bytes,"
            " checksum, created_at) VALUES (?,?,?,?,?,?,?,?)",
            (session_id, Path(file_path).name, file_path, file_type, Path(file_path).suffix.lstrip("."),
             size, checksum, TS))


def meeting(rec: RecorderDB, title: str, lines: list[tuple[float, str, str]], **cols) -> int:
    """A session with transcript lines (start seconds, speaker name, text), each 4 s long, in one transaction."""
    with rec.conn:
        rec.conn.execute("BEGIN")
        sid = rec.session(title=title, **cols)
        for start, who, text in lines:
            rec.entry(sid, start, start + 4.0, text, speaker_id=f"S-{who}", speaker_name=who)
    return sid


def meetings_to_search(root: Path) -> RecorderDB:
    """Three meetings for the search tests (``.ids``: budget, intl, plain): words said at known seconds,
    accents, Cyrillic, Greek and Japanese, markup in a transcript line, a summary, an action item."""
    r = RecorderDB(root)
    r.ids = {
        "budget": meeting(r, "Budget review", [
            (0.0, "Alice", "Welcome everyone to the budget meeting."),
            (12.5, "Bob", "The quarterly budget is approved."),
            (1234.5, "Carla", "Let us talk about photosynthesis in the lab."),
            (1300.0, "Bob", 'Beware of <script>alert("x")</script> & other tags in the budget sheet.'),
        ], location="Meeting room 1"),
        "intl": meeting(r, "Встреча с партнёрами", [
            (3.0, "Анна", "Добрый день, коллеги! Начнём с обзора."),
            (21.25, "Γιώργος", "Καλημέρα σε όλους. Η παράδοση καθυστερεί."),
            (42.0, "José", "La reunión es en Zürich, después del almuerzo."),
            (63.5, "Kenji", "来週までに見積もりを送ります。"),
        ], location="Zürich, Bahnhofstraße 1", tags='["international"]'),
        "plain": meeting(r, "Weekly sync", [
            (5.0, "Dana", "Short meeting today, nothing about money."),
        ]),
    }
    r.analysis(r.ids["budget"], "summary", "The budget meeting went well. " * 150 + "Finally the auditors arrived.")
    r.analysis(r.ids["budget"], "action_items", "1 item", action_items='[{"text": "Send the spreadsheet", "owner": "Bob"}]')
    r.participant(r.ids["plain"], "S1", "Dana Okonkwo", role="Facilitator")
    return r


class DemoLibraries:
    """Demo recorder libraries (database and audio) under ``root``, each kind generated once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def copy(self, dst: Path, sessions: int = 4, seed: int = 6, small: bool = True) -> Path:
        """A copy of the demo library of that kind in ``dst`` (which must not exist); its database path."""
        src = self.root / f"{sessions}-{seed}-{'small' if small else 'full'}"
        with self._lock:
            if not src.exists():
                demo.generate(src.with_suffix(".new"), sessions=sessions, seed=seed, small=small)
                src.with_suffix(".new").rename(src)
        shutil.copytree(src, dst)
        return dst / demo.DB_NAME


def add_session_like(db_path: Path, template_id: int | None = None, title: str = "Added in a test") -> str:
    """Insert a new session copied from an existing one (with its transcript and analysis); return its uuid."""
    new_uuid = str(uuidlib.uuid4())
    con = sqlite3.connect(db_path)
    try:
        with con:
            if template_id is None:
                template_id = con.execute("SELECT id FROM sessions WHERE status IN ('completed', 'archived') "
                                          "ORDER BY id LIMIT 1").fetchone()[0]
            cols = [r[1] for r in con.execute("PRAGMA table_info(sessions)") if r[1] != "id"]
            sel = ", ".join("?" if c in ("uuid", "title") else c for c in cols)
            cur = con.execute(f"INSERT INTO sessions ({', '.join(cols)}) SELECT {sel} FROM sessions WHERE id = ?",
                              [v for c in cols for v in ((new_uuid,) if c == "uuid" else (title,) if c == "title"
                                                         else ())] + [template_id])
            new_id = cur.lastrowid
            con.execute("UPDATE sessions SET updated_at = CURRENT_TIMESTAMP, created_at = CURRENT_TIMESTAMP "
                        "WHERE id = ?", (new_id,))
            for table in ("transcript_entries", "analysis_results"):
                tcols = [r[1] for r in con.execute(f"PRAGMA table_info({table})") if r[1] not in ("id",)]
                other = [c for c in tcols if c != "session_id"]
                con.execute(f"INSERT INTO {table} (session_id, {', '.join(other)}) "
                            f"SELECT ?, {', '.join(other)} FROM {table} WHERE session_id = ?", (new_id, template_id))
    finally:
        con.close()
    return new_uuid


def delete_session(db_path: Path, uuid: str) -> None:
    """Delete a session the way the recorder does (its transcript, analysis and files go with it)."""
    con = sqlite3.connect(db_path)
    try:
        con.execute("PRAGMA foreign_keys = ON")
        with con:
            con.execute("DELETE FROM sessions WHERE uuid = ?", (uuid,))
    finally:
        con.close()


def sessions_with_audio(db_path: Path) -> list[int]:
    """Ids of the exportable sessions of a recorder database that have a usable recording."""
    from steno_exportd.library import Library
    lib = Library(db_path)
    try:
        return [s.id for s in lib.list_sessions(exportable_only=True) if lib.get_session(s.id).audio is not None]
    finally:
        lib.close()


def restored_pair(root: Path) -> tuple[int, str, bytes, bytes]:
    """Two recorder databases in library ``root`` (its live one a copy of the first): a meeting shared from
    ``a.db`` and, in ``b.db`` (another recorder's backup restored), another meeting under the same session id with
    another uuid, title and recording. -> (session id, uuid in a, a's recording bytes, b's recording bytes)."""
    # (16 KB each: over the smallest email.max_message_mb, a message links them)
    fine, secret = b"RIFF....WAVEfmt all-hands audio" * 512, b"RIFF....WAVEfmt board layoffs!!" * 512
    made = {}
    for name, title, audio, text in (("a", "All-hands, fine to share", fine, "Lunch is on Friday."),
                                     ("b", "Board meeting: layoffs", secret, "The layoffs start in May.")):
        rec = RecorderDB(root / f"build-{name}", wal=False)
        meeting(rec, "Weekly sync", [(5.0, "Dana", "Short meeting today.")])
        sid = meeting(rec, title, [(0.0, "Alice", text)], uuid=str(uuidlib.uuid4()),
                      audio_file_path=rec.audio(f"{name}.wav", audio), audio_size_bytes=len(audio))
        uuid = rec.conn.execute("SELECT uuid FROM sessions WHERE id = ?", (sid,)).fetchone()[0]
        rec.close()
        (root / "audio").mkdir(parents=True, exist_ok=True)
        shutil.copy(rec.root / "audio" / f"{name}.wav", root / "audio" / f"{name}.wav")
        shutil.copy(rec.path, root / f"{name}.db")
        shutil.rmtree(rec.root)
        made[name] = (sid, uuid)
    assert made["a"][0] == made["b"][0] and made["a"][1] != made["b"][1]
    shutil.copy(root / "a.db", root / "silent_steno.db")
    return made["a"][0], made["a"][1], fine, secret


def rounds(n: int, swaps: list[int], at_least: int = 100, most: int = 4) -> Iterator[int]:
    """The rounds of one client of a restore test: ``n``, and more (at most ``most`` x ``n``) while the restores so
    far (restoring()'s ``swaps``) number ``at_least`` or fewer, so the tests' floor on the restores their requests
    overlapped holds on a machine where the restoring thread waits for the GIL behind the clients: 64 mail requests
    overlapped only 94 restores in one CI run, and the test failed on that floor, not on a wrong meeting."""
    i = 0
    while i < n or (swaps[0] <= at_least and i < most * n):
        yield i
        i += 1


def restoring(root: Path, stop: threading.Event, swaps: list[int]) -> None:
    """(in a thread) Restore ``root``'s a.db and b.db (restored_pair) in turn as the recorder's database until
    ``stop``, each replacing the file whole as a restore does; ``swaps[0]`` counts them. Ends on a's."""
    import os
    db = root / "silent_steno.db"
    while not stop.is_set():
        for name in ("b", "a"):
            os.link(root / f"{name}.db", root / "restoring.db")
            os.replace(root / "restoring.db", db)
            swaps[0] += 1
            stop.wait(0.002)
