"""Read-only reader of the recorder's SQLite database (WAL, written concurrently).

Listing and "what changed" read only the ``sessions`` table; transcripts, people,
analysis and files are loaded per session by ``get_session``. Bad data in one session
becomes ``Problem``s on that session; only a database-level fault raises ``SourceError``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import datetime as dt
import logging
import math
import os
import sqlite3
import stat as stat_mod
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Iterable

from steno_exportd import safeparse
from steno_exportd.errors import NotFoundError, SessionReplaced, SourceError, SourceLockedError
from steno_exportd.model import (
    ActionItem, FileRef, Participant, Problem, Segment, Session, SessionSummary,
)

log = logging.getLogger(__name__)

UTC = dt.timezone.utc
UNKNOWN_SPEAKER = "Unknown speaker"

# table -> (required columns, optional columns). Missing optional columns read as NULL.
SCHEMA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sessions": (
        ("id", "uuid", "title", "status", "start_time", "created_at", "updated_at"),
        ("end_time", "duration_seconds", "location", "participant_count", "audio_format",
         "audio_size_bytes", "tags", "description", "meeting_platform", "audio_file_path",
         "sample_rate", "audio_quality", "session_metadata", "transcription_confidence",
         "transcription_completed", "analysis_completed"),
    ),
    "transcript_entries": (
        ("id", "session_id", "text", "start_time_seconds", "end_time_seconds"),
        ("speaker_id", "speaker_name", "confidence"),
    ),
    "analysis_results": (
        ("id", "session_id", "analysis_type", "content"),
        ("action_items", "key_topics", "structured_data", "created_at", "title"),
    ),
    "participants": (
        ("id", "session_id", "speaker_id"),
        ("name", "role", "organization", "total_speaking_time_seconds", "speaking_percentage"),
    ),
    "file_info": (
        ("id", "session_id", "filename", "file_path", "file_type"),
        ("file_format", "size_bytes", "checksum", "mime_type"),
    ),
}

# The cheap per-session columns, in the order _summary_from_row reads them.
SUMMARY_COLUMNS = ("id", "uuid", "title", "status", "start_time", "end_time", "duration_seconds",
                   "updated_at", "created_at", "location", "participant_count", "audio_format",
                   "audio_size_bytes", "tags")
CHILD_TABLES = ("transcript_entries", "analysis_results", "participants", "file_info")

MIME_TYPES = {"flac": "audio/flac", "wav": "audio/wav", "mp3": "audio/mpeg", "ogg": "audio/ogg",
              "opus": "audio/ogg", "m4a": "audio/mp4", "aac": "audio/aac"}


@dataclasses.dataclass(frozen=True, slots=True)
class SessionsDelta:
    """What changed between two ``changed_since`` calls."""

    added: tuple[SessionSummary, ...] = ()
    changed: tuple[SessionSummary, ...] = ()
    removed: tuple[int, ...] = ()       # session ids

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    @property
    def ids(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(added ids, changed ids, removed ids), e.g. for ``events.SessionsChanged``."""
        return (tuple(s.id for s in self.added), tuple(s.id for s in self.changed), self.removed)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class ChangeToken:
    """Opaque snapshot handed back by ``changed_since``; pass it to the next call."""

    owner: int                                   # serial number of the Library that made it
    generation: int                              # connection generation (reconnect = new)
    data_version: int
    rows: dict[int, str] = dataclasses.field(repr=False)     # id -> 'updated_at|status' (the session's mark)
    child_max: tuple[int, ...] = ()              # max(rowid) of each child table

    @classmethod
    def restored(cls, rows: dict[int, str], child_max: tuple[int, ...]) -> "ChangeToken":
        """A token rebuilt from the ``rows`` marks and ``child_max`` of an earlier one (e.g. kept on disk).

        No Library owns it, so the next ``changed_since`` compares marks and child rows instead of
        taking the "nothing changed" shortcut: a restart stays incremental.
        """
        return cls(0, 0, -1, dict(rows), tuple(child_max))


# ---- value parsing (pure) -------------------------------------------------------------

def parse_datetime(value: Any) -> dt.datetime | None:
    """SQLAlchemy/ISO 8601 text (or epoch number) -> aware UTC datetime; ValueError if unparseable."""
    if type(value) is str:
        # Fast path for the recorder's usual naive 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC).
        if len(value) >= 19 and value[-6] not in "+-" and value[-1] != "Z":
            try:
                return dt.datetime.fromisoformat(value + "+00:00")
            except ValueError:
                pass
        try:
            d = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"unparseable date/time {value!r}") from None
        return d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, UTC)
    raise ValueError(f"not a date/time: {value!r}")


def parse_date(value: Any) -> dt.date | None:
    """A due date: 'YYYY-MM-DD' or a datetime text -> date; ValueError if unparseable."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        s = value.strip()
        try:
            return dt.date.fromisoformat(s[:10]) if len(s) >= 10 else dt.date.fromisoformat(s)
        except ValueError:
            raise ValueError(f"unparseable date {value!r}") from None
    raise ValueError(f"not a date: {value!r}")


def _json(value: Any, field: str, problems: list[Problem], default: Any = None) -> Any:
    """Decode a JSON column; malformed text becomes a Problem and ``default``."""
    if value is None or value == "":
        return default
    if not isinstance(value, (str, bytes)):
        return value
    try:
        return safeparse.json_loads(value)
    except ValueError as e:
        problems.append(Problem(field, f"malformed JSON ({e.msg} at char {e.pos})"))
        return default


def _num(value: Any) -> float | None:
    """A number column as a float; None when NULL, not a number, or not finite (SQLite keeps 9e999 as Infinity,
    float() reads the text 'nan': int() of either raises, and NaN passes every comparison)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        n = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return n if math.isfinite(n) else None


