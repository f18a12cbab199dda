"""Real recorder databases for tests, created from the upstream schema.

``RecorderDB`` writes rows the way the recorder would (plain sqlite3, WAL) with sane
defaults, so a test only states what is odd about its session.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from steno_exportd.demo.recorder import schema_sql

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

    def __init__(self, root: Path, schema: str | None = None, wal: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "audio").mkdir(exist_ok=True)
        self.path = self.root / "silent_steno.db"
        self.conn = sqlite3.connect(self.path, isolation_level=None)
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
