"""Full-text search over the recorder's sessions: an SQLite FTS5 index of its own in the state dir.

What is indexed, one row each: the title; the details (place, platform, tags, participants,
topics); the description; the summary; every action item; every transcript line (with its
time and speaker). The index is kept current from the library's ``changed_since``: only the
sessions added, changed or removed are touched, and the marks of what was indexed are kept on
disk, so a restart stays incremental. It is rebuilt only when its file is missing or unreadable,
its schema version changed, or it was built from another recorder database.

Why its own file (``search.db``) and not the state DB: building the index writes for seconds
to minutes in many small transactions; in a separate file that never delays a job, the history
or a share link, and the index (derived data) can be thrown away and rebuilt at any time.

Matching is case- and accent-insensitive in every script: the text is folded before FTS5 sees
it (NFKD without combining diacritics, case folded), because unicode61's own ``remove_diacritics``
folds Latin only (not Greek tonos, not Cyrillic ё). Han, kana and Hangul have no spaces between
words, so each of their characters is its own token and a CJK word is searched as a phrase of its
characters (any length, unlike a trigram tokenizer, which cannot find one- or two-character
words). The original text is kept for display; matches are marked on it by mapping FTS5's
highlight of the folded text back, character by character.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import html
import json
import logging
import os
import re
import sqlite3
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any, Callable

from steno_exportd.errors import InvalidArgument, NotFoundError, SourceError, StenoError
from steno_exportd.library import ChangeToken, Library
from steno_exportd.model import Session
from steno_exportd.pools import in_pool

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FILE_NAME = "search.db"

MAX_QUERY_CHARS = 200        # what a person types; longer input is refused, not cut
MAX_TERMS = 12
MAX_LIMIT = 50               # sessions per page
MAX_OFFSET = 100_000
HITS_PER_SESSION = 3
SNIPPET_CHARS = 200
QUERY_SECONDS = 2.0          # one search never holds a core longer than this
BROAD_ROWS = 10_000          # more matching rows than this: newest sessions first, not ranked by bm25
COUNT_PASS_ROWS = 50_000     # up to this many, a broad query counts them in one pass; beyond, a cursor per session
MAX_ROW_CHARS = 20_000       # of one indexed text (a hostile row cannot bloat the index)
LINE_BITS = 24               # rowid = session id << LINE_BITS | row number within the session
MAX_ROWS = (1 << LINE_BITS) - 1
MAX_SESSION_ID = (1 << (63 - LINE_BITS)) - 1
BATCH_ROWS = 4000            # rows per write transaction while indexing
BACKGROUND_DUTY = 0.5        # share of one core the background indexer may use
MERGE_SHARE = 0.1            # rows written since the last full merge, as a share of the index, that start one
MERGE_PAGES = 2000           # FTS5 leaf pages merged per transaction (~0.2 s here)

# Row kinds (stored as small integers: a transcript has thousands of rows).
KINDS = ("title", "details", "description", "summary", "action_item", "transcript")
TITLE, DETAILS, DESCRIPTION, SUMMARY, ACTION_ITEM, TRANSCRIPT = range(len(KINDS))

SEP = "\x1f"                     # a separator to unicode61 that cleaned text never holds
MARK_ON, MARK_OFF = "\x02", "\x03"   # highlight markers (control characters: never in cleaned text)
HIT_COLUMNS = f"rowid, kind, seconds, speaker, coalesce(text, body), highlight(fts, 0, '{MARK_ON}', '{MARK_OFF}')"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_DIACRITICS = re.compile("[\u0300-\u036f]")   # combining diacritical marks (Latin, Greek, Cyrillic)
_CJK_RANGES = ((0x3040, 0x30FF), (0x3100, 0x312F), (0x31A0, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
               (0xAC00, 0xD7AF), (0xF900, 0xFAFF), (0xFF66, 0xFF9F), (0x20000, 0x2FA1F))

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
  session_id INTEGER PRIMARY KEY, mark TEXT NOT NULL, uuid TEXT NOT NULL, title TEXT NOT NULL,
  start_time TEXT, rows INTEGER NOT NULL, speakers TEXT NOT NULL DEFAULT '[]');
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
  body, kind UNINDEXED, seconds UNINDEXED, speaker UNINDEXED, text UNINDEXED,
  tokenize = 'unicode61 remove_diacritics 2');
"""


