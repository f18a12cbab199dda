"""Outbox: every message stored in the state DB (and a spool file) before it is sent; retries; snapshots.

A message goes composing -> queued -> sending -> sent | failed; a waiting one may be cancelled, and a failed or
cancelled one retried (composed again, from its row). Its row is written before any
work, its MIME file (<state>/outbox/<token>.eml) before it is queued, so a restart loses nothing:
composing rows are composed again, sending ones are queued again, queued ones are tried at once.
The mail adapter (steno_exportd/mail/) takes due messages with ``next_due()`` and says how it went
with ``report()``; the core decides retry, back-off and giving up.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from steno_exportd import events as ev, render
from steno_exportd.access.store import AT_DEVICE
from steno_exportd.config import Config
from steno_exportd.engine.plan import render_options
from steno_exportd.errors import BusyError, InvalidArgument, NotFoundError, SessionReplaced, StenoError
from steno_exportd.model import SessionSummary
from steno_exportd.outbox import content
from steno_exportd.outbox.address import parse_address, parse_recipients
from steno_exportd.outbox.compose import write
from steno_exportd.retention import Keep, prune_rows

log = logging.getLogger(__name__)

MAX_WAITING = 100            # messages composing or queued at once: a new session mail past that is refused
MAX_SESSIONS = 100           # sessions in one message

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
  id INTEGER PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL,
  subject TEXT NOT NULL DEFAULT '', recipients TEXT NOT NULL DEFAULT '[]', request TEXT NOT NULL DEFAULT '{}',
  spool TEXT NOT NULL DEFAULT '', size INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt REAL NOT NULL DEFAULT 0, finished REAL NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '',
  delivered TEXT NOT NULL DEFAULT '[]', refused TEXT NOT NULL DEFAULT '[]', left_out TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS notices (
  id INTEGER PRIMARY KEY, at REAL NOT NULL, recipients TEXT NOT NULL, window REAL NOT NULL, notice TEXT NOT NULL);
"""
_COLUMNS = ("id", "kind", "state", "created", "subject", "recipients", "request", "spool", "size", "attempts",
            "next_attempt", "finished", "error", "delivered", "refused", "left_out")


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """A message handed to the mail adapter: its envelope and the file holding it."""

    id: int
    sender: str               # envelope MAIL FROM (addr-spec)
    recipients: tuple[str, ...]   # envelope RCPT TO (addr-specs)
    path: Path
    size: int


@dataclasses.dataclass(frozen=True)
class Delivery:
    """What the mail adapter reports about one try."""

    delivered: tuple[str, ...] = ()               # recipients the server accepted the message for
    refused: tuple[tuple[str, str], ...] = ()     # (recipient, reason): refused for good (5xx)
    deferred: tuple[tuple[str, str], ...] = ()    # (recipient, reason): refused for now (4xx)
    error: str = ""                               # the whole try failed
    transient: bool = False                       # ... and another try may succeed


def _refused_address(refusal: str) -> str:
    """The recipient of a refusal ("Name <a@b.example>: 550 no such user"), "" when none parses."""
    parts = refusal.split(": ")
    for i in range(1, len(parts)):
        try:
            return str(parse_address(": ".join(parts[:i])))
        except InvalidArgument:
            continue
    return ""


def _replaced(what: str) -> StenoError:
    """Why a message fails whose meeting was replaced under its number since it was asked for."""
    return StenoError(f"{what} is no longer on this recorder: its number now names another meeting, recorded since "
                      "(the recorder's database was restored?); ask for a new message")


def _entry(row: tuple) -> tuple[ev.OutboxEntry, dict]:
    d = dict(zip(_COLUMNS, row))
    request = json.loads(d["request"] or "{}")
    entry = ev.OutboxEntry(
        id=d["id"], kind=d["kind"], subject=d["subject"], recipients=tuple(json.loads(d["recipients"])),
        state=ev.OutboxState(d["state"]), created=d["created"], attempts=d["attempts"],
        next_attempt=d["next_attempt"], finished=d["finished"], size=d["size"], error=d["error"],
        delivered=tuple(json.loads(d["delivered"])), refused=tuple(json.loads(d["refused"])),
        left_out=tuple(json.loads(d["left_out"])), sessions=tuple(request.get("sessions", ())))
    return entry, d


