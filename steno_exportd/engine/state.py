"""State DB (SQLite, WAL): jobs, per-session results, export history, devices seen."""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from steno_exportd.events import JobSnapshot, JobState, SessionResult

if TYPE_CHECKING:
    from steno_exportd.retention import Keep

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY, operation TEXT NOT NULL, target TEXT NOT NULL, state TEXT NOT NULL,
  spec TEXT NOT NULL DEFAULT '{}', error TEXT NOT NULL DEFAULT '', created REAL, started REAL,
  finished REAL, bytes INTEGER DEFAULT 0, files INTEGER DEFAULT 0, errors INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS results (
  job_id INTEGER NOT NULL, session_id INTEGER NOT NULL, uuid TEXT, title TEXT, ok INTEGER,
  skipped INTEGER, error TEXT, files TEXT, PRIMARY KEY (job_id, session_id));
CREATE TABLE IF NOT EXISTS history (
  id INTEGER PRIMARY KEY, job_id INTEGER, target TEXT, device_id TEXT, session_uuid TEXT,
  path TEXT, size INTEGER, sha256 TEXT, exported_at REAL);
CREATE INDEX IF NOT EXISTS history_session ON history(session_uuid);
CREATE TABLE IF NOT EXISTS schedules (
  name TEXT PRIMARY KEY, spec TEXT NOT NULL, slot REAL NOT NULL, last_run REAL NOT NULL DEFAULT 0,
  result TEXT NOT NULL DEFAULT '', mark INTEGER, done TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS devices (
  uuid TEXT PRIMARY KEY, label TEXT, fs_type TEXT, first_seen REAL, last_seen REAL, exports INTEGER DEFAULT 0);
"""


class StateDB:
    """The daemon's own database; every method is blocking and thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> list[int]:
        """Open (creating) the DB; mark jobs that were queued/running as interrupted; return their ids."""
        if self._db is not None:
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        self._db = db
        with self._lock:
            rows = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state IN ('queued','running')")]
            if rows:
                db.execute("UPDATE jobs SET state='interrupted', error='the daemon stopped while it ran' "
                           "WHERE state IN ('queued','running')")
                log.warning("jobs interrupted by a restart: %s", rows)
        return rows

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _x(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            if self._db is None:
                return []
            return self._db.execute(sql, args).fetchall()

    def next_job_id(self) -> int:
        rows = self._x("SELECT COALESCE(MAX(id), 0) FROM jobs")
        return (rows[0][0] if rows else 0) + 1

    def save_job(self, job: JobSnapshot, spec: dict | None = None) -> None:
        errors = sum(1 for r in job.results if not r.ok)
        self._x("INSERT INTO jobs(id, operation, target, state, spec, error, created, started, finished, bytes, "
                "files, errors) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET state=excluded.state,"
                " error=excluded.error, started=excluded.started, finished=excluded.finished, "
                "bytes=excluded.bytes, files=excluded.files, errors=excluded.errors",
                (job.id, job.operation, job.target, str(job.state), json.dumps(spec or {}), job.error, job.created,
                 job.started, job.finished, job.bytes_done, job.files_done, errors))

    def save_result(self, job_id: int, r: SessionResult) -> None:
        files = json.dumps([dict(path=f.path, ok=f.ok, size=f.size, sha256=f.sha256, error=f.error)
                            for f in r.files])
        self._x("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?)",
                (job_id, r.session_id, r.uuid, r.title, int(r.ok), int(r.skipped), r.error, files))

    def add_history(self, job_id: int, target: str, device_id: str, session_uuid: str,
                    files: list[tuple[str, int, str]]) -> None:
        """Record verified files only: nothing here claims a file that was not verified."""
        now = time.time()
        with self._lock:
            if self._db is None:
                return
            self._db.executemany("INSERT INTO history(job_id, target, device_id, session_uuid, path, size, sha256, "
                                 "exported_at) VALUES (?,?,?,?,?,?,?,?)",
                                 [(job_id, target, device_id, session_uuid, p, s, h, now) for p, s, h in files])

    def history(self, session_uuid: str | None = None, limit: int = 1000) -> list[dict]:
        q = "SELECT job_id, target, device_id, session_uuid, path, size, sha256, exported_at FROM history"
        args: tuple = ()
        if session_uuid:
            q += " WHERE session_uuid=?"
            args = (session_uuid,)
        rows = self._x(q + " ORDER BY id DESC LIMIT ?", args + (limit,))
        keys = ("job_id", "target", "device_id", "session_uuid", "path", "size", "sha256", "exported_at")
        return [dict(zip(keys, r)) for r in rows]

    def jobs(self, states: tuple[str, ...] = ()) -> list[dict]:
        q = "SELECT id, operation, target, state, spec, error, created, started, finished FROM jobs"
        args: tuple = ()
        if states:
            q += f" WHERE state IN ({','.join('?' * len(states))})"
            args = states
        keys = ("id", "operation", "target", "state", "spec", "error", "created", "started", "finished")
        out = []
        for r in self._x(q + " ORDER BY id", args):
            d = dict(zip(keys, r))
            d["spec"] = json.loads(d["spec"] or "{}")
            d["state"] = JobState(d["state"])
            out.append(d)
        return out

    def results(self, job_id: int) -> list[dict]:
        keys = ("session_id", "uuid", "title", "ok", "skipped", "error", "files")
        rows = self._x("SELECT session_id, uuid, title, ok, skipped, error, files FROM results WHERE job_id=?",
                       (job_id,))
        return [dict(zip(keys, r), files=json.loads(r[6] or "[]")) for r in rows]

    def device_seen(self, uuid: str, label: str, fs_type: str, exported: bool = False) -> None:
        now = time.time()
        self._x("INSERT INTO devices(uuid, label, fs_type, first_seen, last_seen, exports) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(uuid) DO UPDATE SET label=excluded.label, fs_type=excluded.fs_type, "
                "last_seen=excluded.last_seen, exports=devices.exports+excluded.exports",
                (uuid, label, fs_type, now, now, int(exported)))

    def devices(self) -> list[dict]:
        keys = ("uuid", "label", "fs_type", "first_seen", "last_seen", "exports")
        return [dict(zip(keys, r)) for r in self._x("SELECT * FROM devices ORDER BY last_seen DESC")]

    def schedules(self) -> dict[str, dict]:
        """name -> the scheduler's row (spec, slot, last_run, result, mark, done)."""
        rows = self._x("SELECT name, spec, slot, last_run, result, mark, done FROM schedules")
        return {r[0]: dict(spec=r[1], slot=r[2], last_run=r[3], result=r[4], mark=r[5], done=set(json.loads(r[6])))
                for r in rows}

    def save_schedules(self, rows: dict[str, dict], *, replace_all: bool = False) -> None:
        """Write the scheduler's rows; replace_all drops the rows of schedules not given (removed ones)."""
        with self._lock:
            if self._db is None:
                return
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if replace_all:
                    db.execute(f"DELETE FROM schedules WHERE name NOT IN ({','.join('?' * len(rows))})",
                               tuple(rows))
                db.executemany("INSERT OR REPLACE INTO schedules(name, spec, slot, last_run, result, mark, done) "
                               "VALUES (?,?,?,?,?,?,?)",
                               [(n, r["spec"], r["slot"], r["last_run"], r["result"], r["mark"],
                                 json.dumps(sorted(r["done"]))) for n, r in rows.items()])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def prune(self, jobs: "Keep", history: "Keep") -> dict[str, int]:
        """Drop finished jobs (with their results) and history rows past their policies; never a job that
        is queued or running, nor its history, nor one a restart interrupted (it can be resumed; there is
        one per power cut mid-job at most). Returns the counts removed."""
        from steno_exportd.retention import prune_rows
        live = "state IN ('queued','running')"
        gone = prune_rows(self._x, "jobs", "created", jobs, protect="state IN ('queued','running','interrupted')")
        self._x("DELETE FROM results WHERE job_id NOT IN (SELECT id FROM jobs)")
        old = prune_rows(self._x, "history", "exported_at", history,
                         protect=f"job_id IN (SELECT id FROM jobs WHERE {live})")
        return {"jobs": len(gone), "history": len(old)}


def default_state_dir() -> str:
    return os.environ.get("STENO_STATE_DIR", "/var/lib/steno-exportd")