def _dt_field(row_value: Any, field: str, problems: list[Problem], required: bool) -> dt.datetime | None:
    if row_value is None:
        if required:
            problems.append(Problem(field, "NULL where a date/time is expected"))
        return None
    try:
        return parse_datetime(row_value)
    except (ValueError, OverflowError, OSError) as e:
        problems.append(Problem(field, str(e)))
        return None


_TAGS_CACHE: dict[str, tuple[str, ...]] = {}


def _fast_summary(row: tuple) -> SessionSummary | None:
    """The common, clean row in the recorder's own formats; None when anything needs a closer look."""
    (sid, uuid, title, status, start, end, duration, updated, created, location, pcount,
     afmt, asize, tags_raw) = row
    if not (type(uuid) is str and uuid and type(title) is str and title.strip() and type(status) is str
            and type(start) is str and len(start) == 26 and type(updated) is str and len(updated) == 26
            and type(created) is str and len(created) == 26 and (end is None or type(end) is str and len(end) == 26)
            and (duration is None or type(duration) is int and duration >= 0)
            and (pcount is None or type(pcount) is int and pcount >= 0)
            and (asize is None or type(asize) is int and asize >= 0)
            and (tags_raw is None or tags_raw in _TAGS_CACHE)):
        return None
    iso = dt.datetime.fromisoformat
    try:
        start_dt = iso(start + "+00:00")
        end_dt = iso(end + "+00:00") if end is not None else None
        updated_dt = iso(updated + "+00:00")
        created_dt = iso(created + "+00:00")
    except ValueError:
        return None
    if duration is None and end_dt is not None and end_dt >= start_dt:
        duration = int((end_dt - start_dt).total_seconds())
    return SessionSummary(
        id=sid, uuid=uuid, title=title, status=status, start_time=start_dt, end_time=end_dt,
        duration_seconds=duration, updated_at=updated_dt, created_at=created_dt, location=location,
        participant_count=pcount, audio_format=afmt.lower() if afmt else None, audio_size=asize,
        tags=_TAGS_CACHE[tags_raw] if tags_raw is not None else ())


def _summary_from_row(row: tuple) -> SessionSummary:
    """One raw ``SUMMARY_COLUMNS`` row -> SessionSummary with its row-level problems."""
    fast = _fast_summary(row)
    if fast is not None:
        return fast
    (sid, uuid, title, status, start, end, duration, updated, created, location, pcount,
     afmt, asize, tags_raw) = row
    problems: list[Problem] = []
    if uuid is None or str(uuid).strip() == "":
        problems.append(Problem("uuid", "NULL or empty uuid", fatal=True))
        uuid = ""
    uuid = str(uuid)
    if title is None or str(title).strip() == "":
        problems.append(Problem("title", "NULL or empty title"))
        title = f"Session {sid}"
    if status is None:
        problems.append(Problem("status", "NULL status"))
        status = "unknown"
    start_dt = _dt_field(start, "start_time", problems, required=True)
    end_dt = _dt_field(end, "end_time", problems, required=False)
    updated_dt = _dt_field(updated, "updated_at", problems, required=True)
    created_dt = _dt_field(created, "created_at", problems, required=True)
    dur: int | None = None
    if type(duration) is int and duration >= 0:
        dur = duration
    elif duration is not None:
        n = _num(duration)
        if n is None:
            problems.append(Problem("duration_seconds", f"not a number: {duration!r}"))
        elif n < 0:
            problems.append(Problem("duration_seconds", f"negative duration {duration}"))
        elif n >= 2 ** 63:                  # what SQLite's INTEGER and D-Bus's int64 hold
            problems.append(Problem("duration_seconds", f"duration {duration} is too large"))
        else:
            dur = int(n)
    if dur is None and start_dt and end_dt and end_dt >= start_dt:
        dur = int((end_dt - start_dt).total_seconds())
    if pcount is not None and type(pcount) is not int or type(pcount) is int and pcount < 0:
        problems.append(Problem("participant_count", f"invalid participant count {pcount!r}"))
        pcount = None
    if asize is not None and type(asize) is not int or type(asize) is int and asize < 0:
        problems.append(Problem("audio_size_bytes", f"invalid size {asize!r}"))
        asize = None
    tags: tuple[str, ...] = ()
    if tags_raw is not None and tags_raw in _TAGS_CACHE:
        tags = _TAGS_CACHE[tags_raw]
    elif tags_raw is not None:
        t = _json(tags_raw, "tags", problems)
        if isinstance(t, list):
            tags = tuple(str(x) for x in t if x is not None)
            if len(_TAGS_CACHE) < 4096:
                _TAGS_CACHE[tags_raw] = tags
        elif t is not None:
            problems.append(Problem("tags", f"expected a JSON list, got {type(t).__name__}"))
    return SessionSummary(
        id=int(sid), uuid=uuid, title=str(title), status=str(status), start_time=start_dt,
        end_time=end_dt, duration_seconds=dur, updated_at=updated_dt, created_at=created_dt,
        location=location, participant_count=int(pcount) if pcount is not None else None,
        audio_format=str(afmt).lower() if afmt else None,
        audio_size=int(asize) if asize is not None else None, tags=tags, problems=tuple(problems))