class Outbox:
    """The core's mail queue; blocking DB work runs in threads, state changes are published as events."""

    def __init__(self, cfg: Config, events: ev.EventBus, library: Callable[[], Any],
                 links: Callable[[str, str], content.Links | str] = lambda made_by, login_id: "no web page") -> None:
        self.cfg = cfg
        self.events = events
        self._library = library
        self._links = links               # (made_by, login_id) -> share links for what is too large (oversize)
        self.dir = Path(cfg.state.dir) / "outbox"
        self._db_path = Path(cfg.state.dir) / "state.db"
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._entries: dict[int, ev.OutboxEntry] = {}
        self._spool: dict[int, str] = {}
        self._wake = asyncio.Event()          # an entry became due or the config changed
        self._compose_wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._asked = 0                       # messages asked for whose row is not listed yet (see _room)
        from steno_exportd.outbox.notices import Notifier
        self.notifier = Notifier(self)

    # -- lifecycle -------------------------------------------------------------------
    def open(self) -> None:
        """Open the tables; queue again what a stop interrupted; remove spool files no row names."""
        if self._db is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._db_path, check_same_thread=False, isolation_level=None, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        self._db = db
        with self._lock:
            # a restart is a good moment to try again: pending messages go out now, not after their back-off
            db.execute("UPDATE outbox SET state='queued', next_attempt=0 WHERE state IN ('queued','sending')")
            rows = db.execute(f"SELECT {','.join(_COLUMNS)} FROM outbox ORDER BY id").fetchall()
        for row in rows:
            entry, d = _entry(row)
            self._entries[entry.id] = entry
            self._spool[entry.id] = d["spool"]
            if entry.state == ev.OutboxState.QUEUED and not (self.dir / d["spool"]).is_file():
                self._entries[entry.id] = self._finish_sync(entry.id, ev.OutboxState.FAILED,
                                                            "the stored message file is missing")
        named = {s for i, s in self._spool.items() if s and not self._entries[i].state.finished}
        for p in self.dir.iterdir():
            if p.name not in named:
                log.info("removing %s: no outbox message names it (a stop while it was written)", p.name)
                p.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    async def start(self) -> None:
        await asyncio.to_thread(self.open)
        self._tasks = [asyncio.create_task(self._compose_loop(), name="outbox-compose"),
                       asyncio.create_task(self.notifier.run(), name="outbox-notices")]
        self._compose_wake.set()
        self._wake.set()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await asyncio.to_thread(self.close)

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg
        self.notifier.reload(cfg)
        self._wake.set()

    # -- queries ---------------------------------------------------------------------
    def list(self) -> list[ev.OutboxEntry]:
        """Every message still listed, oldest first."""
        return list(self._entries.values())

    def get(self, entry_id: int) -> ev.OutboxEntry:
        try:
            return self._entries[int(entry_id)]
        except (KeyError, ValueError, TypeError):
            raise NotFoundError(f"no message {entry_id!r} in the outbox") from None

    # -- DB helpers (blocking) -------------------------------------------------------
    def _x(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            if self._db is None:
                raise StenoError("the outbox is closed")
            return self._db.execute(sql, args).fetchall()

    def _n(self, sql: str, args: tuple = ()) -> int:
        """Rows an UPDATE changed (a state change guarded by the state it expects)."""
        with self._lock:
            if self._db is None:
                raise StenoError("the outbox is closed")
            return self._db.execute(sql, args).rowcount

    def _row(self, entry_id: int) -> ev.OutboxEntry:
        row = self._x(f"SELECT {','.join(_COLUMNS)} FROM outbox WHERE id=?", (entry_id,))[0]
        entry, d = _entry(row)
        self._spool[entry_id] = d["spool"]
        return entry

    def _publish(self, entry: ev.OutboxEntry) -> None:
        self._entries[entry.id] = entry
        self.events.publish(ev.OutboxUpdated(entry))

    def _finish_sync(self, entry_id: int, state: ev.OutboxState, error: str) -> ev.OutboxEntry:
        """Mark a message sent or failed; its spool file goes (the row keeps what to compose it again). A message
        cancelled meanwhile (while it was composed) stays cancelled."""
        spool = self._spool.get(entry_id, "")
        self._x("UPDATE outbox SET state=?, error=?, finished=?, spool='' WHERE id=? AND state != 'cancelled'",
                (str(state), error, time.time(), entry_id))
        if spool:
            (self.dir / spool).unlink(missing_ok=True)
        return self._row(entry_id)

    def _insert(self, kind: str, state: ev.OutboxState, subject: str, recipients: Sequence[str],
                request: dict, spool: str = "", size: int = 0, notice_ids: Sequence[int] = ()) -> ev.OutboxEntry:
        with self._lock:
            if self._db is None:
                raise StenoError("the outbox is closed")
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = db.execute("INSERT INTO outbox(kind, state, created, subject, recipients, request, spool, size) "
                                 "VALUES (?,?,?,?,?,?,?,?)", (kind, str(state), time.time(), subject,
                                                              json.dumps(list(recipients)), json.dumps(request),
                                                              spool, size))
                if notice_ids:
                    db.execute(f"DELETE FROM notices WHERE id IN ({','.join('?' * len(notice_ids))})",
                               tuple(notice_ids))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            entry_id = cur.lastrowid
        return self._row(entry_id)

    # -- sessions by email -----------------------------------------------------------
    async def email_sessions(self, sessions: Sequence[SessionSummary], formats: Sequence[str], recipients: object,
                             template: str, *, made_by: str = AT_DEVICE, login_id: str = "") -> ev.OutboxEntry:
        """Store a message for sessions (the summaries the caller resolved: each meeting's id, uuid and title) and
        formats; it is composed and sent in the background, its share links made by who asked for it (``made_by``,
        ``login_id``: as for Access.create_link)."""
        if not self.cfg.email.enabled:
            raise InvalidArgument("email is off: set [email] enabled = true in the config")
        addresses = parse_recipients(recipients)
        if not sessions:
            raise InvalidArgument("no sessions given")
        if len(sessions) > MAX_SESSIONS:
            raise InvalidArgument(f"too many sessions for one message: {len(sessions)}, at most {MAX_SESSIONS}")
        with self._room():
            return await self._email_sessions(sessions, formats, addresses, template, made_by, login_id)

    @contextlib.contextmanager
    def _room(self) -> Iterator[None]:
        """A place among the MAX_WAITING messages, held (on the loop, checked and taken with no await between)
        until the message's row is listed: 150 callers at once each counted the listed ones before any row was
        written, and 104 waited."""
        waiting = sum(1 for e in self._entries.values() if not e.state.finished) + self._asked
        if waiting >= MAX_WAITING:
            raise InvalidArgument(f"the outbox already holds {waiting} messages waiting to be sent; "
                                  "try again when they are out")
        self._asked += 1
        try:
            yield
        finally:
            self._asked -= 1

    async def _email_sessions(self, sessions: Sequence[SessionSummary], formats: Sequence[str],
                              addresses: Sequence[Any], template: str, made_by: str,
                              login_id: str) -> ev.OutboxEntry:
        subject = content.sessions_subject([s.title for s in sessions])
        # each meeting's uuid beside its id, as the caller resolved it (not from a listing read again here: a restore
        # of the recorder's database in between put the other meeting's uuid in the row, and the message carried
        # it): composed now or again (a retry, days later perhaps), it carries the meetings asked for or fails, never
        # the one an id names after the recorder's database was restored
        request = dict(sessions=[s.id for s in sessions], formats=list(formats), template=template, made_by=made_by,
                       made_by_login=login_id, uuids=[s.uuid for s in sessions])
        entry = await asyncio.to_thread(self._insert, "sessions", ev.OutboxState.COMPOSING, subject,
                                        [str(a) for a in addresses], request)
        self._publish(entry)
        self._compose_wake.set()
        return entry

    async def _compose_loop(self) -> None:
        while True:
            await self._compose_wake.wait()
            self._compose_wake.clear()
            for entry in [e for e in self._entries.values() if e.state == ev.OutboxState.COMPOSING]:
                await self._compose(entry)

    async def _compose(self, entry: ev.OutboxEntry) -> None:
        try:
            # its PDFs wait for the one render worker: in a thread of those callers, never one the page needs
            updated = await render.waiting_for_worker(self._compose_sync, entry)
        except asyncio.CancelledError:
            raise
        except (StenoError, OSError, ValueError) as e:
            log.warning("message %d cannot be composed: %s", entry.id, e)
            updated = await asyncio.to_thread(self._finish_sync, entry.id, ev.OutboxState.FAILED,
                                              f"cannot be composed: {e}")
        except Exception as e:  # noqa: BLE001 - error boundary of one message
            log.exception("message %d cannot be composed", entry.id)
            updated = await asyncio.to_thread(self._finish_sync, entry.id, ev.OutboxState.FAILED,
                                              f"cannot be composed: {type(e).__name__}: {e}")
        self._publish(updated)
        self._wake.set()

    def _compose_sync(self, entry: ev.OutboxEntry) -> ev.OutboxEntry:
        request = json.loads(self._x("SELECT request FROM outbox WHERE id=?", (entry.id,))[0][0])
        left_out: tuple[str, ...] = ()
        if entry.kind == "notice":          # a retried notice: the notices its row keeps
            draft = content.notices_draft([content.Notice.from_json(n) for n in request["notices"]],
                                          self.cfg.email.sender, entry.recipients)
        else:
            lib = self._library()
            uuids = request.get("uuids") or [None] * len(request["sessions"])     # (none kept in a row from before)
            sessions = []
            for i, uuid in zip(request["sessions"], uuids):
                try:                        # read bound to the meeting asked for (Library.get_session)
                    sessions.append(lib.get_session(i, uuid))
                except SessionReplaced:
                    raise _replaced(f"meeting {i}") from None
            limit = int(self.cfg.email.max_message_mb * 1024 * 1024)
            # a row from before makers were kept: made at the recorder, as then
            links = (self._links(request.get("made_by", AT_DEVICE), request.get("made_by_login", ""))
                     if self.cfg.email.oversize == "link" else None)
            try:
                draft, left_out = content.sessions_draft(sessions, request["formats"],
                                                         render_options(self.cfg, request["template"]),
                                                         self.cfg.email.sender, entry.recipients, limit, links,
                                                         data_dir=lib.data_dir)
            except SessionReplaced as e:    # a share link's meeting (Core._mail_links), replaced since it was read
                raise _replaced(f"the meeting of a share link it carries ({e})") from None
        token = f"{entry.id}-{secrets.token_hex(8)}.eml"
        path = self.dir / token
        size = write(draft, path, content.domain_of(draft.sender))
        if not self._n("UPDATE outbox SET state='queued', subject=?, spool=?, size=?, left_out=?, next_attempt=0 "
                       "WHERE id=? AND state='composing'", (draft.subject, token, size, json.dumps(list(left_out)),
                                                            entry.id)):
            path.unlink(missing_ok=True)    # cancelled while it was composed: no file for a message that never goes
        return self._row(entry.id)

    # -- notifications ---------------------------------------------------------------
    def add_notice(self, notice: content.Notice, recipients: Sequence[str], window: float) -> None:
        """(blocking) Store a notice until its message is queued."""
        self._x("INSERT INTO notices(at, recipients, window, notice) VALUES (?,?,?,?)",
                (notice.at, json.dumps(list(recipients)), window, json.dumps(notice.to_json())))

    def notices(self) -> list[tuple]:
        """(blocking) Stored notices: (id, at, recipients JSON, window, notice JSON), oldest first."""
        return self._x("SELECT id, at, recipients, window, notice FROM notices ORDER BY id")

    def queue_notices(self, notice_ids: Sequence[int], notices: Sequence[content.Notice],
                      recipients: Sequence[str]) -> ev.OutboxEntry:
        """(blocking) One message for notices; they leave the notices table in the same transaction."""
        draft = content.notices_draft(notices, self.cfg.email.sender, recipients)
        token = f"n-{secrets.token_hex(8)}.eml"
        path = self.dir / token
        size = write(draft, path, content.domain_of(draft.sender))
        try:
            return self._insert("notice", ev.OutboxState.QUEUED, draft.subject, recipients,
                                dict(notices=[n.to_json() for n in notices]), token, size, notice_ids)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def notice_queued(self, entry: ev.OutboxEntry) -> None:
        self._publish(entry)
        self._wake.set()

    # -- the mail adapter's side -----------------------------------------------------
    async def next_due(self) -> Outgoing:
        """Wait until a queued message is due (and email is on); mark it sending and return it."""
        while True:
            self._wake.clear()
            due = [e for e in self._entries.values() if e.state == ev.OutboxState.QUEUED]
            timeout = None
            if due and self.cfg.email.enabled:
                first = min(due, key=lambda e: (e.next_attempt, e.id))
                wait = first.next_attempt - time.time()
                if wait <= 0:
                    entry, out = await asyncio.to_thread(self._claim, first.id)
                    self._publish(entry)
                    if out is not None:
                        return out
                    continue
                timeout = wait
            try:
                async with asyncio.timeout(timeout):    # (wait_for on 3.11 drops a cancel that comes with a wake)
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _claim(self, entry_id: int) -> tuple[ev.OutboxEntry, Outgoing | None]:
        """Mark a queued message sending; (its row, None) when it is no longer queued (cancelled meanwhile)."""
        claimed = self._n("UPDATE outbox SET state='sending', attempts=attempts+1 WHERE id=? AND state='queued'",
                          (entry_id,))
        entry = self._row(entry_id)
        if not claimed:
            return entry, None
        return entry, Outgoing(entry_id, parse_address(self.cfg.email.sender).addr_spec,
                               tuple(parse_address(r).addr_spec for r in entry.recipients),
                               self.dir / self._spool[entry_id], entry.size)

    async def report(self, entry_id: int, d: Delivery) -> ev.OutboxEntry:
        """Record one try: sent, failed for good, or queued again with exponential back-off."""
        entry = await asyncio.to_thread(self._report_sync, entry_id, d)
        self._publish(entry)
        if not entry.state.finished:
            self._wake.set()
        return entry

    def _report_sync(self, entry_id: int, d: Delivery) -> ev.OutboxEntry:
        entry = self._row(entry_id)
        e = self.cfg.email
        # (the recipients last: theirs is the spelling kept)
        known = [a for a in map(_refused_address, entry.refused) if a] + list(entry.delivered) + list(entry.recipients)
        by_addr = {parse_address(r).addr_spec.lower(): r for r in known}
        # the same report made again (the mail adapter tries again when a write here failed, after the first
        # UPDATE below went through: recipients already emptied, delivered already listing them) lists nobody twice
        delivered = list(entry.delivered)
        delivered += [r for r in dict.fromkeys(by_addr.get(a.lower(), a) for a in d.delivered) if r not in delivered]
        refused = list(entry.refused)
        refused += [r for r in dict.fromkeys(f"{by_addr.get(a.lower(), a)}: {why}" for a, why in d.refused)
                    if r not in refused]
        if d.error:
            pending = list(entry.recipients)
            reason, transient = d.error, d.transient
        else:
            pending = [by_addr.get(a.lower(), a) for a, _ in d.deferred]
            reason = "; ".join(f"{a}: {why}" for a, why in d.deferred)
            transient = bool(pending)
        self._x("UPDATE outbox SET recipients=?, delivered=?, refused=? WHERE id=?",
                (json.dumps(pending), json.dumps(delivered), json.dumps(refused), entry_id))
        if transient and pending:
            age = time.time() - entry.created
            if age >= e.give_up_hours * 3600:
                return self._finish_sync(entry_id, ev.OutboxState.FAILED,
                                         f"gave up after {entry.attempts} tries in {age / 3600:.1f} h: {reason}")
            delay = min(e.retry_max_seconds, e.retry_initial_seconds * 2 ** max(0, entry.attempts - 1))
            log.info("message %d: %s; next try in %.0f s", entry_id, reason, delay)
            self._x("UPDATE outbox SET state='queued', error=?, next_attempt=? WHERE id=?",
                    (reason, time.time() + delay, entry_id))
            return self._row(entry_id)
        if d.error:
            log.warning("message %d failed: %s", entry_id, d.error)
            return self._finish_sync(entry_id, ev.OutboxState.FAILED, d.error)
        if not delivered:
            return self._finish_sync(entry_id, ev.OutboxState.FAILED, "every recipient was refused: "
                                     + "; ".join(refused))
        log.info("message %d sent to %s", entry_id, ", ".join(delivered))
        return self._finish_sync(entry_id, ev.OutboxState.SENT, "; ".join(f"refused {r}" for r in refused))

    # -- what a person asks for (Core.retry_mail / cancel_mail) ---------------------------
    def _listed(self, entry_id: int) -> ev.OutboxEntry:
        entry = self._entries.get(entry_id)
        if entry is None:
            raise InvalidArgument(f"there is no message {entry_id} in the outbox (steno-exportctl outbox lists them)")
        return entry

    async def retry(self, entry_id: int, *, made_by: str = AT_DEVICE, login_id: str = "") -> ev.OutboxEntry:
        """Send a failed or cancelled message again (composed anew from its row, to every recipient that has not
        got it, with a fresh give_up_hours, its new share links made by who asks now: ``made_by``, ``login_id``),
        or a queued one now instead of after its back-off."""
        entry = self._listed(entry_id)
        if entry.state in (ev.OutboxState.COMPOSING, ev.OutboxState.SENDING):
            raise BusyError(f"message {entry_id} is being {'composed' if entry.state == 'composing' else 'sent'} "
                            "right now; try again in a moment")
        if entry.state == ev.OutboxState.SENT:
            raise InvalidArgument(f"message {entry_id} was sent; there is nothing to retry")
        # a failed or cancelled one waits again: it takes a place among MAX_WAITING (a caller cancelled 100 and
        # retried them, and 200 waited)
        with self._room() if entry.state.finished else contextlib.nullcontext():
            changed, updated = await asyncio.to_thread(self._retry_sync, entry, made_by, login_id)
            if not changed:                     # the mail adapter took it in between
                raise BusyError(f"message {entry_id} is being sent right now")
            log.info("message %d: retry asked for (%s)", entry_id, entry.state)
            self._publish(updated)
        self._wake.set()
        self._compose_wake.set()
        return updated

    def _retry_sync(self, entry: ev.OutboxEntry, made_by: str, login_id: str) -> tuple[int, ev.OutboxEntry]:
        if entry.state == ev.OutboxState.QUEUED:
            changed = self._n("UPDATE outbox SET next_attempt=0 WHERE id=? AND state='queued'", (entry.id,))
            return changed, self._row(entry.id)
        # refused for good (5xx) by some: they get it too, as a person asks for it again
        pending = list(entry.recipients) + [a for a in map(_refused_address, entry.refused) if a]
        if not pending:
            raise InvalidArgument(f"message {entry.id} has nobody left to send it to")
        request = json.loads(self._x("SELECT request FROM outbox WHERE id=?", (entry.id,))[0][0])
        if entry.kind == "sessions":
            request.update(made_by=made_by, made_by_login=login_id)
        changed = self._n("UPDATE outbox SET state='composing', recipients=?, refused='[]', attempts=0, "
                          "next_attempt=0, error='', finished=0, created=?, request=? WHERE id=? AND state IN "
                          "('failed','cancelled')", (json.dumps(pending), time.time(), json.dumps(request),
                                                     entry.id))
        return changed, self._row(entry.id)

    async def cancel(self, entry_id: int) -> ev.OutboxEntry:
        """Withdraw a message that is waiting (composing or queued): it is never sent; its spool file goes."""
        entry = self._listed(entry_id)
        if entry.state == ev.OutboxState.SENDING:
            raise BusyError(f"message {entry_id} is being sent right now; it cannot be called back")
        if entry.state.finished:
            raise InvalidArgument(f"message {entry_id} is {entry.state} already; only a waiting message can be "
                                  "cancelled")
        updated = await asyncio.to_thread(self._cancel_sync, entry_id)
        if updated.state != ev.OutboxState.CANCELLED:     # claimed by the mail adapter in between
            raise BusyError(f"message {entry_id} is being sent right now; it cannot be called back")
        log.info("message %d cancelled", entry_id)
        self._publish(updated)
        return updated

    def _cancel_sync(self, entry_id: int) -> ev.OutboxEntry:
        if not self._n("UPDATE outbox SET state='cancelled', error='cancelled', finished=? WHERE id=? "
                       "AND state IN ('composing','queued')", (time.time(), entry_id)):
            return self._row(entry_id)
        spool = self._spool.get(entry_id, "")
        self._x("UPDATE outbox SET spool='' WHERE id=?", (entry_id,))
        if spool:
            (self.dir / spool).unlink(missing_ok=True)
        return self._row(entry_id)

    # -- retention -------------------------------------------------------------------
    def prune(self, keep: Keep) -> list[int]:
        """(blocking) Drop sent/failed/cancelled messages past keep (never a waiting one); return their ids."""
        return prune_rows(self._x, "outbox", "created", keep, protect="state NOT IN ('sent','failed','cancelled')")

    def forget(self, ids: Sequence[int]) -> None:
        for i in ids:
            if self._entries.pop(i, None) is not None:
                self._spool.pop(i, None)
                self.events.publish(ev.OutboxRemoved(i))
