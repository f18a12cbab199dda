"""Changing a *copy* of a demo recorder database in tests (the real recorder's is never written)."""
from __future__ import annotations

import shutil
import sqlite3
import uuid as uuidlib
from pathlib import Path


def copy_library(src_dir: Path, dst_dir: Path) -> Path:
    """Copy a demo library (database + audio) and return the copy's database path."""
    shutil.copytree(src_dir, dst_dir)
    return next(dst_dir.glob("*.db"))


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
