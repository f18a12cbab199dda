"""Share links and their uses, logins (server-side browser sessions) and the download audit log: SQLite in the
state dir (``access.db``). Every check-and-count is one SQL statement, so concurrent callers cannot race it."""
from __future__ import annotations

import dataclasses
import hashlib
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

from steno_exportd.config import LINK_MAX_DOWNLOADS, LINK_MAX_HOURS
from steno_exportd.errors import InvalidArgument, NotAllowedError, NotFoundError
from steno_exportd.retention import Keep, prune_rows

SCHEMA = """
CREATE TABLE IF NOT EXISTS share_links (
    token TEXT PRIMARY KEY, session_id INTEGER NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
    max_downloads INTEGER NOT NULL, downloads INTEGER NOT NULL DEFAULT 0, pin_hash TEXT NOT NULL DEFAULT '',
    revoked REAL NOT NULL DEFAULT 0, note TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id INTEGER NOT NULL, at REAL NOT NULL, addr TEXT NOT NULL,
    what TEXT NOT NULL, via TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_session ON audit (session_id, at);
CREATE TABLE IF NOT EXISTS logins (
    id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, scope TEXT NOT NULL DEFAULT '',
    secret_tag TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL, last_seen REAL NOT NULL,
    addr TEXT NOT NULL DEFAULT '', agent TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# made_by: what made a link ("device", "page", or a browser login's kind); '' in a store from before it was kept.
# session_uuid: the uuid of the meeting it was made for ('' in a store from before it was kept): a session id names
# another meeting once the recorder's database is restored from a backup (ids count on from the backup's)
LINK_COLUMNS = {"wrong_pins": "INTEGER NOT NULL DEFAULT 0", "max_wrong_pins": "INTEGER NOT NULL DEFAULT 0",
                "made_by": "TEXT NOT NULL DEFAULT ''", "made_by_login": "TEXT NOT NULL DEFAULT ''",
                "session_uuid": "TEXT NOT NULL DEFAULT ''"}
AT_DEVICE = "device"         # the touchscreen, D-Bus, the CLI, the daemon itself (a mail's link): someone at it
BY_PAGE = "page"             # the web page with no login (http.auth.mode = "none")
UNKNOWN = ""                 # a link kept from before its maker was recorded
BROWSER_MADE = ("password", "pairing")      # the login kinds that make links (a "share" login cannot)
MADE_BY = {AT_DEVICE: "the recorder (touchscreen, D-Bus or CLI)", BY_PAGE: "the web page (no login)",
           "password": "a browser logged in with the password", "pairing": "a paired browser",
           UNKNOWN: "unknown (made before the recorder kept who made links)"}
MAX_LOGINS = 1000            # the oldest unused go first: a login flood cannot grow the database; counted apart for
                             # browsers and for PIN grants (a guest re-entering a link's right PIN, never throttled,
                             # logged every browser out), so the table holds at most twice this
MAX_PIN_GRANTS = 100         # PIN grants kept per share link (its guests' browsers): one link crowds out no other's
SHARE = "share"              # the kind of a PIN grant (a login scoped to its link's token)
SEEN_EVERY = 60.0            # last_seen is written at most this often per login
LINK_TOKEN_CHARS = 24         # every share link's token has this length (a mail's size is known before it exists)
PRUNE_EVERY = 256            # audit rows written between two prunings: the log stays within its limit + this


@dataclasses.dataclass(frozen=True)
class ShareLink:
    token: str
    session_id: int
    created: float
    expires: float
    max_downloads: int
    downloads: int              # uses taken, including downloads under way
    has_pin: bool
    revoked: float
    wrong_pins: int = 0
    max_wrong_pins: int = 0     # 0: no lock
    made_by: str = AT_DEVICE    # AT_DEVICE, BY_PAGE, a browser login's kind ("password", "pairing") or UNKNOWN
    made_by_login: str = ""     # the id of the browser login that made it
    session_uuid: str = ""      # the uuid of the meeting it was made for ("": not known, a link from before)

    def for_meeting(self, uuid: str, began: float | None = None) -> bool:
        """Was it made for the meeting with this uuid (the one its session id names now), which ``began`` then (its
        row's creation or its start, epoch seconds; None: not known)? A link from before the uuid was kept: only when
        that meeting is older than the link (one that began after the link took the id of the meeting it was made
        for, a restore since); when the meeting's time is not known either, yes (nothing to tell)."""
        if self.session_uuid:
            return self.session_uuid == uuid
        return began is None or began <= self.created

    @property
    def state(self) -> str:
        if self.revoked:
            return "revoked"
        if self.expires <= time.time():
            return "expired"
        if self.max_wrong_pins and self.wrong_pins >= self.max_wrong_pins:
            return "locked (wrong PINs)"
        if self.downloads >= self.max_downloads:
            return "used up"
        return "active"

    def public(self) -> dict:
        return {"token": self.token, "session_id": self.session_id, "created": self.created,
                "expires": self.expires, "max_downloads": self.max_downloads, "downloads": self.downloads,
                "pin": self.has_pin, "state": self.state, "url": f"/s/{self.token}", "made_by": self.made_by,
                "made_by_login": self.made_by_login, "made_by_text": MADE_BY.get(self.made_by, self.made_by)}


@dataclasses.dataclass(frozen=True)
class Login:
    """A logged-in browser (or a PIN-opened share link, scope = its token); the cookie value is never stored."""

    id: str
    kind: str                   # "password", "pairing" (a browser paired with a code); "share" for a PIN grant
    scope: str
    created: float
    expires: float
    last_seen: float
    addr: str
    agent: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AccessStore:
    def __init__(self, path: str | Path, audit_keep: Keep = Keep()) -> None:
        self.path = Path(path)
        self.audit_keep = audit_keep      # retention.audit_days/audit_max (Access sets it from the config)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._since_prune = 0
        self.generation = 0               # bumped whenever a grant may have ended (grants_changed)
        self._listeners: list[Callable[[], None]] = []

    def open(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = self.path.with_name("web.db")            # before the store moved out of the web page
        fresh = not self.path.exists()
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        have = {r[1] for r in db.execute("PRAGMA table_info(share_links)")}
        for col, decl in LINK_COLUMNS.items():
            if col not in have:
                db.execute(f"ALTER TABLE share_links ADD COLUMN {col} {decl}")
        if fresh and old.exists():
            db.execute("ATTACH DATABASE ? AS old", (str(old),))
            db.execute("INSERT OR IGNORE INTO share_links (token, session_id, created, expires, max_downloads, "
                       "downloads, pin_hash, revoked, note) SELECT token, session_id, created, expires, "
                       "max_downloads, downloads, pin_hash, revoked, note FROM old.share_links")
            db.execute("INSERT INTO audit (session_id, at, addr, what, via) "
                       "SELECT session_id, at, addr, what, via FROM old.audit")
            db.execute("DETACH DATABASE old")
        self._db = db
        self.prune_audit()

    def close(self) -> None:
        """Waits for a statement under way: closing a connection another thread is using crashes SQLite."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()

    def _x(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            assert self._db is not None, "access store not open"
            return self._db.execute(sql, args).fetchall()

    def _n(self, sql: str, args: tuple = ()) -> int:
        """Rows changed by one statement."""
        with self._lock:
            assert self._db is not None, "access store not open"
            return self._db.execute(sql, args).rowcount

    # -- grants ending: whoever holds something open under a link or a login is told ---------------
    def watch_grants(self, fn: Callable[[], None]) -> None:
        """Call fn (from whichever thread ended them) after links were revoked or logins ended."""
        self._listeners.append(fn)

    def grants_changed(self) -> None:
        """A link was revoked or logins ended (or the password they were made under changed)."""
        self.generation += 1
        for fn in list(self._listeners):
            fn()

    # -- share links -------------------------------------------------------------
    def create_link(self, session_id: int, hours: float, max_downloads: int, pin_hash: str = "",
                    max_wrong_pins: int = 0, made_by: str = AT_DEVICE, login_id: str = "",
                    session_uuid: str = "") -> ShareLink:
        """A new link; pin_hash made by the caller (passwords.hash_password), "" for none. Made by a browser
        login (``login_id``): only while that login exists, checked in the same statement, so a link asked for
        as the login ends is either refused here or revoked with the login's links (NotAllowedError)."""
        if not (0 < hours <= LINK_MAX_HOURS):
            raise InvalidArgument("expiry must be between a few minutes and a year (hours > 0)")
        if not (1 <= max_downloads <= LINK_MAX_DOWNLOADS):
            raise InvalidArgument(f"max downloads must be between 1 and {LINK_MAX_DOWNLOADS}")
        if made_by not in MADE_BY or made_by == UNKNOWN or bool(login_id) != (made_by in BROWSER_MADE):
            raise InvalidArgument(f"a share link made by {made_by!r} (login {login_id[:32]!r})")
        token = secrets.token_urlsafe(LINK_TOKEN_CHARS * 3 // 4)
        now = time.time()
        made = self._n("INSERT INTO share_links (token, session_id, created, expires, max_downloads, pin_hash, "
                       "max_wrong_pins, made_by, made_by_login, session_uuid) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
                       "WHERE ? = '' OR EXISTS (SELECT 1 FROM logins WHERE id = ? AND kind = ? AND expires > ?)",
                       (token, session_id, now, now + hours * 3600, max_downloads, pin_hash, max_wrong_pins,
                        made_by, login_id, session_uuid[:64], login_id, login_id, made_by, now))
        if made != 1:
            raise NotAllowedError("the login that asked for this link has ended (logout, a new password or "
                                  "revoked): log in again")
        return self.link(token)

    def link(self, token: str) -> ShareLink:
        rows = self._x("SELECT token, session_id, created, expires, max_downloads, downloads, pin_hash != '', "
                       "revoked, wrong_pins, max_wrong_pins, made_by, made_by_login, session_uuid FROM share_links "
                       "WHERE token = ?", (token,))
        if not rows:
            raise NotFoundError("no such share link")
        t, sid, c, e, m, d, pin, r, w, mw, mb, ml, su = rows[0]
        return ShareLink(t, sid, c, e, m, d, bool(pin), r, w, mw, mb, ml, su)

    def pin_hash(self, token: str) -> str:
        rows = self._x("SELECT pin_hash FROM share_links WHERE token = ?", (token,))
        return rows[0][0] if rows else ""

    def links(self, session_id: int | None = None, session_uuid: str | None = None,
              began: float | None = None) -> list[ShareLink]:
        """The links (of ``session_id``), newest first; with ``session_uuid`` (and when it ``began``), only those made
        for that meeting (ShareLink.for_meeting): a link made for the meeting that had this id before a restore is
        not this one's."""
        sql = "SELECT token FROM share_links" + (" WHERE session_id = ?" if session_id is not None else "")
        found = [self.link(t) for (t,) in self._x(sql + " ORDER BY created DESC",
                                                     (session_id,) if session_id is not None else ())]
        return found if session_uuid is None else [x for x in found if x.for_meeting(session_uuid, began)]

    def revoke(self, token: str) -> ShareLink:
        self.link(token)
        self._x("UPDATE share_links SET revoked = ? WHERE token = ? AND revoked = 0", (time.time(), token))
        self._x("DELETE FROM logins WHERE kind = 'share' AND scope = ?", (token,))
        self.grants_changed()
        return self.link(token)

    def revoke_made_by(self, kinds: tuple[str, ...] = (), login_id: str = "") -> int:
        """Revoke the links made by logins of these kinds (UNKNOWN among them: links whose maker is not known),
        or by the login ``login_id``; how many were revoked. Their PIN grants end and open downloads are cut.

        Call it after the logins ended: a link is then either made before (revoked here) or refused."""
        if not kinds and not login_id:
            return 0
        marks = ", ".join("?" * len(kinds)) or "NULL"
        with self._lock:
            assert self._db is not None, "access store not open"
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                tokens = [t for (t,) in db.execute(
                    f"SELECT token FROM share_links WHERE revoked = 0 AND (made_by IN ({marks}) OR "
                    "(? != '' AND made_by_login = ?))", (*kinds, login_id, login_id))]
                db.executemany("UPDATE share_links SET revoked = ? WHERE token = ?",
                               [(time.time(), t) for t in tokens])
                db.executemany("DELETE FROM logins WHERE kind = 'share' AND scope = ?", [(t,) for t in tokens])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if tokens:
            self.grants_changed()
        return len(tokens)

    def reserve_use(self, token: str) -> bool:
        """Take one use of a usable link (before its first byte is sent); False when none is left."""
        return self._n("UPDATE share_links SET downloads = downloads + 1 WHERE token = ? AND revoked = 0 "
                       "AND expires > ? AND downloads < max_downloads "
                       "AND (max_wrong_pins = 0 OR wrong_pins < max_wrong_pins)", (token, time.time())) == 1

    def release_use(self, token: str) -> None:
        """Give a use back: the download failed before its first byte."""
        self._x("UPDATE share_links SET downloads = downloads - 1 WHERE token = ? AND downloads > 0", (token,))

    def reserve_pin_guess(self, token: str) -> bool:
        """Count a PIN guess as wrong before it is checked; False when the link is locked by wrong PINs."""
        return self._n("UPDATE share_links SET wrong_pins = wrong_pins + 1 WHERE token = ? "
                       "AND (max_wrong_pins = 0 OR wrong_pins < max_wrong_pins)", (token,)) == 1

    def pin_was_right(self, token: str) -> None:
        self._x("UPDATE share_links SET wrong_pins = wrong_pins - 1 WHERE token = ? AND wrong_pins > 0", (token,))

    # -- logins ----------------------------------------------------------------------
    def create_login(self, kind: str, secret_tag: str, seconds: float, addr: str = "", agent: str = "",
                     scope: str = "") -> tuple[Login, str]:
        """A new login; (Login, the secret cookie value). Expired ones go, and the least recently seen past the
        cap of their class: browsers' logins past MAX_LOGINS; PIN grants (kind SHARE) past MAX_PIN_GRANTS for their
        link and past MAX_LOGINS in all. A PIN grant never ends a browser's login, nor a login a PIN grant."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        login_id = secrets.token_hex(8)
        with self._lock:
            assert self._db is not None, "access store not open"
            db = self._db
            db.execute("DELETE FROM logins WHERE expires <= ?", (now,))
            db.execute("INSERT INTO logins (id, token_hash, kind, scope, secret_tag, created, expires, last_seen, "
                       "addr, agent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (login_id, _hash(token), kind, scope, secret_tag, now, now + seconds, now, addr[:64],
                        agent[:200]))
            if kind == SHARE:
                db.execute("DELETE FROM logins WHERE id IN (SELECT id FROM logins WHERE kind = ? AND scope = ? "
                           "ORDER BY last_seen DESC LIMIT -1 OFFSET ?)", (SHARE, scope, MAX_PIN_GRANTS))
            db.execute("DELETE FROM logins WHERE id IN (SELECT id FROM logins WHERE (kind = ?) = ? "
                       "ORDER BY last_seen DESC LIMIT -1 OFFSET ?)", (SHARE, kind == SHARE, MAX_LOGINS))
        return Login(login_id, kind, scope, now, now + seconds, now, addr[:64], agent[:200]), token

    def login_for(self, token: str, secret_tag: str | tuple[str, ...], scope: str = "") -> Login | None:
        """The valid login this cookie value belongs to; a login made under another secret ends here (several
        tags: a login made under any of them is valid)."""
        tags = (secret_tag,) if isinstance(secret_tag, str) else secret_tag
        if not token or len(token) > 128:
            return None
        now = time.time()
        rows = self._x("SELECT id, kind, scope, secret_tag, created, expires, last_seen, addr, agent FROM logins "
                       "WHERE token_hash = ?", (_hash(token),))
        if not rows:
            return None
        lid, kind, sc, tag, created, expires, seen, addr, agent = rows[0]
        if expires <= now or tag not in tags:         # expired, or made under a password since changed
            self._x("DELETE FROM logins WHERE id = ?", (lid,))
            return None
        if sc != scope:
            return None
        if now - seen > SEEN_EVERY:
            self._x("UPDATE logins SET last_seen = ? WHERE id = ?", (now, lid))
            seen = now
        return Login(lid, kind, sc, created, expires, seen, addr, agent)

    def end_login(self, token: str) -> None:
        self._x("DELETE FROM logins WHERE token_hash = ?", (_hash(token),))
        self.grants_changed()

    def logins(self, kind: str | None = None) -> list[Login]:
        """The valid logins, most recently seen first."""
        rows = self._x("SELECT id, kind, scope, created, expires, last_seen, addr, agent FROM logins "
                       "WHERE expires > ?" + (" AND kind = ?" if kind else "") + " ORDER BY last_seen DESC",
                       (time.time(), kind) if kind else (time.time(),))
        return [Login(*r) for r in rows]

    def revoke_login(self, login_id: str) -> Login:
        found = [x for x in self.logins() if x.id == login_id]
        if not found:
            raise NotFoundError(f"no login {login_id[:32]!r}")
        self._x("DELETE FROM logins WHERE id = ?", (login_id,))
        self.grants_changed()
        return found[0]

    def end_logins(self, kind: str | None = None) -> int:
        """End every login (of one kind): "log out everywhere"; how many ended."""
        n = self._n("DELETE FROM logins WHERE kind = ?", (kind,)) if kind else self._n("DELETE FROM logins")
        self.grants_changed()
        return n

    # -- settings (what the touchscreen sets: the web password's hash) --------------------------------
    def setting(self, key: str) -> str:
        rows = self._x("SELECT value FROM settings WHERE key = ?", (key,))
        return rows[0][0] if rows else ""

    def set_setting(self, key: str, value: str) -> None:
        self._x("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
                (key, value, value))

    # -- audit ---------------------------------------------------------------------
    def audit(self, session_id: int, addr: str, what: str, via: str) -> None:
        self._x("INSERT INTO audit (session_id, at, addr, what, via) VALUES (?, ?, ?, ?, ?)",
                (session_id, time.time(), addr or "", what, via))
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self.prune_audit()

    def prune_audit(self) -> int:
        """Drop audit rows past audit_keep (also run by retention.prune); the count."""
        self._since_prune = 0
        return len(prune_rows(self._x, "audit", "at", self.audit_keep))

    def audit_log(self, session_id: int, limit: int = 200) -> list[dict]:
        rows = self._x("SELECT at, addr, what, via FROM audit WHERE session_id = ? ORDER BY at DESC, id DESC "
                       "LIMIT ?", (session_id, limit))
        return [{"at": a, "addr": ad, "what": w, "via": v} for a, ad, w, v in rows]