# ---- results ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class SearchHit:
    """One matching row: a transcript line (with time and speaker) or a session text."""

    kind: str                       # one of KINDS
    snippet: str                    # plain text around the match ('…' where cut)
    marks: tuple[tuple[int, int], ...]   # [start, end) character ranges of the matches in ``snippet``
    seconds: float | None = None    # transcript lines: start time in the recording
    speaker: str | None = None      # transcript lines: who spoke

    @property
    def snippet_html(self) -> str:
        """``snippet`` escaped for HTML, each match in <mark>."""
        out, pos = [], 0
        for a, b in self.marks:
            out += [html.escape(self.snippet[pos:a]), "<mark>", html.escape(self.snippet[a:b]), "</mark>"]
            pos = b
        out.append(html.escape(self.snippet[pos:]))
        return "".join(out)


@dataclasses.dataclass(frozen=True, slots=True)
class SessionMatch:
    """A session that matches, with its best hits."""

    session_id: int
    uuid: str
    title: str
    start_time: dt.datetime | None
    hits: tuple[SearchHit, ...]     # best first, at most HITS_PER_SESSION
    hit_count: int                  # matching rows in this session


@dataclasses.dataclass(frozen=True, slots=True)
class SearchResults:
    """One page of sessions matching a query, best first (bm25; newest first when ``broad``)."""

    query: str
    total: int                      # sessions matching
    offset: int
    limit: int
    sessions: tuple[SessionMatch, ...]
    indexed: int                    # sessions in the index
    pending: int                    # sessions still waiting to be (re)indexed; 0 when current
    broad: bool = False             # too many matches to rank each: newest sessions first


