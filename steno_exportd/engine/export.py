"""Run one export: preflight, write each session atomically, verify, record manifest and history."""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import os
import threading
import time
from typing import Any

from steno_exportd.config import Config
from steno_exportd.safeparse import printable as shown    # a name someone else put on the target, for a log line
from steno_exportd.engine import manifest as mf
from steno_exportd.engine import writer
from steno_exportd.engine.begun import Begun
from steno_exportd.engine.hashcache import HashCache
from steno_exportd.engine.naming import OLD_UNITS, folder_name, format_label, resolve_collision, root_folder, safe_name
from steno_exportd.engine.plan import PlannedFile, plan_session, render_file, render_options, source_ref
from steno_exportd.engine.registry import ArchiveKind, Targets, local
from steno_exportd.engine.targets import (MARKER, PARTIAL_SUFFIX, TEMP_PREFIX, EntryStat, Target, WriteHandle,
                                          os_error, unfinished)
from steno_exportd.errors import CancelledJob, SourceError, StenoError, TargetError, TargetFullError, VerifyError
from steno_exportd.events import FileResult, SessionResult

log = logging.getLogger(__name__)

class _NullProgress:
    cancelled = False

    def update(self, force: bool = False, **fields: Any) -> None:
        pass


def _iso(t: Any) -> str:
    return t.isoformat() if t is not None else ""


def problem_kind(e: BaseException) -> str:
    """What a target failure means to a person: "full", "pulled", "read-only", "permission" or ""."""
    if isinstance(e, TargetError):
        return e.kind
    if isinstance(e, OSError):
        return os_error(e, "").kind
    return ""


def run_export(library: Any, spec: Any, cfg: Config, progress: Any = None, *, targets: Targets | None = None,
               job_id: int = 0, state: Any = None, reg: Any = None, hashes: HashCache | None = None
               ) -> list[SessionResult]:
    """Export spec.session_ids; one SessionResult per session (skipped when already there and unchanged).

    spec.target is a Target, or a string whose kind ``targets`` (default: folders and archives)
    chooses. After a target fault its kind may ask for another attempt: the run starts again and
    skips what landed (a resumable file resumes); results of sessions written by an earlier attempt
    are kept. ``hashes``: recordings' SHA-256 remembered between exports (read-back checks against it).
    """
    progress = progress or _NullProgress()
    if not isinstance(spec.target, str):
        return _attempt(library, spec, cfg, progress, job_id, state, reg, hashes, spec.target, root_folder(cfg))[0]
    kind = (targets or local()).kind_for(spec.target)
    if isinstance(kind, ArchiveKind):
        from steno_exportd.engine.archive import export_archive
        return export_archive(library, spec, cfg, progress, reg=reg, fmt=kind.fmt)
    written: dict[int, SessionResult] = {}
    for attempt in itertools.count(1):
        results: list[SessionResult] | None = None
        try:
            with kind.open(spec.target, cfg, progress, device=bool(spec.device_id), trusted=spec.trusted) as target:
                results, error = _attempt(library, spec, cfg, progress, job_id, state, reg, hashes, target,
                                          kind.root(spec.target, cfg))
        except TargetError as e:
            error = e
        except CancelledJob:                # while waiting to open it (another push to the same remote)
            return list(written.values())
        if error is None or progress.cancelled or not kind.again(error, attempt, lambda: progress.cancelled):
            if results is None:
                assert error is not None
                raise error
            return [written.get(r.session_id, r) if r.skipped else r for r in results]
        written.update({r.session_id: r for r in results or () if r.ok and not r.skipped and r.session_id})
    raise AssertionError("unreachable")


def bound_uuids(spec: Any) -> tuple[str | None, ...]:
    """Each of spec.session_ids' meeting uuid when the job was asked for (Library.get_session reads it bound to that
    meeting); None for each when the spec has none (a job stored before they were kept, a caller's own spec)."""
    uuids = tuple(spec.session_uuids)
    return uuids if len(uuids) == len(spec.session_ids) else (None,) * len(spec.session_ids)


def _attempt(library: Any, spec: Any, cfg: Config, progress: Any, job_id: int, state: Any, reg: Any,
             hashes: HashCache | None, target: Target, root: str) -> tuple[list[SessionResult], TargetError | None]:
    """One run of the Exporter: its results and the target fault that failed a session, if any."""
    ex = Exporter(library, spec, cfg, progress, job_id, state, reg, target, root, hashes)
    try:
        return ex.run(), ex.target_error
    finally:
        ex.shutdown()


