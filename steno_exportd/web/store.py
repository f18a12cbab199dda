"""Share links and the per-session download audit log (SQLite in the state dir)."""
from __future__ import annotations

import dataclasses
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from steno_exportd.errors import InvalidArgument, NotFoundError
from steno_exportd.retention import Keep, prune_rows
from steno_exportd.web.password import hash_password, verify_password

SCHEMA = """
CREATE TABLE IF NOT EXISTS share_links (
    token TEXT PRIMARY KEY, session_id INTEGER NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
    max_downloads INTEGER NOT NULL, downloads INTEGER NOT NULL DEFAULT 0, pin_hash TEXT NOT NULL DEFAULT '',
    revoked REAL NOT NULL DEFAULT 0, note TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id INTEGER NOT NULL, at REAL NOT NULL, addr TEXT NOT NULL,
    what TEXT NOT NULL, via TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_session ON audit (session_id, at);
"""


@dataclasses.dataclass(frozen=True)
class ShareLink:
    token: str
    session_id: int
    created: float
    expires: float
    max_downloads: int
    downloads: int
    has_pin: bool
    revoked: float

    @property
    def state(self) -> str:
        if self.revoked:
            return "revoked"
        if self.expires <= time.time():
            return "expired"
        if self.downloads >= self.max_downloads:
            return "used up"
        return "active"

    def public(self) -> dict:
        return {"token": self.token, "session_id": self.session_id, "created": self.created,
                "expires": self.expires, "max_downloads": self.max_downloads, "downloads": self.downloads,
                "pin": self.has_pin, "state": self.state, "url": f"/s/{self.token}"}


PRUNE_EVERY = 256      # audit rows written between two prunings: the log stays within audit_max + this


class Store:
    def __init__(self, path: str | Path, audit_keep: Keep = Keep()) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self.audit_keep = audit_keep
        self._since_prune = 0
        self.prune_audit()

    def close(self) -> None:
        self._db.close()

    def _x(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- share links -------------------------------------------------------------
    def create_link(self, session_id: int, hours: float, max_downloads: int, pin: str = "") -> ShareLink:
        if not (0 < hours <= 24 * 366):
            raise InvalidArgument("expiry must be between a few minutes and a year (hours > 0)")
        if not (1 <= max_downloads <= 1000):
            raise InvalidArgument("max downloads must be between 1 and 1000")
        if pin and not (pin.isdigit() and 4 <= len(pin) <= 12):
            raise InvalidArgument("a PIN is 4 to 12 digits")
        token = secrets.token_urlsafe(18)
        now = time.time()
        self._x("INSERT INTO share_links (token, session_id, created, expires, max_downloads, pin_hash) "
                "VALUES (?, ?, ?, ?, ?, ?)", (token, session_id, now, now + hours * 3600, max_downloads,
                                             hash_password(pin) if pin else ""))
        return self.link(token)

    def link(self, token: str) -> ShareLink:
        rows = self._x("SELECT token, session_id, created, expires, max_downloads, downloads, pin_hash != '', "
                       "revoked FROM share_links WHERE token = ?", (token,))
        if not rows:
            raise NotFoundError("no such share link")
        t, sid, c, e, m, d, pin, r = rows[0]
        return ShareLink(t, sid, c, e, m, d, bool(pin), r)

    def check_pin(self, token: str, pin: str) -> bool:
        rows = self._x("SELECT pin_hash FROM share_links WHERE token = ?", (token,))
        return bool(rows) and (not rows[0][0] or verify_password(pin, rows[0][0]))

    def links(self, session_id: int | None = None) -> list[ShareLink]:
        sql = "SELECT token FROM share_links" + (" WHERE session_id = ?" if session_id is not None else "")
        return [self.link(t) for (t,) in self._x(sql + " ORDER BY created DESC",
                                                    (session_id,) if session_id is not None else ())]

    def revoke(self, token: str) -> ShareLink:
        self.link(token)
        self._x("UPDATE share_links SET revoked = ? WHERE token = ? AND revoked = 0", (time.time(), token))
        return self.link(token)

    def count_download(self, token: str) -> bool:
        """Count one complete download; False when the link had none left (raced)."""
        with self._lock:
            cur = self._db.execute("UPDATE share_links SET downloads = downloads + 1 WHERE token = ? "
                                   "AND downloads < max_downloads AND revoked = 0", (token,))
            return cur.rowcount == 1

    # -- audit ---------------------------------------------------------------------
    def audit(self, session_id: int, addr: str, what: str, via: str) -> None:
        self._x("INSERT INTO audit (session_id, at, addr, what, via) VALUES (?, ?, ?, ?, ?)",
                (session_id, time.time(), addr or "", what, via))
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self.prune_audit()

    def prune_audit(self) -> int:
        """Drop audit rows past the core's retention policy (retention.audit_days/audit_max); the count."""
        self._since_prune = 0
        return len(prune_rows(self._x, "audit", "at", self.audit_keep))

    def audit_log(self, session_id: int, limit: int = 200) -> list[dict]:
        rows = self._x("SELECT at, addr, what, via FROM audit WHERE session_id = ? ORDER BY at DESC, id DESC "
                       "LIMIT ?", (session_id, limit))
        return [{"at": a, "addr": ad, "what": w, "via": v} for a, ad, w, v in rows]