@dataclasses.dataclass(frozen=True, slots=True)
class UpdateReport:
    """What one ``update`` did."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    rows: int = 0                   # rows written
    rebuilt: bool = False           # started from an empty index: every session was (re)built
    complete: bool = True           # False: stopped before the end (the rest comes next time)
    seconds: float = 0.0


# ---- folding (pure) -------------------------------------------------------------------------

def _is_cjk(cp: int) -> bool:
    return any(a <= cp <= b for a, b in _CJK_RANGES)


class _FoldTable(dict):
    """str.translate table: code point -> folded text, filled on first use."""

    def __missing__(self, cp: int) -> str:
        ch = chr(cp)
        if cp < 128:
            out = ch                            # unicode61 folds ASCII case itself
        else:
            out = unicodedata.normalize("NFKD", ch.casefold())
            out = unicodedata.normalize("NFKC", _DIACRITICS.sub("", out))
            if any(_is_cjk(ord(c)) for c in out):
                out = "".join(SEP + c + SEP if _is_cjk(ord(c)) else c for c in out)
        if len(self) < 65536:
            self[cp] = out
        return out


_FOLD = _FoldTable()


def clean_text(text: Any, limit: int = MAX_ROW_CHARS) -> str:
    """One line of NFC text without control characters, at most ``limit`` characters."""
    if not text:
        return ""
    s = str(text)
    if len(s) > 2 * limit:
        s = s[:2 * limit]
    if s.isascii() and s.isprintable() and "  " not in s and not s[0].isspace() and not s[-1].isspace():
        return s[:limit]                # the common case, already clean
    s = " ".join(_CONTROL.sub(" ", s).split())
    return unicodedata.normalize("NFC", s)[:limit]


def fold(text: str) -> str:
    """The form of cleaned text that FTS5 indexes: no diacritics, case folded, CJK split."""
    return text if text.isascii() else text.translate(_FOLD)


def _owners(text: str) -> list[int]:
    """For each character of fold(text): the index of the character of ``text`` it came from."""
    out: list[int] = []
    for i, ch in enumerate(text):
        out += [i] * len(_FOLD[ord(ch)])
    return out


def compile_query(text: Any) -> str:
    """A user's search text as a safe FTS5 expression: words and "phrases" ANDed, ``word*`` a prefix.

    Everything else (operators, parentheses, colons, quotes) is taken as text. InvalidArgument
    when there is nothing to search for or the text is too long.
    """
    if not isinstance(text, str):
        raise InvalidArgument("the search text must be a string")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidArgument(f"search text too long ({len(text):,} characters; at most {MAX_QUERY_CHARS})")
    text = clean_text(text, MAX_QUERY_CHARS)
    terms: list[str] = []
    for m in re.finditer(r'"([^"]*)"?|([^\s"]+)', text):
        phrase, word = m.group(1), m.group(2)
        raw = phrase if phrase is not None else word
        prefix = word is not None and word.endswith("*")
        body = fold(raw.rstrip("*") if prefix else raw)
        words = [c for c in body if c.isalnum()]
        if not words:
            continue
        term = '"' + body.replace('"', '""') + '"'
        if prefix and len(words) >= 2 and SEP not in body:
            term += " *"
        if term not in terms:
            terms.append(term)
    if not terms:
        raise InvalidArgument("nothing to search for: type a word")
    if len(terms) > MAX_TERMS:
        raise InvalidArgument(f"too many words ({len(terms)}; at most {MAX_TERMS})")
    return " AND ".join(terms)


def _marked(text: str, highlighted: str) -> list[tuple[int, int]]:
    """Character ranges of ``text`` that FTS5 marked in ``highlighted`` (its fold with markers)."""
    ranges: list[tuple[int, int]] = []
    owners = None if text.isascii() else _owners(text)
    pos = 0
    start = None
    for ch in highlighted:
        if ch == MARK_ON:
            start = pos
        elif ch == MARK_OFF:
            if start is not None and pos > start:
                if owners is None:
                    a, b = start, pos
                else:
                    if start >= len(owners):
                        break
                    a, b = owners[start], owners[min(pos, len(owners)) - 1] + 1
                if ranges and a <= ranges[-1][1]:
                    ranges[-1] = (ranges[-1][0], max(b, ranges[-1][1]))
                else:
                    ranges.append((a, b))
            start = None
        else:
            pos += 1
    return ranges


def _window(text: str, ranges: list[tuple[int, int]],
            width: int = SNIPPET_CHARS) -> tuple[str, tuple[tuple[int, int], ...]]:
    """(snippet, its match ranges): at most ``width`` characters around the first match, cut at spaces."""
    if len(text) <= width:
        return text, tuple(ranges)
    first = ranges[0][0] if ranges else 0
    lo = max(0, first - width // 3)
    if lo > 0:
        space = text.find(" ", lo, first)
        lo = space + 1 if space != -1 else lo
    hi = min(len(text), lo + width)
    if hi < len(text):
        space = text.rfind(" ", max(lo, ranges[0][1] if ranges else lo), hi)
        hi = space if space > lo else hi
    head, tail = ("…" if lo > 0 else ""), ("…" if hi < len(text) else "")
    shift = len(head) - lo
    marks = tuple((max(a, lo) + shift, min(b, hi) + shift) for a, b in ranges if a < hi and b > lo)
    return head + text[lo:hi] + tail, marks


# ---- what a session contributes (pure) --------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class IndexRow:
    kind: int
    text: str
    seconds: float | None = None
    speaker: str | None = None


def session_rows(session: Session) -> list[IndexRow]:
    """The rows a session puts in the index: its texts, then its transcript lines in time order."""
    s = session.summary
    rows = [IndexRow(TITLE, clean_text(s.title))]
    people = [" ".join(clean_text(x) for x in (p.name, p.role, p.organization) if x) for p in session.participants]
    details = [clean_text(x) for x in (s.location, session.meeting_platform, *s.tags, *people, *session.topics) if x]
    rows.append(IndexRow(DETAILS, " · ".join(x for x in details if x)[:MAX_ROW_CHARS]))
    rows.append(IndexRow(DESCRIPTION, clean_text(session.description)))
    rows.append(IndexRow(SUMMARY, clean_text(session.summary_text)))
    for a in session.action_items:
        rows.append(IndexRow(ACTION_ITEM, clean_text(f"{a.text} ({a.owner})" if a.owner else a.text)))
    names: dict[str, str] = {}
    for seg in session.segments:
        name = names.get(seg.speaker_name)
        if name is None:
            name = names[seg.speaker_name] = clean_text(seg.speaker_name, 255)
        rows.append(IndexRow(TRANSCRIPT, clean_text(seg.text), seg.start, name))
    return [r for r in rows if r.text]


# ---- the index ----------------------------------------------------------------------------

class SearchIndex:
    """The FTS5 index in ``path``. Blocking methods are thread-safe; ``start``/``stop``/``kick`` run on the loop."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._wlock = threading.Lock()      # the writer connection and the token
        self._rlock = threading.Lock()      # the reader connection
        self._w: sqlite3.Connection | None = None
        self._r: sqlite3.Connection | None = None
        self._token: ChangeToken | None = None
        self._pending = 0
        self._stopping = threading.Event()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # the background indexer's own thread: an update lasts seconds to minutes (a long meeting's transcript, a
        # first build, the duty cycle's sleeps, the library's lock while a mail or a download loads a session), and
        # in the loop's few default threads (6 on 2 cores) it left the page's reads and the logins one fewer
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._failing = False
        self.rebuilds = 0                   # times the index was built from scratch since this object exists
        self.last_update = UpdateReport()

    # -- files ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def open(self) -> None:
        """Open (creating) the index; a missing, unreadable or old-schema file is started afresh."""
        with self._wlock:
            if self._w is not None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = None
            try:
                conn = self._connect()
                have = conn.execute("SELECT name FROM sqlite_master WHERE name = 'meta'").fetchone()
                version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() if have else None
                if version is None or version[0] != str(SCHEMA_VERSION):
                    if have:
                        log.info("search index %s has schema %s, not %s: rebuilding", self.path,
                                 version[0] if version else "?", SCHEMA_VERSION)
                    conn.close()
                    conn = self._fresh()
            except sqlite3.DatabaseError as e:
                log.warning("search index %s unreadable (%s): rebuilding", self.path, e)
                if conn is not None:
                    conn.close()
                conn = self._fresh()
            self._w = conn
            self._token = None

    def _fresh(self) -> sqlite3.Connection:
        """A new, empty index file (the old one and its WAL removed)."""
        if self._w is not None:
            self._w.close()
            self._w = None
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
        with self._rlock:                   # a reader must not keep the old file open
            if self._r is not None:
                self._r.close()
                self._r = None
        conn = self._connect()
        conn.executescript(SCHEMA)
        conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        self.rebuilds += 1
        return conn

    def close(self) -> None:
        """Close both connections (waits for a batch being written); idempotent."""
        with self._wlock:
            if self._w is not None:
                self._w.close()
                self._w = None
            self._token = None
        with self._rlock:
            if self._r is not None:
                self._r.close()
                self._r = None

    def _reader(self) -> sqlite3.Connection:
        if self._r is None:
            if not self.path.exists():
                raise NotFoundError("the search index is not built yet")
            self._r = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                      isolation_level=None, timeout=10)
            self._r.execute("PRAGMA temp_store=MEMORY")      # the per-session counters of a broad query
        return self._r

    # -- keeping it current -----------------------------------------------------------------

    def update(self, library: Library, *, duty: float = 1.0) -> UpdateReport:
        """Apply what changed in ``library`` since the last update, in small transactions.

        ``duty`` < 1 sleeps between sessions so indexing uses at most that share of a core.
        Stops early (``complete=False``) when ``stop`` was requested; the rest is done next time.
        """
        t0 = time.monotonic()
        with self._wlock:
            if self._w is None:
                raise StenoError("the search index is closed")
            try:
                return self._update(library, duty, t0)
            except BaseException:
                self._token = None          # start the next update from what the file holds
                raise

    def _update(self, library: Library, duty: float, t0: float) -> UpdateReport:
        w = self._w
        source = os.path.abspath(library.db_path)
        row = w.execute("SELECT value FROM meta WHERE key = 'source'").fetchone()
        if row is not None and row[0] != source:
            log.info("search index: the recorder database is now %s (was %s): rebuilding", source, row[0])
            self._w = w = self._fresh()
            self._token = None
        token = self._token or self._restored(w)
        delta, new = library.changed_since(token)
        if not delta:
            self._token, self._pending = new, 0
            self._merge_if_due(w, 0, duty)      # one a stop interrupted
            return self._report(t0=t0)
        todo = [(s.id, "added") for s in delta.added] + [(s.id, "changed") for s in delta.changed]
        self._pending = len(todo)
        with _transaction(w):
            # Before any session: a crash part-way leaves the unfinished ones detectable on the
            # next start (a changed session has lost its mark, an added one has none yet).
            w.execute("INSERT OR REPLACE INTO meta VALUES ('source', ?)", (source,))
            w.execute("INSERT OR REPLACE INTO meta VALUES ('child_max', ?)", (",".join(map(str, new.child_max)),))
            w.executemany("UPDATE docs SET mark = '' WHERE session_id = ?", [(s.id,) for s in delta.changed])
            for sid in delta.removed:
                self._delete(w, sid)
        counts = {"added": 0, "changed": 0}
        written = 0
        batch: list[Session | int] = []
        batch_rows = 0
        for n, (sid, how) in enumerate(todo):
            if self._stopping.is_set():
                self._token = None
                return self._report(counts, len(delta.removed), written, token is None, False, t0)
            tb = time.monotonic()
            try:
                session = library.get_session(sid)
            except NotFoundError:           # removed since the listing
                batch.append(sid)
            except SourceError:             # the recorder DB is locked or gone: try again next time
                raise
            except Exception as e:  # noqa: BLE001 - one session that cannot be read never stops the others
                log.warning("search index: session %s not indexed: %s", sid, e)
            else:
                batch.append(session)
                batch_rows += len(session.segments) + 5
                counts[how] += 1
            if batch and (batch_rows >= BATCH_ROWS or n == len(todo) - 1):
                written += self._write(w, batch, new)
                self._pending = len(todo) - n - 1
                batch, batch_rows = [], 0
            if duty < 1.0:
                time.sleep((time.monotonic() - tb) * (1 - duty) / duty)
        self._token, self._pending = new, 0
        self._merge_if_due(w, written, duty)
        return self._report(counts, len(delta.removed), written, token is None, True, t0)

    def _merge_if_due(self, w: sqlite3.Connection, written: int, duty: float = 1.0) -> None:
        """Merge the index into one FTS5 segment once a tenth of it was written since the last merge.

        Each write transaction leaves a segment and automerge keeps a few per level; a query opens
        a cursor on every segment, so a broad query (a cursor per session) costs ~10x more on a
        freshly built index than on a merged one. Rows written are counted on disk (a restart
        keeps the count); the merge runs in transactions of MERGE_PAGES and stops when asked to.
        Between full merges, the small segments of later updates are merged among themselves.
        """
        row = w.execute("SELECT value FROM meta WHERE key = 'unmerged_rows'").fetchone()
        total = w.execute("SELECT coalesce(sum(rows), 0) FROM docs").fetchone()[0]
        # no count yet: an index built before merging existed is merged once
        unmerged = (int(row[0]) if row else total) + written
        if unmerged and unmerged >= MERGE_SHARE * total:
            while not self._stopping.is_set():
                before, tb = w.total_changes, time.monotonic()
                with _transaction(w):
                    w.execute("INSERT INTO fts (fts, rank) VALUES ('merge', ?)", (-MERGE_PAGES,))
                if w.total_changes - before < 2:        # nothing left to merge (FTS5's documented test)
                    unmerged = 0
                    break
                if duty < 1.0:
                    time.sleep((time.monotonic() - tb) * (1 - duty) / duty)
        elif written:
            # the small segments of updates since then merged among themselves (cheap: they are small)
            with _transaction(w):
                w.execute("INSERT INTO fts (fts, rank) VALUES ('usermerge', 2)")
                w.execute("INSERT INTO fts (fts, rank) VALUES ('merge', ?)", (MERGE_PAGES,))
        if row is None or written or unmerged != int(row[0]):
            w.execute("INSERT OR REPLACE INTO meta VALUES ('unmerged_rows', ?)", (str(unmerged),))

    def _report(self, counts: dict | None = None, removed: int = 0, rows: int = 0, rebuilt: bool = False,
                complete: bool = True, t0: float = 0.0) -> UpdateReport:
        counts = counts or {}
        self.last_update = UpdateReport(counts.get("added", 0), counts.get("changed", 0), removed, rows,
                                        rebuilt, complete, time.monotonic() - t0)
        return self.last_update

    @staticmethod
    def _restored(w: sqlite3.Connection) -> ChangeToken | None:
        """The token of what the index holds (None for an empty index: everything is new)."""
        marks = dict(w.execute("SELECT session_id, mark FROM docs"))
        row = w.execute("SELECT value FROM meta WHERE key = 'child_max'").fetchone()
        if not marks or row is None:
            return None
        return ChangeToken.restored(marks, tuple(int(x) for x in row[0].split(",") if x))

    @staticmethod
    def _delete(w: sqlite3.Connection, sid: int) -> None:
        w.execute("DELETE FROM fts WHERE rowid BETWEEN ? AND ?", (sid << LINE_BITS, (sid << LINE_BITS) | MAX_ROWS))
        w.execute("DELETE FROM docs WHERE session_id = ?", (sid,))

    def _write(self, w: sqlite3.Connection, batch: list[Session | int], token: ChangeToken) -> int:
        """Replace the rows of each session in ``batch`` (an id: the session is gone) in one transaction."""
        written = 0
        ids = [item if isinstance(item, int) else item.id for item in batch]
        with _transaction(w):
            # Deletes first and only of sessions the index holds: a delete makes FTS5 flush the rows
            # it has pending, so one between inserts would cut the batch into small segments.
            known = [r[0] for r in w.execute(f"SELECT session_id FROM docs WHERE session_id IN "
                                             f"({','.join('?' * len(ids))})", ids)]
            for sid in known:
                self._delete(w, sid)
            for item in batch:
                if isinstance(item, int):
                    continue
                sid = item.id
                if not 0 <= sid <= MAX_SESSION_ID:
                    log.warning("search index: session id %s out of range; not indexed", sid)
                    continue
                rows = session_rows(item)
                if len(rows) > MAX_ROWS:
                    log.warning("search index: session %s has %d rows; indexing the first %d", sid, len(rows),
                                MAX_ROWS)
                    rows = rows[:MAX_ROWS]
                speakers: dict[str, int] = {}       # a line stores its speaker's number in docs.speakers
                for r in rows:
                    if r.speaker is not None:
                        speakers.setdefault(r.speaker, len(speakers))
                base = sid << LINE_BITS
                w.executemany(
                    "INSERT INTO fts (rowid, body, kind, seconds, speaker, text) VALUES (?,?,?,?,?,?)",
                    [(base | n, body, r.kind, r.seconds, speakers.get(r.speaker), None if body == r.text else r.text)
                     for n, r in enumerate(rows) for body in (fold(r.text),)])
                start = item.start_time.isoformat() if item.start_time else None
                w.execute("INSERT INTO docs VALUES (?,?,?,?,?,?,?)",
                          (sid, token.rows.get(sid, ""), item.uuid, clean_text(item.title, 255), start, len(rows),
                           json.dumps(list(speakers), ensure_ascii=False)))
                written += len(rows)
        return written

    # -- searching --------------------------------------------------------------------------

    def search(self, query: Any, limit: Any = 20, offset: Any = 0) -> SearchResults:
        """Sessions matching ``query`` (best first), ``limit`` of them from ``offset``.

        InvalidArgument for a query that is empty, too long or too broad to answer in time,
        or an out-of-range limit/offset; never an SQLite error.
        """
        match = compile_query(query)
        for name, value, low, high in (("limit", limit, 1, MAX_LIMIT), ("offset", offset, 0, MAX_OFFSET)):
            if type(value) is not int or not low <= value <= high:
                raise InvalidArgument(f"{name} must be a whole number from {low} to {high}, not {value!r}")
        with self._rlock:
            conn = self._reader()
            deadline = time.monotonic() + QUERY_SECONDS
            conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
            try:
                return self._search(conn, query, match, limit, offset)
            except sqlite3.OperationalError as e:
                if "interrupted" in str(e):
                    raise InvalidArgument(f"the search took longer than {QUERY_SECONDS:g} s: "
                                          "use fewer or more specific words") from None
                if "no such table" in str(e):
                    raise NotFoundError("the search index is not built yet") from None
                log.warning("search %r failed: %s", match, e)
                raise InvalidArgument("the search text could not be understood") from None
            finally:
                conn.set_progress_handler(None, 0)

    def _search(self, conn: sqlite3.Connection, query: str, match: str, limit: int, offset: int) -> SearchResults:
        n = conn.execute("SELECT count(*) FROM (SELECT 1 FROM fts WHERE fts MATCH ? LIMIT ?)",
                         (match, COUNT_PASS_ROWS + 1)).fetchone()[0]
        broad = n > BROAD_ROWS
        best: dict[int, list] = {}                  # session id -> [rank, count, [(rank, rowid)...]]
        if not broad:
            # bm25 of every matching row (at most BROAD_ROWS), grouped here: the page's hits come
            # with it, each then read by rowid (a rank per session would cost a pass each)
            for rowid, rank in conn.execute("SELECT rowid, rank FROM fts WHERE fts MATCH ?", (match,)):
                sid = rowid >> LINE_BITS
                b = best.get(sid)
                if b is None:
                    best[sid] = [rank, 1, [(rank, rowid)]]
                    continue
                b[1] += 1
                b[0] = min(b[0], rank)
                if len(b[2]) < HITS_PER_SESSION or rank < b[2][-1][0]:
                    b[2] = sorted(b[2] + [(rank, rowid)])[:HITS_PER_SESSION]
            order = sorted(best, key=lambda sid: (best[sid][0], sid))
        elif '" *' in match or n <= COUNT_PASS_ROWS:
            # too many rows to rank each: newest sessions first. One pass counts the matches of every
            # session (a prefix term merges the doclists of all its words at every cursor: always).
            best = {sid: [0.0, count, []] for sid, count in self._count_by_session(conn, match)}
            order = sorted(best, reverse=True)
        else:
            # too many rows to rank each: newest sessions first. Which sessions match: a cursor per
            # session that stops at its first match (cheap on a merged index, see _merge_if_due);
            # counting every match of every session costs 4-8x a pass over them (350,000 rows for a
            # word said in every line of 1,000 meetings). Only the page's sessions are counted.
            order = [sid for (sid,) in conn.execute(
                f"SELECT session_id FROM docs WHERE EXISTS (SELECT 1 FROM fts WHERE fts MATCH ?1 AND rowid "
                f"BETWEEN session_id << {LINE_BITS} AND (session_id << {LINE_BITS}) | {MAX_ROWS}) "
                "ORDER BY session_id DESC", (match,))]
            best = {sid: [0.0, conn.execute(
                "SELECT count(*) FROM fts WHERE fts MATCH ? AND rowid BETWEEN ? AND ?",
                (match, sid << LINE_BITS, (sid << LINE_BITS) | MAX_ROWS)).fetchone()[0], []]
                for sid in order[offset:offset + limit]}
        page = order[offset:offset + limit]
        docs = {r[0]: r[1:] for r in conn.execute(
            f"SELECT session_id, uuid, title, start_time, speakers FROM docs WHERE session_id IN "
            f"({','.join('?' * len(page))})", page)} if page else {}
        if not broad:
            picked = {sid: [rowid for _rank, rowid in best[sid][2]] for sid in page}
            found = self._hit_rows(conn, match, [rowid for sid in page for rowid in picked[sid]])
        elif '" *' in match:
            # a prefix term merges the doclists of all its words each time a cursor opens: one pass
            # over the matches picks each session's first rows instead of a cursor per session
            picked = {sid: [] for sid in page}
            for (rowid,) in conn.execute(f"SELECT rowid FROM fts WHERE fts MATCH ? AND (rowid >> {LINE_BITS}) IN "
                                         f"({','.join('?' * len(page))})", (match, *page)):
                rows = picked[rowid >> LINE_BITS]
                if len(rows) < HITS_PER_SESSION:
                    rows.append(rowid)
            found = self._hit_rows(conn, match, [rowid for sid in page for rowid in picked[sid]])
        else:
            # a cursor per session on its rowid range: a pass over the matches would read every one
            picked, found = {}, {}
            for sid in page:
                rows = conn.execute(f"SELECT {HIT_COLUMNS} FROM fts WHERE fts MATCH ? AND rowid BETWEEN ? AND ? "
                                    "LIMIT ?", (match, sid << LINE_BITS, (sid << LINE_BITS) | MAX_ROWS,
                                                HITS_PER_SESSION)).fetchall()
                picked[sid] = [r[0] for r in rows]
                found.update((r[0], r[1:]) for r in rows)
        sessions = []
        for sid in page:
            uuid, title, start, speakers = docs.get(sid, ("", "", None, "[]"))
            names = json.loads(speakers or "[]")
            hits = tuple(self._hit(names, *found[rowid]) for rowid in picked[sid] if rowid in found)
            sessions.append(SessionMatch(sid, uuid, title, dt.datetime.fromisoformat(start) if start else None,
                                         hits, best[sid][1]))
        indexed = conn.execute("SELECT count(*) FROM docs").fetchone()[0]
        return SearchResults(query=query, total=len(order), offset=offset, limit=limit, sessions=tuple(sessions),
                             indexed=indexed, pending=self._pending, broad=broad)

    @staticmethod
    def _count_by_session(conn: sqlite3.Connection, match: str) -> list[tuple[int, int]]:
        """(session id, matching rows) for every session that matches.

        Counted into a small in-memory table: GROUP BY would sort every matching row first (350,000
        for a word said in every line of 1,000 meetings), this keeps one counter per session.
        """
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS hit_count (sid INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        conn.execute("DELETE FROM temp.hit_count")
        conn.execute(f"INSERT INTO temp.hit_count (sid, n) SELECT rowid >> {LINE_BITS}, 1 FROM fts "
                     "WHERE fts MATCH ? AND 1 ON CONFLICT (sid) DO UPDATE SET n = n + 1", (match,))
        return conn.execute("SELECT sid, n FROM temp.hit_count").fetchall()

    @staticmethod
    def _hit_rows(conn: sqlite3.Connection, match: str, rowids: list[int]) -> dict[int, tuple]:
        """rowid -> (kind, seconds, speaker, text, highlighted text) of the given matching rows.

        One pass over the matches (``rowid + 0``: not a lookup per row), highlighting only these rows:
        a MATCH cursor per row costs more (and for a prefix term far more) than the pass.
        """
        if not rowids:
            return {}
        return {r[0]: r[1:] for r in conn.execute(
            f"SELECT {HIT_COLUMNS} FROM fts WHERE fts MATCH ? AND (rowid + 0) IN ({','.join('?' * len(rowids))})",
            (match, *rowids))}

    @staticmethod
    def _hit(speakers: list, kind: int, seconds: float | None, speaker: int | None, text: str,
             highlighted: str) -> SearchHit:
        snippet, marks = _window(text, _marked(text, highlighted))
        name = KINDS[kind] if isinstance(kind, int) and 0 <= kind < len(KINDS) else "details"
        if name != "transcript":
            return SearchHit(name, snippet, marks)
        who = speakers[speaker] if isinstance(speaker, int) and 0 <= speaker < len(speakers) else None
        return SearchHit(name, snippet, marks, seconds, who)

    # -- on the event loop ------------------------------------------------------------------

    async def start(self, library: Callable[[], Library]) -> None:
        """Open the index and keep it current in the background (a first update right away)."""
        if self._task is not None:
            return
        self._stopping.clear()
        self._wake = asyncio.Event()
        await asyncio.to_thread(self.open)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="steno-search-index")
        self._task = asyncio.create_task(self._follow(library, self._wake, self._pool), name="search-index")
        self.kick()

    def kick(self) -> None:
        """Ask for an update soon (the library may have changed); cheap, never blocks."""
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        """Stop indexing after the batch being written and close the index; idempotent."""
        task, self._task = self._task, None
        self._stopping.set()
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
        pool, self._pool = self._pool, None
        if pool is not None:                # the batch being written ends (it saw the stop)
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
        await asyncio.to_thread(self.close)

    async def _follow(self, library: Callable[[], Library], wake: asyncio.Event,
                      pool: concurrent.futures.Executor) -> None:
        while True:
            await wake.wait()
            wake.clear()
            try:
                report = await in_pool(pool, self.update, library(), duty=BACKGROUND_DUTY)
            except (StenoError, sqlite3.Error, OSError) as e:
                # the recorder DB missing or locked: once at WARNING, then quietly until it works
                (log.debug if self._failing else log.warning)("search index not updated: %s", e)
                self._failing = True
                continue
            except Exception:   # noqa: BLE001 - an error boundary: search failing never stops the daemon
                (log.debug if self._failing else log.exception)("search index not updated")
                self._failing = True
                continue
            self._failing = False
            if report.added or report.changed or report.removed:
                log.info("search index: %d added, %d changed, %d removed (%d rows) in %.1f s%s",
                         report.added, report.changed, report.removed, report.rows, report.seconds,
                         "" if report.complete else "; stopped early")

    async def search_async(self, query: Any, limit: Any = 20, offset: Any = 0) -> SearchResults:
        """``search`` off the event loop."""
        return await asyncio.to_thread(self.search, query, limit, offset)


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, *_: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