def uuid_key(uuid: str) -> str:
    """A uuid as uuids are compared (the key rule, a read bound to a meeting): case and surrounding blanks aside."""
    return uuid.strip().lower()


def _with_duplicates(summaries: list[SessionSummary]) -> list[SessionSummary]:
    """Add a ``uuid`` problem to every session sharing its uuid with another."""
    keys = [s.uuid.lower() for s in summaries]
    if len(set(keys)) == len(keys):
        return summaries
    by_uuid: dict[str, list[int]] = {}
    for s in summaries:
        if s.uuid:
            by_uuid.setdefault(uuid_key(s.uuid), []).append(s.id)
    dups = {k: v for k, v in by_uuid.items() if len(v) > 1}
    if not dups:
        return summaries
    out = []
    for s in summaries:
        ids = dups.get(uuid_key(s.uuid)) if s.uuid else None
        if ids:
            others = ", ".join(str(i) for i in ids if i != s.id)
            s = dataclasses.replace(s, problems=s.problems + (
                Problem("uuid", f"duplicate uuid {s.uuid} (also session {others})"),))
        out.append(s)
    return out


# ---- session keys and the listing ------------------------------------------------------

class SessionKeys:
    """The one rule for session keys: a decimal id, a whole uuid or a short id (the uuid's first 8 hex
    digits), case-insensitive; a prefix is never a key (a typo must not pick another meeting)."""

    MAX_CHARS = 64

    def __init__(self, pairs: Iterable[tuple[int, str | None]]) -> None:
        self._ids: set[int] = set()
        self._uuids: dict[str, list[int]] = {}
        self._short: dict[str, list[int]] = {}
        for sid, uuid in pairs:
            self._ids.add(sid)
            if uuid:
                key = uuid_key(str(uuid))
                self._uuids.setdefault(key, []).append(sid)
                self._short.setdefault(key.replace("-", "")[:8], []).append(sid)

    def holders(self, uuid: str) -> tuple[int, ...]:
        """The sessions whose uuid this is (case and surrounding blanks aside): none, one, or several sharing it."""
        return tuple(self._uuids.get(uuid_key(uuid), ()))

    def resolve(self, key: int | str) -> int:
        """The session id a key names; NotFoundError for none or more than one."""
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise NotFoundError(f"no session {key!r}")
        if isinstance(key, int):
            if key in self._ids:
                return key
            raise NotFoundError(f"no session with id {key}")
        k = key.strip().lower()
        if not k or len(k) > self.MAX_CHARS:
            raise NotFoundError(f"no session {key[:self.MAX_CHARS]!r}")
        if k.isascii() and k.isdigit() and int(k) in self._ids:
            return int(k)
        found = self._uuids.get(k)
        if found and len(found) > 1:
            raise NotFoundError(f"uuid {key} is ambiguous (sessions {', '.join(map(str, found))}); use the id")
        if not found and len(k) == 8:
            found = self._short.get(k)
            if found and len(found) > 1:
                raise NotFoundError(f"short id {key} is ambiguous (sessions {', '.join(map(str, found))}); "
                                    "use the id or the uuid")
        if found:
            return found[0]
        raise NotFoundError(f"no session {key!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class SessionListing:
    """Every session summary, newest first, with the key rule over them (what the core caches)."""

    sessions: tuple[SessionSummary, ...]
    version: int | None = None            # the library's data_version when it was read
    keys: SessionKeys = dataclasses.field(init=False, repr=False)
    by_id: dict[int, SessionSummary] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", SessionKeys((s.id, s.uuid) for s in self.sessions))
        object.__setattr__(self, "by_id", {s.id: s for s in self.sessions})

    def __len__(self) -> int:
        return len(self.sessions)

    def resolve(self, key: int | str) -> int:
        """The id of the session a key names (see SessionKeys); NotFoundError otherwise."""
        return self.keys.resolve(key)


_SERIALS = itertools.count(1)


# ---- the library -----------------------------------------------------------------------

class Library:
    """The recorder's sessions, read-only. Thread-safe; every method may raise SourceError."""

    def __init__(self, db_path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                 lock_timeout: float = 5.0) -> None:
        self.db_path = Path(db_path)
        self.data_dir = Path(data_dir) if data_dir else self.db_path.parent
        self.lock_timeout = float(lock_timeout)
        self._lock = threading.RLock()
        self._conn_: sqlite3.Connection | None = None
        self._pinned: sqlite3.Connection | None = None
        self._ino: tuple | None = None
        self._immutable = False
        self._generation = 0
        self._cols: dict[str, set[str]] = {}
        self._summary_sql = ""
        self._cache: dict[tuple, SessionSummary] = {}
        self._serial = next(_SERIALS)

    @classmethod
    def from_config(cls, cfg: Any) -> "Library":
        """Build from a Config: recorder.db_path, recorder_data_dir, recorder.lock_timeout."""
        return cls(cfg.recorder.db_path, cfg.recorder_data_dir, cfg.recorder.lock_timeout)

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the kept connection; the library reopens it if used again."""
        with self._lock:
            if self._conn_ is not None:
                try:
                    self._conn_.close()
                finally:
                    self._conn_ = None

    def check(self) -> None:
        """Open and validate the database now; SourceError if unusable."""
        with self._lock:
            self._conn()

    # -- connection ---------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._pinned is not None:
            return self._pinned         # in a read (_snapshot): the file it began on, even if replaced since
        try:
            st = os.stat(self.db_path)
        except FileNotFoundError:
            self.close()
            raise SourceError(f"recorder database missing: {self.db_path}") from None
        except OSError as e:
            self.close()
            raise SourceError(f"recorder database {self.db_path} cannot be read: {e.strerror}") from None
        ino: tuple = (st.st_dev, st.st_ino)
        if self._immutable:
            # An immutable connection never sees writes: reopen when the file or its WAL changes.
            ino += (st.st_mtime_ns, st.st_size, os.path.exists(str(self.db_path) + "-wal"))
        if self._conn_ is not None and ino == self._ino:
            return self._conn_
        self.close()       # first use, or the file was replaced
        self._immutable = False
        self._conn_ = self._open()
        if self._immutable:
            ino += (st.st_mtime_ns, st.st_size, os.path.exists(str(self.db_path) + "-wal"))
        self._ino = ino
        self._generation += 1
        return self._conn_

    def _open(self) -> sqlite3.Connection:
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.db_path)) + "?mode=ro"
        if not self.db_path.is_file():
            raise SourceError(f"recorder database is not a file: {self.db_path}")
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.lock_timeout, check_same_thread=False,
                                   isolation_level=None)
        except sqlite3.Error as e:
            raise self._error(e) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout * 1000)}")
            conn.execute("PRAGMA query_only = 1")
            self._validate(conn)
        except sqlite3.Error as e:
            conn.close()
            if (("unable to open" in str(e) or "readonly" in str(e))
                    and not os.access(self.db_path.parent, os.W_OK)):
                # A WAL database in a folder we cannot write, with no -shm to share: nobody is
                # writing it now, so read it as immutable (reopened if it changes).
                self._immutable = True
                return self._open_immutable()
            raise self._error(e) from None
        except SourceError:
            conn.close()
            raise
        return conn

    def _open_immutable(self) -> sqlite3.Connection:
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.db_path)) + "?mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.lock_timeout, check_same_thread=False,
                                   isolation_level=None)
            self._validate(conn)
        except sqlite3.Error as e:
            raise self._error(e) from None
        return conn

    def _error(self, e: sqlite3.Error) -> SourceError:
        msg = str(e)
        if "locked" in msg or "busy" in msg:
            return SourceLockedError(f"recorder database {self.db_path} is locked "
                               f"(waited {self.lock_timeout:g} s): {msg}")
        if "not a database" in msg or "encrypted" in msg:
            return SourceError(f"recorder database {self.db_path} is not an SQLite database")
        if "malformed" in msg:
            return SourceError(f"recorder database {self.db_path} is corrupt: {msg}")
        return SourceError(f"recorder database {self.db_path}: {msg}")

    def _validate(self, conn: sqlite3.Connection) -> None:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing: list[str] = []
        cols: dict[str, set[str]] = {}
        for table, (required, _optional) in SCHEMA.items():
            if table not in tables:
                missing.append(f"table '{table}'")
                continue
            have = {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}
            cols[table] = have
            missing += [f"column '{table}.{c}'" for c in required if c not in have]
        if missing:
            raise SourceError(f"recorder database {self.db_path} lacks " + ", ".join(missing))
        self._cols = cols
        self._summary_sql = f"SELECT {self._select('sessions', SUMMARY_COLUMNS)} FROM sessions"
        self._cache.clear()

    def _select(self, table: str, columns: Iterable[str]) -> str:
        have = self._cols[table]
        return ", ".join(c if c in have else f"NULL AS {c}" for c in columns)

    @contextlib.contextmanager
    def _snapshot(self):
        """One read transaction: every query inside sees the same committed state, of the same file (the
        connection is kept for it: a database replaced whole meanwhile, a restore, is opened only after it)."""
        with self._lock:
            if self._pinned is not None:
                yield                   # (within one already)
                return
            conn = self._conn()
            try:
                conn.execute("BEGIN")
            except sqlite3.Error as e:
                raise self._error(e) from None
            self._pinned = conn
            try:
                yield
            finally:
                self._pinned = None
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error:
                    pass

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            conn = self._conn()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as e:
                if "decode" not in str(e):
                    raise self._error(e) from None
            # Invalid UTF-8 in a text column: read it with replacement characters instead.
            conn.text_factory = _lenient_text
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as e:
                raise self._error(e) from None
            finally:
                conn.text_factory = str

    # -- listing and changes ---------------------------------------------------------------

    def data_version(self) -> int:
        """A number that changes whenever another connection commits to the database."""
        with self._lock:
            conn = self._conn()
            try:
                v = conn.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error as e:
                raise self._error(e) from None
            return self._generation << 32 | v

    def _summary_rows(self) -> list[tuple]:
        with self._lock:
            self._conn()            # connects (and builds _summary_sql) on first use
            return self._query(self._summary_sql)

    def _summaries(self, rows: list[tuple]) -> list[SessionSummary]:
        cache = self._cache
        new_cache: dict[tuple, SessionSummary] = {}
        out = []
        for row in rows:
            s = cache.get(row)
            if s is None:
                s = _summary_from_row(row)
            new_cache[row] = s
            out.append(s)
        self._cache = new_cache
        return _with_duplicates(out)

    def list_sessions(self, exportable_only: bool = False) -> list[SessionSummary]:
        """Every session's cheap fields, newest first; never loads transcripts."""
        with self._lock:
            summaries = self._summaries(self._summary_rows())
        summaries.sort(key=_newest_first, reverse=True)
        if exportable_only:
            summaries = [s for s in summaries if s.exportable]
        return summaries

    def sessions_with_participant(self, text: str) -> set[int]:
        """Ids of sessions with a participant whose name or speaker id contains ``text`` (case-insensitive)."""
        pat = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._query("SELECT DISTINCT session_id FROM participants WHERE name LIKE ? ESCAPE '\\' "
                           "OR speaker_id LIKE ? ESCAPE '\\'", (pat, pat))
        return {r[0] for r in rows}

    def changed_since(self, token: ChangeToken | None) -> tuple[SessionsDelta, ChangeToken]:
        """Sessions added/changed/removed since ``token`` (None: all are added) and a new token.

        A session counts as changed when its ``updated_at`` or ``status`` differs (the recorder
        bumps ``updated_at`` on every update) or rows were appended to its transcript, analysis,
        participants or files. Cheap: two narrow columns per session, never a transcript.
        """
        with self._lock:
            version = self.data_version()
            if (token is not None and token.owner == self._serial and token.generation == self._generation
                    and token.data_version == version):
                return SessionsDelta(), token
            with self._snapshot():
                marks = dict(self._query(
                    "SELECT id, ifnull(updated_at, '') || '|' || ifnull(status, '') FROM sessions"))
                child_max = tuple(self._query(f"SELECT max(rowid) FROM {t}")[0][0] or 0 for t in CHILD_TABLES)
            new_token = ChangeToken(self._serial, self._generation, version, marks, child_max)
            if token is None:
                return SessionsDelta(added=tuple(self.list_sessions())), new_token
            old = token.rows
            differ = marks.items() - old.items()          # set difference in C: added or changed
            added_ids = sorted(i for i, _ in differ if i not in old)
            changed_ids = sorted(i for i, _ in differ if i in old)
            removed = tuple(sorted(old.keys() - marks.keys()))
            # Rows appended to child tables (e.g. transcript entries) change their session too.
            touched: set[int] = set()
            for t, before, now in zip(CHILD_TABLES, token.child_max, child_max):
                if now > before:
                    touched.update(r[0] for r in self._query(
                        f"SELECT DISTINCT session_id FROM {t} WHERE rowid > ?", (before,)))
            seen = set(changed_ids) | set(added_ids)
            changed_ids += sorted(i for i in touched if i in marks and i in old and i not in seen)
            if not added_ids and not changed_ids:
                return SessionsDelta(removed=removed), new_token
            want = added_ids + changed_ids
            if len(want) > 200:
                pick = {s.id: s for s in self.list_sessions()}
            else:
                pick = {s.id: s for s in self._summaries_of(want)}
            delta = SessionsDelta(added=tuple(pick[i] for i in added_ids if i in pick),
                                  changed=tuple(pick[i] for i in changed_ids if i in pick), removed=removed)
            return delta, new_token

    def _summaries_of(self, ids: list[int]) -> list[SessionSummary]:
        """Summaries of a few sessions, with duplicate-uuid problems."""
        marks = ",".join("?" * len(ids))
        rows = self._query(f"{self._summary_sql} WHERE id IN ({marks})", tuple(ids))
        out = []
        for row in rows:
            s = _summary_from_row(row)
            if s.uuid:
                same = self._query("SELECT id FROM sessions WHERE lower(uuid) = ? AND id != ?",
                                   (uuid_key(s.uuid), s.id))
                if same:
                    s = dataclasses.replace(s, problems=s.problems + (Problem(
                        "uuid", f"duplicate uuid {s.uuid} (also session {', '.join(str(r[0]) for r in same)})"),))
            out.append(s)
        return out

    # -- one session -------------------------------------------------------------------------

    def _one_summary(self, sid: int, uuid: str | None) -> SessionSummary:
        """Session ``sid``'s summary, in the caller's read (_snapshot); when ``uuid`` is given, only if it is that
        meeting's: a check on an earlier read (the cached listing) and then a read by id would serve another
        meeting after a restore of the recorder's database in between (its ids count on from the backup's)."""
        found = self._summaries_of([sid])
        if not found:
            raise NotFoundError(f"no session with id {sid}")
        if uuid is not None and uuid_key(found[0].uuid) != uuid_key(uuid):
            raise SessionReplaced(f"session {sid} is another meeting now (not uuid {uuid[:36]})")
        return found[0]

    def resolve(self, key: int | str) -> int:
        """Session id for an id, a uuid or a short id (the one rule: SessionKeys); NotFoundError otherwise."""
        if isinstance(key, int) and not isinstance(key, bool):
            if 0 <= key < 2**63 and self._query("SELECT 1 FROM sessions WHERE id = ?", (key,)):
                return key
            raise NotFoundError(f"no session with id {key}")
        return SessionKeys(self._query("SELECT id, uuid FROM sessions")).resolve(key)

    def get_session(self, key: int | str, uuid: str | None = None) -> Session:
        """The whole session (transcript, people, analysis, files) for an id, uuid or short id; ``uuid``: only the
        meeting with that uuid (checked in the same read: SessionReplaced when the id names another one now)."""
        sid = self.resolve(key)
        with self._lock, self._snapshot():
            summary = self._one_summary(sid, uuid)
            extra = self._query(
                f"SELECT {self._select('sessions', ('description', 'meeting_platform', 'audio_file_path', 'sample_rate', 'audio_quality', 'session_metadata', 'transcription_confidence'))}"
                " FROM sessions WHERE id = ?", (sid,))[0]
            tr = self._query(
                f"SELECT {self._select('transcript_entries', ('id', 'text', 'speaker_id', 'speaker_name', 'start_time_seconds', 'end_time_seconds', 'confidence'))}"
                " FROM transcript_entries WHERE session_id = ? ORDER BY id", (sid,))
            people = self._query(
                f"SELECT {self._select('participants', ('id', 'speaker_id', 'name', 'role', 'organization', 'total_speaking_time_seconds', 'speaking_percentage'))}"
                " FROM participants WHERE session_id = ? ORDER BY id", (sid,))
            analysis = self._query(
                f"SELECT {self._select('analysis_results', ('id', 'analysis_type', 'content', 'structured_data', 'action_items', 'key_topics', 'created_at'))}"
                " FROM analysis_results WHERE session_id = ? ORDER BY id", (sid,))
            files = self._query(
                f"SELECT {self._select('file_info', ('id', 'filename', 'file_path', 'file_type', 'file_format', 'size_bytes', 'checksum', 'mime_type'))}"
                " FROM file_info WHERE session_id = ? ORDER BY id", (sid,))
        return build_session(summary, extra, tr, people, analysis, files, self.data_dir)

    def recording(self, sid: int, uuid: str | None = None) -> FileRef | None:
        """A session's recording as ``get_session`` resolves and checks it, without its transcript (None: none);
        ``uuid``: as get_session's."""
        with self._lock, self._snapshot():
            summary = self._one_summary(sid, uuid)
            audio_path = self._query(f"SELECT {self._select('sessions', ('audio_file_path',))} FROM sessions "
                                     "WHERE id = ?", (sid,))[0][0]
            files = self._query(
                f"SELECT {self._select('file_info', ('id', 'filename', 'file_path', 'file_type', 'file_format', 'size_bytes', 'checksum', 'mime_type'))}"
                " FROM file_info WHERE session_id = ? ORDER BY id", (sid,))
        return _files(summary, audio_path, files, self.data_dir, [])[0]


_OLDEST = dt.datetime.min.replace(tzinfo=UTC)


def _lenient_text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _newest_first(s: SessionSummary) -> tuple:
    """Sort key (with reverse=True): start time, then id; sessions without a time last."""
    return (s.start_time or s.created_at or _OLDEST, s.id)


# ---- building a session (pure, given rows) -----------------------------------------------

def build_session(summary: SessionSummary, extra: tuple, tr: list[tuple], people: list[tuple],
                  analysis: list[tuple], files: list[tuple], data_dir: Path) -> Session:
    """Assemble a Session from its rows; every oddity becomes a Problem."""
    problems: list[Problem] = list(summary.problems)
    description, platform, audio_path, sample_rate, audio_quality, meta_raw, tconf = extra
    metadata = _json(meta_raw, "session_metadata", problems, default={})
    if not isinstance(metadata, dict):
        problems.append(Problem("session_metadata", f"expected a JSON object, got {type(metadata).__name__}"))
        metadata = {}

    names, parts_rows = _participant_rows(people, problems)
    segments = _segments(tr, names, problems)
    participants = _participants(parts_rows, segments, names)
    summary_text, actions, topics = _analysis(analysis, problems)
    audio, other_files = _files(summary, audio_path, files, data_dir, problems)
    meta = dict(metadata)
    if sample_rate is not None:
        meta.setdefault("sample_rate", sample_rate)
    if audio_quality is not None:
        meta.setdefault("audio_quality", audio_quality)
    return Session(
        summary=summary, description=description, meeting_platform=platform,
        participants=participants, segments=segments, summary_text=summary_text,
        action_items=actions, topics=topics, audio=audio, files=other_files, metadata=meta,
        problems=tuple(problems))


def _participant_rows(people: list[tuple], problems: list[Problem]) -> tuple[dict[str, str], list[tuple]]:
    names: dict[str, str] = {}
    rows = []
    for pid, speaker_id, name, role, org, secs, pct in people:
        if speaker_id is None or str(speaker_id) == "":
            problems.append(Problem(f"participants[{pid}]", "NULL speaker_id; row ignored"))
            continue
        speaker_id = str(speaker_id)
        if name is not None and str(name).strip():
            names[speaker_id] = str(name).strip()
        s = _num(secs)
        if secs is not None and (s is None or s < 0):
            problems.append(Problem(f"participants[{pid}]", f"invalid speaking time {secs!r}"))
            s = None
        p = _num(pct)
        if pct is not None and (p is None or not 0 <= p <= 100):
            problems.append(Problem(f"participants[{pid}]", f"invalid speaking percentage {pct!r}"))
            p = None
        rows.append((speaker_id, role, org, s, p))
    return names, rows


def _segments(tr: list[tuple], names: dict[str, str], problems: list[Problem]) -> tuple[Segment, ...]:
    items = []
    out_of_order = 0
    first_disorder = None
    last_start = None
    for eid, text, speaker_id, speaker_name, start, end, conf in tr:
        field = f"transcript[{eid}]"
        s, e = _num(start), _num(end)
        if s is None:
            problems.append(Problem(field, f"NULL or invalid start time {start!r}; entry skipped"))
            continue
        if s < 0:
            problems.append(Problem(field, f"negative start time {start!r}; entry skipped"))
            continue
        if e is None:
            problems.append(Problem(field, f"NULL or invalid end time {end!r}; using the start time"))
            e = s
        elif e < s:
            problems.append(Problem(field, f"ends ({e:g} s) before it starts ({s:g} s)"))
            e = s
        if text is None:
            problems.append(Problem(field, "NULL text"))
            text = ""
        c = _num(conf)
        if conf is not None and (c is None or not 0 <= c <= 1):
            problems.append(Problem(field, f"confidence {conf!r} outside 0..1"))
            c = None
        if last_start is not None and s < last_start:
            out_of_order += 1
            if first_disorder is None:
                first_disorder = eid
        last_start = s if last_start is None else max(last_start, s)
        spk = str(speaker_id) if speaker_id not in (None, "") else None
        name = names.get(spk) if spk else None
        if not name and speaker_name is not None and str(speaker_name).strip():
            name = str(speaker_name).strip()
        items.append((s, e, eid, spk, name or spk or UNKNOWN_SPEAKER, str(text), c))
    if out_of_order:
        problems.append(Problem(f"transcript[{first_disorder}]",
                                f"{out_of_order} transcript entries out of order; sorted by start time"))
    items.sort(key=lambda t: (t[0], t[1], t[2]))
    overlaps = 0
    first_overlap = None
    prev_end = None
    segs = []
    for idx, (s, e, eid, spk, name, text, c) in enumerate(items):
        if prev_end is not None and s < prev_end - 1e-6:
            overlaps += 1
            if first_overlap is None:
                first_overlap = (idx, eid)
        prev_end = e if prev_end is None else max(prev_end, e)
        segs.append(Segment(index=idx, start=s, end=e, speaker_id=spk, speaker_name=name, text=text,
                            confidence=c))
    if overlaps:
        problems.append(Problem(f"transcript[{first_overlap[1]}]",
                                f"{overlaps} transcript entries overlap the previous one "
                                f"(first at position {first_overlap[0]})"))
    return tuple(segs)


def _participants(rows: list[tuple], segments: tuple[Segment, ...], names: dict[str, str]) -> tuple[Participant, ...]:
    words: dict[str, int] = {}
    secs: dict[str, float] = {}
    seg_name: dict[str, str] = {}
    for seg in segments:
        if seg.speaker_id is None:
            continue
        words[seg.speaker_id] = words.get(seg.speaker_id, 0) + len(seg.text.split())
        secs[seg.speaker_id] = secs.get(seg.speaker_id, 0.0) + (seg.end - seg.start)
        seg_name.setdefault(seg.speaker_id, seg.speaker_name)
    total = sum(secs.values())
    out = []
    seen = set()
    for speaker_id, role, org, s, p in rows:
        if speaker_id in seen:
            continue
        seen.add(speaker_id)
        spoken = s if s is not None else secs.get(speaker_id, 0.0)
        pct = p if p is not None else (100.0 * secs.get(speaker_id, 0.0) / total if total else 0.0)
        out.append(Participant(speaker_id=speaker_id,
                               name=names.get(speaker_id) or seg_name.get(speaker_id) or speaker_id,
                               role=role, organization=org, speaking_seconds=spoken,
                               speaking_percentage=pct, word_count=words.get(speaker_id, 0)))
    for speaker_id in secs:
        if speaker_id not in seen:
            seen.add(speaker_id)
            out.append(Participant(speaker_id=speaker_id, name=seg_name[speaker_id],
                                   speaking_seconds=secs[speaker_id],
                                   speaking_percentage=100.0 * secs[speaker_id] / total if total else 0.0,
                                   word_count=words.get(speaker_id, 0)))
    return tuple(out)


def _action_item(item: Any, field: str, problems: list[Problem]) -> ActionItem | None:
    if isinstance(item, str):
        return ActionItem(text=item.strip()) if item.strip() else None
    if not isinstance(item, dict):
        problems.append(Problem(field, f"action item is neither text nor an object: {item!r:.60}"))
        return None
    text = next((item[k] for k in ("text", "task", "description", "item", "title", "action")
                 if isinstance(item.get(k), str) and item[k].strip()), None)
    if text is None:
        problems.append(Problem(field, "action item without text"))
        return None
    owner = next((item[k] for k in ("owner", "assignee", "assigned_to", "responsible")
                  if item.get(k) not in (None, "")), None)
    due = None
    raw_due = next((item[k] for k in ("due", "due_date", "deadline") if item.get(k) not in (None, "")), None)
    if raw_due is not None:
        try:
            due = parse_date(raw_due)
        except ValueError as e:
            problems.append(Problem(field, f"action item due date: {e}"))
    status = item.get("status")
    done = bool(item.get("done") or item.get("completed")) or (
        isinstance(status, str) and status.lower() in ("done", "completed", "closed"))
    return ActionItem(text=text.strip(), owner=str(owner) if owner is not None else None, due=due, done=done)


def _analysis(rows: list[tuple], problems: list[Problem]) -> tuple[str | None, tuple[ActionItem, ...], tuple[str, ...]]:
    summary_text = None
    comprehensive = None
    actions_primary: list[ActionItem] = []
    actions_other: list[ActionItem] = []
    topics_primary: list[str] = []
    topics_other: list[str] = []
    for aid, atype, content, structured, actions_raw, topics_raw, _created in rows:
        atype = (atype or "").lower()
        base = f"analysis_results[{aid}]"
        data = _json(structured, f"{base}.structured_data", problems)
        if atype == "summary" and content is not None and str(content).strip():
            summary_text = str(content)           # the latest summary row wins
        elif atype == "comprehensive":
            text = data.get("summary") if isinstance(data, dict) else None
            comprehensive = text if isinstance(text, str) and text.strip() else (content or comprehensive)
        acts = _json(actions_raw, f"{base}.action_items", problems)
        if acts is None and atype == "action_items" and isinstance(data, (list, dict)):
            acts = data.get("action_items") if isinstance(data, dict) else data
        if acts is not None:
            if not isinstance(acts, list):
                problems.append(Problem(f"{base}.action_items", f"expected a JSON list, got {type(acts).__name__}"))
            else:
                target = actions_primary if atype == "action_items" else actions_other
                for n, item in enumerate(acts):
                    a = _action_item(item, f"{base}.action_items[{n}]", problems)
                    if a is not None:
                        target.append(a)
        tops = _json(topics_raw, f"{base}.key_topics", problems)
        if tops is not None:
            if not isinstance(tops, list):
                problems.append(Problem(f"{base}.key_topics", f"expected a JSON list, got {type(tops).__name__}"))
            else:
                target_t = topics_primary if atype == "topics" else topics_other
                for t in tops:
                    if isinstance(t, dict):
                        t = t.get("topic") or t.get("name") or t.get("title")
                    if isinstance(t, str) and t.strip():
                        target_t.append(t.strip())
    actions = _dedupe(actions_primary or actions_other, key=lambda a: (a.text, a.owner, a.due))
    topics = _dedupe(topics_primary or topics_other, key=lambda t: t.lower())
    if summary_text is None and comprehensive:
        summary_text = str(comprehensive)
    return summary_text, tuple(actions), tuple(topics)


def _dedupe(items: list, key) -> list:
    seen = set()
    out = []
    for x in items:
        k = key(x)
        if k not in seen:
            seen.add(k)
            out.append(x)
    return out


def _resolve_in(raw: str, data_dir: Path) -> tuple[Path | None, str | None]:
    """Resolve a recorder path inside the data dir -> (real path, None) or (None, reason)."""
    p = Path(raw)
    if not p.is_absolute():
        p = data_dir / p
    try:
        real_dir = os.path.realpath(data_dir)
        real = os.path.realpath(p)
    except OSError as e:        # a symlink swapped while it was resolved (EINVAL from readlink): not usable now
        return None, f"path {raw!r} changed while it was checked ({e.strerror})"
    if real != real_dir and not real.startswith(real_dir.rstrip(os.sep) + os.sep):
        if ".." in Path(raw).parts:
            why = "'..' leads out of"
        elif os.path.islink(p) or real != os.path.abspath(p):
            why = "a symlink leads out of"
        else:
            why = "absolute path outside"
        return None, f"path {raw!r} escapes the data dir ({why} {data_dir})"
    return Path(real), None


def _regular(path: Path) -> os.stat_result | None:
    """lstat of a resolved path when it is a regular file (it may change any time: never raises)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st if stat_mod.S_ISREG(st.st_mode) else None


def _files(summary: SessionSummary, audio_raw: Any, rows: list[tuple], data_dir: Path,
           problems: list[Problem]) -> tuple[FileRef | None, tuple[FileRef, ...]]:
    refs: list[tuple[str, FileRef]] = []   # (raw file_type, ref)
    for fid, filename, file_path, file_type, file_format, size, checksum, mime in rows:
        field = f"file_info[{fid}]"
        if file_path is None or str(file_path) == "":
            problems.append(Problem(field, "NULL file_path"))
            continue
        path, why = _resolve_in(str(file_path), data_dir)
        st = _regular(path) if not why else None
        if why:
            problems.append(Problem(field, why))
        elif st is None:
            problems.append(Problem(field, f"file missing: {path}"))
            path = None
        name = str(filename) if filename else Path(str(file_path)).name
        fmt = (str(file_format) if file_format else Path(name).suffix.lstrip(".")).lower()
        n = _num(size)
        if st is not None:
            n = st.st_size
        refs.append((str(file_type or "").lower(), FileRef(
            filename=name, path=path, file_type=str(file_type or "unknown").lower(), file_format=fmt,
            size=int(n) if n is not None and n >= 0 else 0,
            checksum=str(checksum).lower() if checksum else None, mime_type=mime,
            dev=st.st_dev if st else 0, ino=st.st_ino if st else 0)))

    audio: FileRef | None = None
    if audio_raw not in (None, ""):
        path, why = _resolve_in(str(audio_raw), data_dir)
        if why:
            problems.append(Problem("audio_file_path", f"audio {why}"))
        elif (st := _regular(path)) is None:
            problems.append(Problem("audio_file_path", f"audio file missing: {path}" if not os.path.lexists(path)
                                    else f"audio path is not a regular file: {path}"))
        else:
            fmt = (summary.audio_format or path.suffix.lstrip(".")).lower()
            match = next((r for t, r in refs if r.path == path), None)
            if match is not None:
                refs = [(t, r) for t, r in refs if r is not match]
            audio = FileRef(filename=path.name, path=path, file_type="audio", file_format=fmt,
                            size=st.st_size, checksum=match.checksum if match else None,
                            mime_type=(match.mime_type if match and match.mime_type else MIME_TYPES.get(fmt)),
                            dev=st.st_dev, ino=st.st_ino)
    else:
        match = next((r for t, r in refs if t == "audio" and r.path is not None), None)
        if match is not None:
            refs = [(t, r) for t, r in refs if r is not match]
            audio = match
        elif summary.status in ("completed", "archived"):
            problems.append(Problem("audio_file_path", "no audio file recorded for this session"))
    return audio, tuple(r for _, r in refs)