class Exporter:
    def __init__(self, library: Any, spec: Any, cfg: Config, progress: Any, job_id: int, state: Any,
                 reg: Any, target: Target, root: str, hashes: HashCache | None = None) -> None:
        self.lib, self.spec, self.cfg, self.p = library, spec, cfg, progress
        self.t, self.root, self.hashes = target, root, hashes
        self.job_id, self.state, self.reg = job_id, state, reg
        o, e = spec.options, cfg.export
        self.verify = e.verify if o.verify is None else o.verify
        if not self.verify and target.reads_while_writing:
            target.reads_while_writing = False      # a job without verify: no read-back beside the writes either
        self.include_audio = e.include_audio if o.include_audio is None else o.include_audio
        self.overwrite_foreign = e.overwrite_foreign if o.overwrite_foreign is None else o.overwrite_foreign
        self.cont = e.continue_on_error if o.continue_on_error is None else o.continue_on_error
        self.template = o.template or e.template
        self.naming = o.naming or e.naming
        self.pattern = o.pattern or e.folder_pattern
        self.margin = e.free_space_margin_mb * 1024 * 1024
        self.bytes_done = self.files_done = 0
        self.bytes_total = self.files_total = 0
        self.bytes_resumed = 0          # bytes of files cut by an earlier drop that were not sent again
        self._root_names: set[str] = set()      # the root folder's entries (listed once, kept current)
        self._free: int | None = None           # free space on the target, less what this run planned
        self._rings = _Rings()
        self._lock = threading.RLock()          # the manifest and the root's names: the verifier thread
                                                # finishes a session while the next one is written
        self.target_error: TargetError | None = None   # the first target fault that failed a session
        # sessions are finished one after the other, in order (their results, the manifest); their files' commits
        # and read-backs run beside them and beside the next sessions' writes, target.checks at once, and as many
        # sessions in flight (a store far away is slow per request, not per byte)
        self._verifier = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="steno-verify")
        self.depth = max(1, int(target.checks))
        self.flight = max(self.depth, int(target.in_flight or 0))      # sessions in flight (Target.in_flight)
        self.flight_bytes = int(target.in_flight_bytes or 0)
        # a <folder>.partial is built with our marker inside, removed before its rename, so the clean-up after a
        # crash tells it from a stick's author's own 'Notes.partial' beside it, on a target with marks_partial
        # (SMB: a small write and a removal per session); on a target without marks_partial (rclone's WebDAV: two
        # uploads, several round trips each) this recorder's own record says which .partial folders it began
        self.mark_partial = target.marks_partial
        self.begun = None if self.mark_partial else Begun(cfg.state.dir, target.place or target.name, root)
        self._checks = self._verifier if self.depth == 1 else \
            concurrent.futures.ThreadPoolExecutor(self.depth, thread_name_prefix="steno-check")
        # where more sessions are in flight than are read back at once, their rendered files (small: a transcript, a
        # PDF) are written and read back on threads of their own, one per session in flight beyond those (``checks``
        # at least): their requests go beside the recordings' read-backs, not behind them (a recording's read-back
        # holds a thread from its copy's end to its last byte); the store sees at most the sessions in flight, the
        # read-backs and these at once (rclone's WebDAV: 12 + 4 + 8, with recordings of 64 MiB together at most
        # beyond the first 4; the sessions test: 12 threads here, 9 round trips; 8: 10; 4: 15)
        self._rendered = self._checks if self.flight == self.depth else concurrent.futures.ThreadPoolExecutor(
            max(self.depth, self.flight - self.depth), thread_name_prefix="steno-rendered")
        self._saved_at = 0.0                    # when the manifest was last saved (monotonic; run() sets the start)
        self._held: list[_Held] = []            # sessions recorded in the manifest, waiting for its next save
        self._save_queued = False               # a save of them is queued on the verifier thread (_save_due)
        self._undone: dict[str, tuple[str, str]] = {}   # session uuid -> (why, problem): written, but not done
        self._unsaved = False                   # a change of the manifest (a session finished) not saved yet
        self._ending = False                    # the run's sessions all ended: a save now is its last
        self._sending = 0                       # bytes the session _start_session began sends (its files written)

    def _buffers(self) -> writer.Buffers:
        """The read buffers of the thread that calls it: a rewrite after a failed read-back (the verifier thread) and
        the main thread's copy meanwhile never read into the same ones (either file could land with the other's
        bytes); a read-back handed to the checks' pool is given this method, to call on its own thread."""
        return self._rings.ring

    def shutdown(self) -> None:
        """Wait for the sessions and read-backs still running (a run ended by an error), then end their threads."""
        # (the pools first: a file of theirs may still count its bytes, which can queue a due save on the verifier)
        self._rendered.shutdown(wait=True)
        self._checks.shutdown(wait=True)
        self._verifier.shutdown(wait=True)

    def _cancelled(self) -> bool:
        return bool(self.p.cancelled)

    def _tick(self, n: int) -> None:
        with self._lock:
            self.bytes_done += n
            due = bool(self._held) and not self._save_queued and self._due()
            if due:
                self._save_queued = True
        if due:
            # sessions held for a save while a long file is written: saved now, not when that file's session ends
            self._verifier.submit(self._save_due)
        self.p.update(bytes_done=self.bytes_done)

    def _due(self) -> bool:
        """save_every has passed since the manifest was last saved (the caller holds the lock)."""
        return time.monotonic() - self._saved_at >= self.t.save_every

    def _save_due(self) -> None:
        """The save the held sessions wait for, once save_every has passed (on the verifier thread, in turn with
        the sessions it finishes). A failure leaves them held: the next save tries again and reports it."""
        with self._lock:
            self._save_queued = False
            if not self._held or not self._due():
                return
            try:
                self._save()
            except (TargetError, OSError) as e:
                log.warning("%s: manifest not saved (tried again at the next save): %s", self.t.name, e)
            except CancelledJob:
                return              # the job is ending: the main thread reports it
            except Exception:       # a bug of ours: nobody waits for this thread's result, so it is logged here
                log.exception("%s: manifest not saved (tried again at the next save)", self.t.name)

    def run(self) -> list[SessionResult]:
        """Export the job's sessions into the root folder, held against another run there (Target.held: a verify
        recording what it found rewrites the manifest too)."""
        self.t.mkdir(self.root)
        with self.t.held(self.root):
            return self._run()

    def _run(self) -> list[SessionResult]:
        t0 = self._saved_at = time.monotonic()      # a held session waits save_every from the start: not a save
                                                    # for the first session alone, which held up the next ones
        entries = self.t.scandir(self.root)     # listed first: a store answers the manifest's look-ups from it
        for name in (mf.SUMS, mf.MANIFEST):
            # someone's folder under the name of ours: never replaced (a WebDAV MOVE would delete it first), and
            # every save of the run would fail after its sessions were sent, in the store's words, run after run.
            # Spelled in other letters too where ours is not there: on an SMB share or a FAT stick it is that name
            way = [n for n, st in entries.items() if st.kind == "dir" and n.casefold() == name.casefold()]
            if way and (name in way or name not in entries):
                raise TargetError(f"a folder named {way[0]!r} is in the way of the export's own {name} in "
                                  f"{self.root} on {self.t.name} (not ours, left alone): move it away")
        try:
            self.m = mf.load(self.t, self.root, cancelled=self._cancelled)    # (a rebuild reads the target's files)
        except CancelledJob:
            return []
        cut = self.begun is not None and self.begun.save_cut
        if cut or not mf.in_step(self.m, entries.get(mf.SUMS)):
            # a save that named its two files at once and was cut (or failed) before it ended (this recorder's own
            # record says so), or SHA256SUMS removed or changed by someone: both saved again at the run's end, also
            # when it finds nothing new
            log.info("%s: %s in %s %s: written again", self.t.name, mf.SUMS, shown(self.root),
                     f"may be out of step with {mf.MANIFEST} (a save there was cut)" if cut else
                     f"is not the one {mf.MANIFEST} lists")
            self._unsaved = True
        self._clean_leftovers(entries)
        sessions = []
        asked = False
        results: list[SessionResult] = []
        for sid, uuid in zip(self.spec.session_ids, bound_uuids(self.spec)):
            if self._cancelled():           # planning 10,000 sessions takes a while: a cancel stops it here
                return results
            try:                            # the meeting asked for, or SessionReplaced (that session's result)
                sessions.append(self._retry(self.lib.get_session, sid, *(() if uuid is None else (uuid,))))
                if not asked and self._recorded(sessions[-1]) is None:
                    asked = True
                    self.t.space_ahead()    # a session to write: its free space asked meanwhile (a store's request)
            except StenoError as e:
                results.append(SessionResult(int(sid) if str(sid).isdigit() else 0, uuid or "", "", False,
                                             error=str(e)))
        options = render_options(self.cfg, self.template)
        plans = []
        for s in sessions:
            if self._cancelled():
                return results
            plans.append((s, plan_session(s, self.spec.formats, options, self.include_audio, self.reg)))
        listings = self._listings([s for s, _ in plans])
        if self._cancelled():
            return results
        todo = [(s, pl) for s, pl in plans if not self._unchanged(s, pl, listings.get(s.uuid))]
        todo_ids = {id(s) for s, _ in todo}
        self.bytes_total = sum(pf.size for _, pl in todo for pf in pl)
        self.files_total = sum(len(pl) for _, pl in todo)
        self.p.update(force=True, bytes_total=self.bytes_total, files_total=self.files_total, bytes_done=0,
                      files_done=0, results=tuple(results))
        stop_reason = stop_kind = ""
        # the sessions being finished by the verifier thread (read back, renamed, recorded), oldest first: at most
        # self.flight (beyond self.depth, of self.flight_bytes to send together); an unchanged session's result waits
        # behind them, so results keep the sessions' order
        tail: collections.deque = collections.deque()
        flying: dict[int, int] = {}         # id() of a session's finish in the tail: the bytes it sends

        def settle(s: Any, finish: concurrent.futures.Future | None, error: BaseException | None = None) -> None:
            """A session's result: its finish (or the error that stopped it) and its consequences."""
            nonlocal stop_reason, stop_kind
            if finish is not None:
                try:
                    r = finish.result()
                except (TargetError, OSError) as e:
                    error = e
            if error is not None:
                kind = problem_kind(error)
                if isinstance(error, TargetError) and self.target_error is None:
                    self.target_error = error
                if stop_reason.startswith("target unusable"):
                    kind = stop_kind            # (known: not looked at again for each session that was in flight)
                elif not isinstance(error, TargetFullError) or "limit" not in str(error):
                    if not self._target_alive():
                        kind = kind if kind in ("read-only", "permission") else "pulled"
                        if not stop_reason:
                            stop_reason, stop_kind = f"target unusable: {error}", kind
                r = SessionResult(s.id, s.uuid, s.title, False, error=str(error), problem=kind)
            results.append(r)
            self.p.update(force=True, results=tuple(results))
            if not r.ok and not self.cont:
                stop_reason = stop_reason or f"an earlier session failed ({r.error})"
                stop_kind = stop_kind or r.problem

        def settle_tail(keep: int = 0) -> None:
            """Settle the oldest sessions until at most ``keep`` are left (and, beyond self.depth of them, of at most
            self.flight_bytes to send together), and any finished already."""
            while tail and (len(tail) > keep or not isinstance(tail[0][1], concurrent.futures.Future)
                            or tail[0][1].done() or (keep and self.flight_bytes and len(flying) > self.depth
                                                     and sum(flying.values()) > self.flight_bytes)):
                s, finish = tail.popleft()
                flying.pop(id(finish), None)
                if isinstance(finish, SessionResult):
                    results.append(finish)
                else:
                    settle(s, finish)

        def skipped(s: Any) -> None:
            """An unchanged session: its result after those of the sessions before it."""
            r = SessionResult(s.id, s.uuid, s.title, True, skipped=True)
            if tail:
                tail.append((s, r))
            else:
                results.append(r)

        try:
            for seq, (s, pl) in enumerate(plans, 1):
                if self._cancelled():
                    break
                if id(s) not in todo_ids:
                    skipped(s)
                    continue
                if stop_reason:
                    settle_tail()
                    results.append(SessionResult(s.id, s.uuid, s.title, False,
                                                 error=f"not attempted: {stop_reason}", problem=stop_kind))
                    continue
                if not self.cont:
                    settle_tail()           # its failure stops the export: know it before going on
                    if stop_reason:
                        results.append(SessionResult(s.id, s.uuid, s.title, False,
                                                     error=f"not attempted: {stop_reason}", problem=stop_kind))
                        continue
                try:
                    finish = self._start_session(s, pl, seq)
                except (TargetError, OSError) as e:
                    settle_tail()
                    settle(s, None, e)
                    continue
                tail.append((s, finish))        # (first: a cancel raised by an older one's finish still waits for it)
                flying[id(finish)] = self._sending
                settle_tail(self.flight)        # (those finished by the verifier thread while this one was written)
            settle_tail()
        except CancelledJob:
            while tail:                 # a session whose read-backs had ended before the cancel is kept
                try:
                    settle_tail()
                except CancelledJob:
                    pass
        pending = {h.uuid for h in self._held}
        try:
            # (a target that stops its own uploads at a cancel, rclone, lets this save end: it records the sessions
            # read back before the cancel, which the next push would otherwise send again)
            with self._lock, self.t.unstoppable():
                self._ending = True     # (the save now moves the run's last folders: see _save)
                if self._held or self._unsaved:
                    self._save()        # the sessions a deferred save still holds, or finished since the last
        except (TargetError, OSError) as e:
            # their folders keep their markers or .partial names: the next run removes and sends them again, so
            # they are not done (reported done, a push-on-new would move its mark past them and never send them
            # again)
            log.warning("%s: the manifest was not saved at the end of the run: %s", self.t.name, e)
            if isinstance(e, TargetError) and self.target_error is None:
                self.target_error = e   # the store failed: the push is tried again, as for a session's fault
            for uuid in pending:
                self._undone[uuid] = (f"written, but not recorded on the target: {e}", problem_kind(e))
        if self._undone:
            for i, r in enumerate(results):
                if r.ok and not r.skipped and r.uuid in self._undone:
                    error, problem = self._undone[r.uuid]
                    results[i] = dataclasses.replace(r, ok=False, problem=problem, error=error)
            self.p.update(force=True, results=tuple(results))
        if self.spec.options.merge and sessions and not self._cancelled() and not stop_reason:
            try:
                results.append(self._export_merged(sessions))
            except (TargetError, OSError) as e:
                results.append(SessionResult(0, "", "merged", False, error=str(e)))
        if getattr(self.spec.options, "prune", False) and not self._cancelled() and not stop_reason:
            self._prune_deleted()
        written = sum(len([f for f in r.files if f.ok]) for r in results if not r.skipped)
        log.info("exported to %s: %d files written, %d sessions already there, %.1f MB in %.1f s%s",
                 self.spec.target_name or self.t.name, written, sum(r.skipped for r in results),
                 (self.bytes_done - self.bytes_resumed) / 1e6, time.monotonic() - t0,
                 f" ({self.bytes_resumed / 1e6:.1f} MB of recordings cut by a drop not sent again)"
                 if self.bytes_resumed else "")
        return results

    def _prune_deleted(self) -> None:
        """Remove the files we wrote for sessions no longer on the recorder (and their folder once
        empty); anything else in the folder stays. SHA256SUMS and the manifest follow."""
        try:
            alive = {s.uuid for s in self._retry(self.lib.list_sessions)}
        except StenoError as e:
            log.warning("deleted sessions not removed (library not read): %s", e)
            return
        removed = 0
        for uuid in [u for u in self.m.sessions if not u.startswith("merged:") and u not in alive]:
            entry = self.m.sessions[uuid]
            folder = f"{self.root}/{entry['folder']}"
            try:
                for name in entry.get("files", {}):
                    st = self.t.lstat(f"{folder}/{name}")
                    if st is not None and st.kind == "file":
                        self.t.remove(f"{folder}/{name}")
                if self.t.exists(folder) and not self.t.listdir(folder):
                    self.t.remove(folder)
                    self._root_names.discard(entry["folder"])
            except (TargetError, OSError) as e:   # a file in use: kept (and listed) until the next export
                log.warning("%s not removed (its session was deleted on the recorder): %s", shown(folder),
                            shown(str(e)))
                continue
            del self.m.sessions[uuid]
            removed += 1
            log.info("removed %s: its session was deleted on the recorder", shown(folder))  # (named by the manifest)
        if removed:
            mf.save(self.t, self.root, self.m)

    def _save(self, held: "_Held | None" = None) -> None:
        """Save the manifest (the caller holds the lock), then finish the sessions it now records that waited for
        it: a folder built in place loses its marker, one built as ``<folder>.partial`` loses it (if it has one)
        and is renamed into place. A
        ``held`` session may wait up to the target's ``save_every`` seconds for a later save: until then its folder
        says "incomplete", so a run cut before the save removes it and sends it again (never a finished-looking
        folder the manifest does not know)."""
        if held is not None:
            self._held.append(held)
            if not self._due():
                return
        held_now, self._held = self._held, []
        # where the target takes several requests at once, its two files are named at once (each name is round trips
        # of a store far away), once this recorder's own record says so: a cut between the two names is then known
        # to the next run, which saves again (a SHA256SUMS out of step with manifest.json; see _run)
        at_once = self.begun is not None and self.t.checks > 1 and self.begun.begin_save()
        try:
            if any(h.partial for h in held_now):
                # a final name taken on the target since the session began (someone's own folder, a sync client)
                # is never recorded as ours: the save would make the next run write into that folder. Listed while
                # the save's files are sent (a store's round trip less in a row), looked at before they are named;
                # one taken: the save is not named, and sent again without it
                with concurrent.futures.ThreadPoolExecutor(1, "steno-look") as pool:
                    listing = pool.submit(self.t.listdir, self.root)

                    def ready() -> bool:
                        there = set(listing.result())
                        taken = [h for h in held_now if h.partial and h.final.rpartition("/")[2] in there]
                        for h in taken:
                            self._refuse(h)
                            held_now.remove(h)
                        return not taken
                    if not mf.save(self.t, self.root, self.m, ready=ready, at_once=at_once):
                        mf.save(self.t, self.root, self.m, at_once=at_once)
            else:
                mf.save(self.t, self.root, self.m, at_once=at_once)
        except BaseException:
            self._held = held_now + self._held      # still waiting: the run's end reports them not done
            raise
        if at_once:
            assert self.begun is not None
            self.begun.end_save()
        self._saved_at = time.monotonic()
        self._unsaved = False
        unmark = [h for h in held_now if not h.partial]
        for i, h in enumerate(unmark):
            try:
                self.t.remove(h.marker)
            except TargetError as e:
                # recorded, but its folder (and those after it: not tried, the store failed) still says
                # "incomplete": not done (reported done, a push-on-new would move its mark past it and the marker
                # stay); the next push that sends it finds the marker and completes it
                for rest in unmark[i:]:
                    self._undone[rest.uuid] = (f"written, but its folder still says incomplete on the target: {e}",
                                               problem_kind(e))
                if self.target_error is None:
                    self.target_error = e       # the push is tried again
                break
        moves = [h for h in held_now if h.partial]

        def move(h: _Held) -> TargetError | None:
            try:
                if h.marker:
                    self._unmark(h.partial)
                self.t.rename(h.partial, h.final)      # (never replaces: refused when the name is taken)
            except TargetError as e:
                return e
            return None
        outcomes: list[TargetError | None] = []
        if moves and self._ending:
            # the run's last save: what the target writes once these folders are in place (rclone's office index)
            # may go to it meanwhile (see RcloneTarget.last_moves)
            self.t.last_moves(self.root, [(h.partial, h.final) for h in moves])
        if moves:       # a few at once: each is a few requests of a store that paces them (rclone's WebDAV)
            with concurrent.futures.ThreadPoolExecutor(min(self.t.movers, len(moves)), "steno-move") as pool:
                outcomes = list(pool.map(move, moves))
        undone = False
        self._ended(*(h.partial for h, error in zip(moves, outcomes) if error is None))
        for h, error in zip(moves, outcomes):
            if error is None:
                self._root_names.discard(h.partial[len(self.root) + 1:])
                self._root_names.add(h.final[len(self.root) + 1:])
                continue
            undone = True
            try:
                taken = self.t.lstat(h.final) is not None
            except TargetError:
                taken = False
            if taken:
                self._refuse(h)                 # taken in the moment between the look and the rename
            else:
                # the store failed: not done (reported done, a push-on-new would move its mark past it); the next
                # run finds its folder missing and sends it again
                self._unrecord(h, f"written, but not moved into place on the target: {error}")
                if self.target_error is None:
                    self.target_error = error   # the push is tried again
        if undone:
            # no longer naming a folder that is not in place; failing that, by the next save, at the latest the
            # run's last (else the store's manifest and the office index named them until the next push)
            self._unsaved = True
            mf.save(self.t, self.root, self.m)
            self._unsaved = False

    def _refuse(self, h: "_Held") -> None:
        """A held session whose folder name was taken on the target meanwhile: not recorded, reported failed;
        its ``.partial`` folder is removed by the next run, which sends it again under a free name."""
        name = h.final.rpartition("/")[2]
        log.warning("%s: %s appeared on the target while the session was written (not ours): left alone",
                    self.t.name, h.final)
        self._unrecord(h, f"a folder named {name!r} appeared on the target meanwhile (not ours, left alone); "
                          f"the session is sent again by the next export")

    def _unrecord(self, h: "_Held", why: str) -> None:
        """A held session not finished after all: its manifest entry as before, and reported failed (why)."""
        if h.before is None:
            self.m.sessions.pop(h.uuid, None)
        else:
            self.m.sessions[h.uuid] = h.before
        self._undone[h.uuid] = (why, "")

    def _export_merged(self, sessions: list) -> SessionResult:
        """One merged document per format in 'Merged <date> (N sessions)'; reported as session 0."""
        from steno_exportd.engine.plan import registry
        reg = self.reg or registry()
        stamp = time.strftime("%Y-%m-%d %H-%M")
        taken = set(self._root_names) | {e["folder"] for e in self.m.sessions.values()}
        folder = resolve_collision(safe_name(f"Merged {stamp} ({len(sessions)} sessions)"), taken)
        in_place = not self.t.atomic_dir_rename
        final_rel = f"{self.root}/{folder}"
        work_rel = final_rel if in_place else f"{final_rel}{PARTIAL_SUFFIX}"
        if not in_place:
            self._begin(work_rel)
        self.t.mkdir(work_rel)
        self._root_names.add(work_rel[len(self.root) + 1:])
        if in_place or self.mark_partial:
            mf.write_atomic(self.t, f"{work_rel}/{MARKER}", b"incomplete\n")
        files: list[FileResult] = []
        entry = {"id": 0, "title": "merged", "folder": folder, "updated_at": mf.now_iso(),
                 "exported_at": mf.now_iso(), "files": {}}
        for fmt in self.spec.formats:
            if fmt == "audio":
                continue
            try:
                r = reg.get(fmt)
                if not hasattr(r, "render_merged"):
                    raise StenoError(f"{fmt} cannot merge sessions")
                data = self._retry(r.render_merged, sessions, render_options(self.cfg, self.template))
                name = safe_name(f"merged.{getattr(r, 'extension', fmt)}")
                pf = PlannedFile(name, fmt, str(getattr(r, "version", "")))
                size, sha = self._write_verified(None, pf, f"{work_rel}/{name}", data=data)
            except (TargetError, CancelledJob):
                raise
            except Exception as e:  # noqa: BLE001 - one format's problem never stops the others
                files.append(FileResult(f"{final_rel}/{fmt}", False, error=str(e)))
                continue
            entry["files"][name] = mf.entry(size, sha, fmt, pf.version, self.template)
            files.append(FileResult(f"{final_rel}/{name}", True, size, sha))
        if in_place:
            self.t.remove(f"{work_rel}/{MARKER}")
        # recorded before a .partial is renamed: without its marker, it is ours only when the manifest says its
        # folder is "finishing" (cut before the rename: the next clean-up removes it, and this entry)
        if not in_place:
            entry["finishing"] = True
        self.m.sessions[f"merged:{folder}"] = entry
        mf.save(self.t, self.root, self.m)
        if not in_place:
            if self.mark_partial:
                self._unmark(work_rel)
            self.t.rename(work_rel, final_rel)
            self._ended(work_rel)
            self._root_names.discard(work_rel[len(self.root) + 1:])
            self._root_names.add(folder)
            entry.pop("finishing", None)
            self._unsaved = True            # written by the next save, at the latest the run's last
        ok = all(f.ok for f in files)
        return SessionResult(0, "", "merged", ok, error="; ".join(f.error for f in files if not f.ok),
                             files=tuple(files))

    def _retry(self, fn: Any, *args: Any) -> Any:
        """Retry a transient source error (a locked recorder DB) with exponential backoff."""
        delay = 0.2
        for attempt in range(self.cfg.export.retries + 1):
            try:
                return fn(*args)
            except SourceError as e:
                if attempt == self.cfg.export.retries or self._cancelled():
                    raise
                log.info("transient error (%s); retrying in %.1fs", e, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _unmark(self, work_rel: str) -> None:
        """A finished <folder>.partial loses its marker, synced BEFORE its rename: a stick pulled at any moment
        shows either a .partial folder (recorded: ours) or a finished folder without the marker, never a
        finished-looking folder that says it is incomplete."""
        self.t.remove(f"{work_rel}/{MARKER}")
        self.t.fsync_dir(work_rel)

    def _begin(self, work_rel: str) -> None:
        """A <folder>.partial about to be made: in this recorder's own record first, on a target without markers."""
        if self.begun is not None:
            self.begun.add(work_rel[len(self.root) + 1:])

    def _ended(self, *work_rels: str) -> None:
        """<folder>.partial folders moved into place or removed: out of the record."""
        if self.begun is not None and work_rels:
            self.begun.discard(*(r[len(self.root) + 1:] for r in work_rels))

    def _target_alive(self) -> bool:
        """The target still answers after a session's failure: its export folder read, as little of it as the
        target can (a whole listing failed past 50,000 entries: a stick counted as pulled)."""
        try:
            return bool(self.t.folder_alive(self.root))     # (SmbTarget.alive(): its connection)
        except (TargetError, OSError):
            return False

    def _clean_leftovers(self, entries: dict[str, EntryStat]) -> None:
        """Remove our temp files and <folder>.partial trees left by a crash or a yank (``entries``: the root's
        listing), except what a resumable write continues (its temp file and its folder). A folder is ours by
        targets.unfinished(): someone's own 'Notes.partial' is left alone, said in one line."""
        self._root_names = set(entries)     # what the run adds is added here: one listing per run
        for p in [p for p in self.m.partial if self._resume_folder(p) not in entries]:
            del self.m.partial[p]           # its folder is gone: nothing to resume
        resuming = {self._resume_folder(p) for p in self.m.partial}

        def drop(rel: str, name: str) -> None:
            try:
                self.t.remove_tree(rel)
            except TargetError as e:
                if e.kind == "pulled":
                    raise
                # someone else's: its name stays taken (the error quotes the name too)
                log.warning("%s: %s left alone: %s", self.t.name, shown(rel), shown(str(e)))
                return
            self._root_names.discard(name)
            self._ended(rel)
        recorded = {e["folder"] for e in self.m.sessions.values()}
        # recorded, then cut before its <folder>.partial was renamed into place: that .partial is ours (a person's
        # own '<folder>.partial', a finished folder of ours they renamed, is not)
        finishing = {e["folder"] for e in self.m.sessions.values() if e.get("finishing")}
        if self.begun is not None:
            self.begun.keep_only({n for n, st in entries.items() if st.kind == "dir"})
        for name, st in entries.items():
            rel = f"{self.root}/{name}"
            partial = name.endswith(PARTIAL_SUFFIX)
            if partial and st.kind == "dir" and name in resuming:
                continue                        # (one a write resumes is cleaned when built again)
            if partial and st.kind == "dir" and self.begun is not None and name in self.begun:
                drop(rel, name)                 # (no marker on this target: our own record says we began it)
            elif st.kind == "dir" and (partial or name not in recorded):
                # a build interrupted before completion (in place, or as <folder>.partial): what verify calls
                # incomplete (an empty folder holds nothing to lose)
                try:
                    names = self.t.listdir(rel)
                except TargetError as e:        # not ours to read: left alone
                    if e.kind == "pulled":
                        raise
                    if partial:                 # (too many entries: said, as its removal said it)
                        log.warning("%s: %s left alone: %s", self.t.name, shown(rel), shown(str(e)))
                    continue
                if unfinished(name, names, self.t.own_temp, finishing):
                    drop(rel, name)
                    base = name[:-len(PARTIAL_SUFFIX)]
                    if partial and base not in entries and f"merged:{base}" in self.m.sessions:
                        del self.m.sessions[f"merged:{base}"]   # cut before its rename: not sent again
                        self._unsaved = True
                elif partial:
                    log.info("%s: %s left alone: named like an unfinished folder of ours, but not one (without our "
                             "marker or record): someone's own folder", self.t.name, shown(rel))
            elif self.t.own_temp(name) and st.kind == "file":
                self.t.remove(rel)
                self._root_names.discard(name)

    @staticmethod
    def _resume_folder(path: str) -> str:
        return path.rpartition("/")[0]

    def _clean_folder(self, rel: str, everything: bool = False) -> None:
        """Temp files left in one of our folders by an interrupted update (or, for a <folder>.partial
        being built again, everything in it), but those a resumable write continues."""
        folder = rel[len(self.root) + 1:]
        keep = {r.get("temp") for p, r in self.m.partial.items() if self._resume_folder(p) == folder}
        for name, st in self.t.scandir(rel).items():
            if name in keep:
                continue
            if everything:
                self.t.remove_tree(f"{rel}/{name}")
            elif self.t.own_temp(name) and st.kind == "file":
                self.t.remove(f"{rel}/{name}")

    def _hash_of(self, pf: PlannedFile) -> tuple[str | None, int | None, os.stat_result | None]:
        """(the recording's remembered SHA-256 or None, its remembered CRC-32 or None (the read-back checks it),
        its stat now) before it is copied. None on a target whose
        commits check the store's own hash (``hash_checked``: rclone to a store with MD5): hashed while sent, the
        copy is checked by that hash, where a remembered one needs the read-back, a download of the whole file
        (which made a push of recordings hashed ahead to SFTP 1.7 times as long)."""
        if self.hashes is None or pf.source is None:
            return None, None, None
        try:
            st = os.stat(pf.source)
        except OSError:
            return None, None, None
        if self.t.hash_checked:
            return None, None, st
        sha, crc = self.hashes.sha256_crc32(pf.source) or (None, None)
        return sha, crc, st

    def _remember(self, pf: PlannedFile, before: os.stat_result | None, sha: str, crc: int | None = None) -> None:
        """Remember a recording's SHA-256 (and CRC-32, hashed beside it) when it did not change while it was
        copied."""
        if self.hashes is None or before is None:
            return
        try:
            now = os.stat(pf.source)
        except OSError:
            return
        key = lambda st: (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)  # noqa: E731
        if key(now) == key(before):
            if crc is None:
                self.hashes.put_sha256(pf.source, sha, before)
            else:
                self.hashes.put(pf.source, crc, sha, before)

    def _open_write(self, s: Any, folder: str, pf: PlannedFile, rel: str) -> WriteHandle:
        """A write handle for a copy; resumable when the target resumes files this big.

        A resumable write is named in the manifest before a byte is sent, so that after a drop the
        next run finds its temp file and continues it when the source is unchanged (size, mtime).
        """
        resume_min = self.t.resume_min
        if resume_min is None or pf.source is None or pf.size < resume_min:
            return self.t.open_write(rel)
        key = rel[len(self.root) + 1:]
        st = pf.source.stat()
        with self._lock:
            rec = dict(self.m.partial.get(key, {}))
        same = (rec.get("uuid"), rec.get("size"), rec.get("mtime_ns")) == (s.uuid, st.st_size, st.st_mtime_ns)
        temp = rec.get("temp") if isinstance(rec.get("temp"), str) else ""
        if temp and not same:                   # the source changed since: its cut copy is of no use
            if self.t.own_temp(temp) and "/" not in temp:
                self.t.remove(f"{rel.rpartition('/')[0]}/{temp}")
            temp = ""
        h = self.t.open_write(rel, resume=temp)
        if h.offset > st.st_size:               # not what we wrote: sent again from the start
            h.abort()
            h = self.t.open_write(rel, resume="")
        try:
            with self._lock:
                self.m.partial[key] = {"uuid": s.uuid, "folder": folder, "size": st.st_size,
                                       "mtime_ns": st.st_mtime_ns, "temp": h.temp}
                mf.save(self.t, self.root, self.m)
        except BaseException:
            h.abort()
            raise
        if h.offset:
            log.info("%s/%s: resuming at %d of %d bytes (cut short by an earlier drop)", self.t.name, rel,
                     h.offset, st.st_size)
            self.bytes_resumed += h.offset
            self._tick(h.offset)
        return h

    def _recorded(self, s: Any) -> dict | None:
        """The manifest's entry of a session exported whole and not changed on the recorder since."""
        entry = self.m.sessions.get(s.uuid)
        if (not entry or entry.get("updated_at") != _iso(s.updated_at) or entry.get("incomplete")
                or entry.get("finishing")):
            return None
        return entry

    def _listings(self, sessions: list[Any]) -> dict[str, dict[str, EntryStat] | None]:
        """The folders of the sessions recorded as exported and unchanged, as the target lists them now (None: not
        readable), by uuid: several at once on a store that takes several requests at once, where each is a round
        trip (a thousand sessions were a thousand round trips in series before a push found nothing new); a cancel
        stops them."""
        folders = {s.uuid: f"{self.root}/{e['folder']}" for s in sessions if (e := self._recorded(s)) is not None}

        def listing(rel: str) -> dict[str, EntryStat] | None:
            if self._cancelled():
                return None
            try:
                return self.t.scandir(rel)
            except TargetError:
                return None
        if self.t.checks == 1 or len(folders) < 2:
            return {u: listing(rel) for u, rel in folders.items()}
        with concurrent.futures.ThreadPoolExecutor(min(self.t.listers, len(folders)), "steno-list") as pool:
            return dict(zip(folders, pool.map(listing, folders.values())))

    def _still_good(self, f: dict | None, pf: PlannedFile) -> bool:
        """The manifest's entry ``f`` of a file already there stands for what this job would write as ``pf``: the
        same version and template, not flagged changed on the target ("bad"), and, for a job that verifies, verified
        when written (not "unverified": a job without verify wrote it)."""
        return bool(f) and f.get("version") == pf.version and f.get("template", "") == pf.template \
            and not f.get("bad") and not (self.verify and f.get("unverified"))

    def _unchanged(self, s: Any, plan: list[PlannedFile], listing: dict[str, EntryStat] | None) -> bool:
        """Already on the target as this plan would write it: recorded, its files there with their sizes
        (``listing``: its folder's, from _listings)."""
        entry = self._recorded(s)
        if entry is None or listing is None:
            return False
        files = entry.get("files", {})
        if MARKER in listing:       # recorded, then cut before its files were all renamed and its marker removed
            return False
        errors = entry.get("errors", {})
        for pf in plan:
            if pf.error:
                if errors.get(pf.name) == pf.error:
                    continue        # a source problem already reported for this version (missing audio)
                return False
            f = files.get(pf.name)
            if not self._still_good(f, pf):
                return False
            st = listing.get(pf.name)
            if st is None or st.kind != "file" or st.size != f.get("size"):
                return False
        return True

    def _folder_for(self, s: Any, seq: int) -> tuple[str, bool]:
        """(folder name, already ours on the target)."""
        entry = self.m.sessions.get(s.uuid)
        if entry:
            st = self.t.lstat(f"{self.root}/{entry['folder']}")
            if st is not None and st.kind == "dir":
                return entry["folder"], True
            # built again as <folder>.partial: not where the clean-up left someone's own folder of that name (our
            # finished folder they renamed so), which the build would remove first
            work = f"{entry['folder']}{PARTIAL_SUFFIX}"
            theirs = self.t.atomic_dir_rename and work in self._root_names and \
                not any(self._resume_folder(p) == work for p in self.m.partial)
            if st is None and not theirs:
                return entry["folder"], False
        for rec in self.m.partial.values():         # a folder being built when the target dropped
            name = rec.get("folder")
            if rec.get("uuid") == s.uuid and isinstance(name, str) and name and "/" not in name:
                st = self.t.lstat(f"{self.root}/{name}{PARTIAL_SUFFIX}")
                if st is not None and st.kind == "dir":
                    return name, False
        raw = folder_name(s.summary if hasattr(s, "summary") else s, self.naming, self.pattern, seq=seq,
                          job_id=self.job_id, fmt=format_label(self.spec.formats, self.include_audio))
        name = safe_name(raw, f"Session {s.id}", limit=240)
        taken = set(self._root_names) | {e["folder"] for u, e in self.m.sessions.items() if u != s.uuid}
        taken |= {n[: -len(PARTIAL_SUFFIX)] for n in taken if n.endswith(PARTIAL_SUFFIX)}
        taken |= {mf.MANIFEST, mf.SUMS}         # (a meeting titled so, named by title: the run's own files go there)
        # a folder we wrote before the manifest was lost: adopt it, named as we cut names now or as older
        # versions did (a long non-Latin title cut at 240 UTF-16 units, not bytes)
        for cut in dict.fromkeys((name, safe_name(raw, f"Session {s.id}", limit=240, units=OLD_UNITS))):
            if f"rebuilt:{cut}" in self.m.sessions:
                self.m.sessions[s.uuid] = self.m.sessions.pop(f"rebuilt:{cut}")
                return cut, True
        return resolve_collision(name, taken), False

    def _start_session(self, s: Any, plan: list[PlannedFile], seq: int) -> concurrent.futures.Future:
        """Write a session's files; the verifier thread finishes it (after its copies' renames and
        read-backs: the folder renamed into place, the manifest saved) while the next one is written."""
        with self._lock:
            folder, exists = self._folder_for(s, seq)
        final_rel = f"{self.root}/{folder}"
        # preflight: per-file limits and free space, before writing a byte of this session
        limit = self.t.max_file_size
        for pf in plan:
            if limit is not None and pf.size > limit:
                raise TargetFullError(f"{pf.name} is {pf.size / 2**30:.2f} GiB, over the {limit / 2**30:.0f} GiB "
                                      f"per-file limit of this filesystem (FAT32); use an exFAT or NTFS stick "
                                      f"or export without audio", kind="too large")
        need = sum(pf.size for pf in plan)
        if self._free is None or need + self.margin > self._free:
            self._free = self.t.free_space()    # asked once, and again when the estimate runs short
        if need + self.margin > self._free:
            raise TargetFullError(f"target full: needs {need / 2**20:.0f} MiB (+{self.margin / 2**20:.0f} MiB "
                                  f"margin), {self._free / 2**20:.0f} MiB free")
        self._free -= need
        in_place = not self.t.atomic_dir_rename
        work_rel = final_rel if exists or in_place else f"{final_rel}{PARTIAL_SUFFIX}"
        if not exists:
            with self._lock:
                if any(self._resume_folder(p) == work_rel[len(self.root) + 1:] for p in self.m.partial):
                    self._clean_folder(work_rel, everything=True)   # but the temp file a write resumes
                elif work_rel[len(self.root) + 1:] in self._root_names:
                    self.t.remove_tree(work_rel)
                if not in_place:
                    self._begin(work_rel)
                self.t.mkdir(work_rel)
                self._root_names.add(work_rel[len(self.root) + 1:])
            if in_place or self.mark_partial:
                mf.write_atomic(self.t, f"{work_rel}/{MARKER}", b"incomplete\n")
        if exists:
            self._clean_folder(work_rel)
        entry = self.m.sessions.get(s.uuid) if exists else None
        old_files = dict(entry.get("files", {})) if entry else {}
        listing = self.t.scandir(work_rel) if exists else {}     # a folder just made holds none of ours
        new_entry = {"id": s.id, "title": s.title, "folder": folder, "updated_at": _iso(s.updated_at),
                     "exported_at": mf.now_iso(), "files": {}}
        results: list[FileResult] = []
        verified: list[tuple[str, int, str]] = []
        pending: list = []
        # rendered files sent on their own threads (a target that takes several requests at once), once the session's
        # recording is begun: its upload first makes the session's folder, where two uploads making it at once may
        # find it locked for a moment (WebDAV's 423) and a recording's copy must then begin again
        rendered: list[tuple[int, str, bytes]] = []
        self._sending = 0
        # a folder built in place (no folder rename on this filesystem): every file stays under a temp name
        # until the whole session is verified, then the files are renamed one by one
        staged: dict[str, str] = {}
        for pf in plan:
            rel_final = f"{final_rel}/{pf.name}"
            if pf.error:
                results.append(FileResult(rel_final, False, error=pf.error, source_problem=pf.fmt == "audio"))
                continue
            if self._cancelled():
                raise CancelledJob("cancelled")
            old = old_files.get(pf.name)
            rel = f"{work_rel}/{pf.name}"
            if in_place and not exists:
                rel = staged[rel_final] = f"{work_rel}/{TEMP_PREFIX}part-{pf.name}"[:len(work_rel) + 201]
            st = listing.get(pf.name)
            if st is not None:
                if st.kind != "file":
                    results.append(FileResult(rel_final, False, error=f"a {st.kind} is in the way; not replaced"))
                    continue
                if old is None and not self.overwrite_foreign:
                    results.append(FileResult(rel_final, False,
                                              error="a file we did not write is in the way; not overwritten"))
                    continue
                if (self._still_good(old, pf) and old.get("size") == st.size and pf.source is not None
                        and entry and entry.get("updated_at") == new_entry["updated_at"]):
                    new_entry["files"][pf.name] = old
                    results.append(FileResult(rel_final, True, st.size, old.get("sha256", "")))
                    continue
            self.p.update(current_file=rel_final)
            try:
                if pf.source is not None:
                    # its commit and read-back run beside the write of the next file (or session)
                    if pending and pending[-1][-1] is not None and pending[-1][-1].done():
                        pending[-1][-1].result()     # surface a target error early
                    known, known_crc, st_src = self._hash_of(pf)
                    self._sending += pf.size
                    size, sha, crc, h = writer.copy_into(source_ref(pf, s, self.lib.data_dir),
                                                         self._open_write(s, folder, pf, rel),
                                                         tick=self._tick, cancelled=self._cancelled,
                                                         buffers=self._buffers(), known=known, known_crc=known_crc)
                    if self.verify:
                        fut = self._checks.submit(writer.finish_and_verify, h, self.t, rel, size, sha,
                                                  self._cancelled, known is None, self._buffers, crc)
                    else:
                        fut = self._checks.submit(writer.finish, h)
                    pending.append((len(results), pf, rel, rel_final, size, sha, (known, crc, st_src), fut))
                    results.append(None)  # type: ignore[arg-type]
                    continue
                if self.depth > 1:
                    # a rendered file (a transcript, a PDF) on a target that takes several requests at once: rendered
                    # here, written and read back on a pool of their own (_rendered) beside the next files and
                    # sessions (on a store far away its upload and read-back are five round trips in a row, which a
                    # session's rendered files waited for one after the other before the next file and session began)
                    data = self._retry(render_file, pf, s, self.reg, self._cancelled)
                    self.bytes_total += len(data)
                    self._sending += len(data)
                    self.p.update(bytes_total=self.bytes_total)
                    rendered.append((len(pending), rel, data))      # (sent once the session's recording is begun)
                    pending.append((len(results), pf, rel, rel_final, len(data), "", (None, None, None), None))
                    results.append(None)  # type: ignore[arg-type]
                    continue
                size, sha = self._write_verified(s, pf, rel, folder=folder)
            except (VerifyError, StenoError) as e:
                if isinstance(e, (TargetError, CancelledJob)):
                    raise
                results.append(FileResult(rel_final, False, error=str(e)))
                continue
            self._done_file(new_entry, results, verified, len(results), pf, rel_final, size, sha)
        for k, rel, data in rendered:
            pending[k] = (*pending[k][:-1], self._rendered.submit(self._write_rendered, rel, data))
        return self._verifier.submit(self._finish_session, s, plan, folder, exists, in_place, work_rel, final_rel,
                                     entry, old_files, listing, new_entry, results, verified, pending, staged)

    def _finish_session(self, s: Any, plan: list[PlannedFile], folder: str, exists: bool, in_place: bool,
                        work_rel: str, final_rel: str, entry: dict | None, old_files: dict, listing: dict,
                        new_entry: dict, results: list, verified: list, pending: list,
                        staged: dict[str, str]) -> SessionResult:
        for i, pf, rel, rel_final, size, sha, (known, crc, st_src), fut in pending:
            try:
                if pf.source is None:
                    size, sha = fut.result()        # (a rendered file: _write_rendered, written twice at most)
                else:
                    try:
                        fut.result()
                        if not known:
                            self._remember(pf, st_src, sha, crc)
                    except VerifyError:
                        log.warning("verify failed for %s; rewriting once", rel)
                        if known and self.hashes is not None:
                            self.hashes.forget(pf.source)   # the remembered hash is not trusted again
                        self.t.remove(rel)
                        size, sha = self._write_verified(s, pf, rel, attempts=(2,))
            except (VerifyError, StenoError) as e:
                if isinstance(e, (TargetError, CancelledJob)):
                    raise
                results[i] = FileResult(rel_final, False, error=str(e))
                continue
            self._done_file(new_entry, results, verified, i, pf, rel_final, size, sha)
        planned = {pf.name for pf in plan}
        for name, f in old_files.items():
            # files of an earlier export with other formats stay ours (and in SHA256SUMS)
            if name not in planned and name not in new_entry["files"]:
                st = listing.get(name)
                if st is not None and st.kind == "file":
                    new_entry["files"][name] = f
        ok = all(r.ok or r.source_problem for r in results)
        source_errors = {pf.name: pf.error for pf in plan if pf.error}
        # a problem of a format not asked for this time (a missing recording) stays known: not retried
        known = {n: e for n, e in (entry or {}).get("errors", {}).items() if n not in planned}
        if source_errors or known:
            new_entry["errors"] = {**known, **source_errors}
        if sum(1 for r in results if not r.ok) > len(source_errors):
            new_entry["incomplete"] = True
        record = any(r.ok for r in results) or exists
        # the marker of this build (a .partial one's removed before its rename), or one an earlier run left in a
        # folder it had recorded (cut before removing it)
        marker = f"{work_rel}/{MARKER}" if (not exists and (in_place or self.mark_partial)) or MARKER in listing \
            else ""
        # a new folder on a target saved now and then (save_every) waits for the save that records it: its marker
        # (built in place) or its .partial name (renamed into place after that save) says "incomplete" until then
        deferred = bool(self.t.save_every and not exists and (marker or not in_place))
        finishing = record and not deferred and (not exists or bool(marker))
        with self._lock:
            for p in [p for p, r in self.m.partial.items() if r.get("uuid") == s.uuid]:
                del self.m.partial[p]           # written, or failed and removed: nothing to resume
            if record and not deferred:
                # recorded BEFORE the folder looks finished (renamed into place, marker removed): a stick pulled
                # in between leaves a folder the next run knows and completes, never an unknown finished-looking
                # twin beside which it would write "<name> (2)". Until a later save it is "finishing": not yet
                # exported for the auto-export's "new" sessions and the office index, and completed by any export
                # of it
                if finishing:
                    new_entry["finishing"] = True
                self.m.sessions[s.uuid] = new_entry
                self._save()
        if not record:
            # nothing of it written: no empty folder left under a final name (the next run would step around it)
            with self._lock:
                self.t.remove_tree(work_rel)
                self._ended(work_rel)
                self._root_names.discard(work_rel[len(self.root) + 1:])
        elif not exists and not in_place and not deferred:
            with self._lock:
                if marker:
                    self._unmark(work_rel)
                    marker = ""
                self.t.rename(work_rel, final_rel)
                self._ended(work_rel)
                self._root_names.discard(work_rel[len(self.root) + 1:])
                self._root_names.add(folder)
            there = self.t.scandir(final_rel)
            for r in results:
                if r.ok and r.path.rpartition("/")[2] not in there:
                    raise TargetError(f"the filesystem lost {r.path} when its folder was renamed")
        elif not exists and in_place:
            for r in results:
                if r.ok and r.path in staged:
                    self.t.rename(staged[r.path], r.path)
            self.t.fsync_dir(work_rel)
        if record and deferred:                 # recorded at the next save (marked incomplete until then)
            with self._lock:
                held = _Held(s.uuid, marker, "" if in_place else work_rel, final_rel, self.m.sessions.get(s.uuid))
                self.m.sessions[s.uuid] = new_entry
                self._save(held)
        elif record and marker:
            with self._lock:
                self.t.remove(marker)
        if finishing:
            with self._lock:
                new_entry.pop("finishing", None)
                self._unsaved = True            # written by the next save, at the latest the run's last
        if self.state is not None and verified and self.verify:     # history: verified files only
            self.state.add_history(self.job_id, self.spec.target_name, self.spec.device_id, s.uuid, verified)
        errors = "; ".join(f"{r.path.rsplit('/', 1)[-1]}: {r.error}" for r in results
                           if not r.ok and not r.source_problem)
        warnings = tuple(f"recording missing on the recorder, exported without it ({r.error})"
                         for r in results if r.source_problem)
        return SessionResult(s.id, s.uuid, s.title, ok, error=errors, files=tuple(results), warnings=warnings)

    def _done_file(self, new_entry: dict, results: list, verified: list, i: int, pf: PlannedFile,
                   rel_final: str, size: int, sha: str) -> None:
        with self._lock:
            self.files_done += 1
        self.p.update(files_done=self.files_done)
        new_entry["files"][pf.name] = mf.entry(size, sha, pf.fmt, pf.version, pf.template)
        if not self.verify:
            # written by a job without verify: not in the history, and a later job that verifies sends it again
            # (as a "bad" file is) rather than skipping it as already there
            new_entry["files"][pf.name]["unverified"] = True
        r = FileResult(rel_final, True, size, sha)
        if i == len(results):
            results.append(r)
        else:
            results[i] = r
        verified.append((rel_final, size, sha))

    def _write_rendered(self, rel: str, data: bytes) -> tuple[int, str]:
        """A rendered file written and read back (on the pool of rendered files: _start_session); written once more
        when its read-back fails, and removed when that one fails too (VerifyError). (size, sha256). Not begun once
        the job is cancelled (those queued behind it end at once)."""
        if self._cancelled():
            raise CancelledJob("cancelled")
        for attempt in (1, 2):
            sent = 0

            def tick(n: int) -> None:
                nonlocal sent
                sent += n
                self._tick(n)
            try:
                size, sha, crc, checked = writer.write_bytes(data, self.t, rel, tick=tick)
                if self.verify and not checked:
                    writer.verify(self.t, rel, size, sha, cancelled=self._cancelled, buffers=self._buffers(),
                                  crc=crc)
                return size, sha
            except VerifyError:
                self.t.remove(rel)
                if attempt == 2:
                    raise
                log.warning("verify failed for %s; rewriting once", rel)
                self._tick(-sent)           # (its bytes are counted again as they are written again)
        raise AssertionError("unreachable")

    def _write_verified(self, s: Any, pf: PlannedFile, rel: str, attempts: tuple = (1, 2),
                        data: bytes | None = None, folder: str = "") -> tuple[int, str]:
        if pf.source is None and data is None:
            data = self._retry(render_file, pf, s, self.reg, self._cancelled)
            self.bytes_total += len(data)
            self.p.update(bytes_total=self.bytes_total)
        for attempt in attempts:
            start = self.bytes_done
            checked = False                 # the store's own hash matched what was written (and hashed)
            try:
                # the commit's own check (a store's read-back beside the writes: an SMB file over 1 MiB) fails as
                # the read-back after it does: VerifyError, the file written once more
                if data is None:
                    known, known_crc, st_src = self._hash_of(pf) if attempt == 1 else (None, None, None)
                    h = self._open_write(s, folder, pf, rel) if attempt == 1 else self.t.open_write(rel)
                    size, sha, crc, h = writer.copy_into(source_ref(pf, s, self.lib.data_dir), h, tick=self._tick,
                                                         cancelled=self._cancelled, buffers=self._buffers(),
                                                         known=known, known_crc=known_crc)
                    writer.finish(h)
                    checked = writer.checked(h, not known, known_crc)
                else:
                    size, sha, crc, checked = writer.write_bytes(data, self.t, rel, tick=self._tick)
                if self.verify and not checked:
                    writer.verify(self.t, rel, size, sha, cancelled=self._cancelled, buffers=self._buffers(),
                                  crc=crc)
                if data is None and not known:
                    self._remember(pf, st_src, sha, crc)
                return size, sha
            except VerifyError:
                if data is None and known and self.hashes is not None:
                    self.hashes.forget(pf.source)
                if attempt == 2:
                    self.t.remove(rel)
                    raise
                log.warning("verify failed for %s; rewriting once", rel)
                self.bytes_done = start
                self.t.remove(rel)
        raise AssertionError("unreachable")


class _Rings(threading.local):
    """Each copying thread's read buffers."""

    def __init__(self) -> None:
        self.ring = writer.Buffers()


@dataclasses.dataclass(frozen=True)
class _Held:
    """A session recorded in the manifest, finished by its next save: its marker removed (built in place) or
    its ``partial`` folder renamed to ``final`` (its marker, if any, removed first); ``before``: its manifest entry
    before (restored if refused)."""

    uuid: str
    marker: str
    partial: str
    final: str
    before: dict | None


@dataclasses.dataclass(frozen=True)
class SimpleSpec:
    """A spec for callers without a JobManager (CLI, tests)."""

    target: Any
    session_ids: tuple
    formats: tuple
    options: Any
    target_name: str = ""
    device_id: str = ""
    operation: str = "export"
    trusted: bool = True                # the CLI's: not held to export.allowed_dirs (a caller's job is a JobSpec)
    session_uuids: tuple = ()           # as JobSpec's: one per id, or none (each read by its id alone)

