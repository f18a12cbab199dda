"""Scheduled exports: [[schedules]] and the SMB remotes' ``schedule``, run by one scheduler in the core.

Each schedule has a row in the state DB: ``slot`` (the latest scheduled time dealt with), the last
run and its result, and for ``sessions = "new"`` which sessions it already delivered. The next run
is the first cron/interval time after ``slot``; one that is more than ``MISSED_AFTER`` seconds late
(the recorder was off) runs once, or is skipped without ``catch_up``. Time comes from an injectable
clock: tests move it and ``tick()`` the loop instead of sleeping.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import time
from typing import TYPE_CHECKING, Callable, Sequence

from croniter import croniter
from dateutil import tz

from steno_exportd import events as ev
from steno_exportd import request
from steno_exportd.config import SCHEDULE_MAIL_PREFIX, Config
from steno_exportd.errors import StenoError
from steno_exportd.model import SessionSummary
from steno_exportd.outbox.queue import MAX_SESSIONS as MAIL_MAX_SESSIONS

if TYPE_CHECKING:
    from steno_exportd.core import Core

log = logging.getLogger(__name__)

MISSED_AFTER = 300.0          # a run this late counts as missed (catch_up decides), not as a slow loop
RECHECK = 3600.0              # wake at least hourly: the wall clock may jump (NTP after a cold start)
MAX_DONE = 5000               # delivered ids kept above the mark (a session stuck unexportable holds it)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One schedule as the scheduler runs it (from [[schedules]] or an SMB remote's ``schedule``)."""

    name: str
    target: str
    cron: str = ""
    interval: float = 0.0                 # seconds; used when cron is empty
    sessions: str = "new"                 # new | all | since_days
    since_days: int = 7
    tags: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    template: str = ""
    catch_up: bool = True

    @property
    def when(self) -> str:
        return self.cron if self.cron else f"every {self.interval / 60:g} min"

    @property
    def spec(self) -> str:
        """What decides the times and the selection: a change starts the schedule afresh."""
        return json.dumps([self.cron, self.interval, self.sessions, self.since_days, list(self.tags)])

    def next_after(self, t: float) -> float:
        """The first run time strictly after ``t`` (unix time; cron in the local time zone)."""
        if not self.cron:
            return t + self.interval
        return croniter(self.cron, dt.datetime.fromtimestamp(t, tz.tzlocal())).get_next(float)


@dataclasses.dataclass
class Row:
    """What the state DB keeps per schedule."""

    spec: str
    slot: float
    last_run: float = 0.0
    result: str = ""
    mark: int | None = None               # "new": every session id <= mark is dealt with
    done: set[int] = dataclasses.field(default_factory=set)   # ... and these above it


def plans(cfg: Config) -> list[Plan]:
    """Every schedule of the config: [[schedules]] first, then each remote's own (named smb:<remote> or
    rclone:<remote>)."""
    out = [Plan(s.name, s.target, s.cron, s.interval_minutes * 60, s.sessions, s.since_days, tuple(s.tags),
                tuple(s.formats), s.template, s.catch_up) for s in cfg.schedules]
    out += [Plan(f"smb:{r.name}", f"smb:{r.name}", r.schedule, sessions="all", formats=tuple(r.formats))
            for r in cfg.smb.remotes if r.schedule]
    out += [Plan(f"rclone:{r.name}", f"rclone:{r.name}", r.schedule, sessions="all", formats=tuple(r.formats))
            for r in cfg.rclone.remotes if r.schedule]
    return out


def select(plan: Plan, row: Row, sessions: Sequence[SessionSummary], now: float) -> list[int]:
    """The session ids a run takes (oldest first): exportable ones with a wanted tag, by the plan's rule."""
    ok = [s for s in sessions if s.exportable and (not plan.tags or set(plan.tags) & set(s.tags))]
    since = now - plan.since_days * 86400

    def recent(s: SessionSummary) -> bool:
        return s.start_time is not None and s.start_time.timestamp() >= since

    if plan.sessions == "all":
        chosen = ok
    elif plan.sessions == "since_days" or row.mark is None:
        chosen = [s for s in ok if recent(s)]
    else:
        chosen = [s for s in ok if s.id > row.mark and s.id not in row.done]
    return sorted(s.id for s in chosen)


def mark_done(plan: Plan, row: Row, sessions: Sequence[SessionSummary], ids: Sequence[int], now: float) -> None:
    """Remember what a "new" run delivered; the mark moves up over ids dealt with (a gap stops it)."""
    if plan.sessions != "new":
        return
    done = row.done | set(ids)
    if row.mark is None:       # the first run: what is older than its window counts as dealt with
        since = now - plan.since_days * 86400
        done |= {s.id for s in sessions if s.start_time is None or s.start_time.timestamp() < since}
    mark = row.mark or 0
    for i in sorted(s.id for s in sessions if s.id > mark):
        if i not in done:
            break
        mark = i
    done = {i for i in done if i > mark}
    if len(done) > MAX_DONE:
        mark = sorted(done)[len(done) - MAX_DONE - 1]
        done = {i for i in done if i > mark}
    row.mark, row.done = mark, done


class Scheduler:
    """Runs due schedules through the core (exports, pushes, mail); their state lives in the state DB."""

    def __init__(self, core: "Core", clock: Callable[[], float] = time.time) -> None:
        self._core = core
        self.clock = clock
        self._plans: dict[str, Plan] = {}
        self._rows: dict[str, Row] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._waiters: list[asyncio.Future[list[str]]] = []

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Read the rows (the state DB is open), apply the config; runs missed while off are due now."""
        self._rows = {name: Row(**d) for name, d in (await asyncio.to_thread(self._core.state.schedules)).items()}
        await self.reload(self._core.cfg)
        await self.run_due()            # what was missed while off runs now (catch_up), once
        self._wake.clear()
        self._task = asyncio.create_task(self._loop(), name="schedules")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def reload(self, cfg: Config) -> None:
        """Take the config's schedules: new ones start now, changed ones afresh, removed ones are dropped."""
        async with self._lock:
            now = self.clock()
            new = {p.name: p for p in plans(cfg)}
            for name in [n for n in self._rows if n not in new]:
                del self._rows[name]
            for p in new.values():
                row = self._rows.get(p.name)
                if row is None or row.spec != p.spec:
                    if row is not None:
                        log.info("schedule %s changed: next run %s", p.name, _when(p.next_after(now)))
                    self._rows[p.name] = Row(p.spec, now, row.last_run if row else 0.0, row.result if row else "")
            self._plans = new
            rows = dict(self._rows)
            await asyncio.to_thread(self._core.state.save_schedules, {n: dataclasses.asdict(r) for n, r in rows.items()},
                                    replace_all=True)
        self._publish()
        self._wake.set()

    def poke(self) -> None:
        """Look at the clock again now."""
        self._wake.set()

    async def tick(self) -> list[str]:
        """Wake the running loop and return the names its next pass ran (tests move the clock, then tick)."""
        if self._task is None:
            return await self.run_due()
        waiter: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        return await waiter

    # -- queries ---------------------------------------------------------------------
    def list(self) -> list[ev.ScheduleSnapshot]:
        """Every schedule with its next run time (unix), in config order."""
        out = []
        for p in self._plans.values():
            row = self._rows[p.name]
            out.append(ev.ScheduleSnapshot(name=p.name, when=p.when, target=p.target, sessions=p.sessions,
                                           formats=p.formats, next_run=p.next_after(row.slot),
                                           last_run=row.last_run, last_result=row.result, catch_up=p.catch_up))
        return out

    def _publish(self) -> None:
        self._core.events.publish(ev.SchedulesChanged(tuple(self.list())))

    # -- running ---------------------------------------------------------------------
    async def _loop(self) -> None:
        """Sleep until the next run (or a reload/poke), then run what is due; a direct run_due() and the
        loop never both run one schedule (the lock, and each run moves its slot)."""
        while True:
            nxt = min((s.next_run for s in self.list()), default=None)
            timeout = RECHECK if nxt is None else min(RECHECK, max(0.0, nxt - self.clock()))
            try:
                async with asyncio.timeout(timeout):    # (wait_for on 3.11 drops a cancel that comes with a wake)
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            waiters, self._waiters = self._waiters, []      # only a pass that starts after tick() answers it
            ran: list[str] = []
            try:
                ran = await self.run_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - error boundary: the scheduler never stops
                log.exception("schedules: a pass failed")
            for w in waiters:
                if not w.done():
                    w.set_result(ran)

    async def run_due(self) -> list[str]:
        """Run every schedule due at the clock's time, once each; return their names."""
        ran: list[str] = []
        changed = False
        async with self._lock:
            now = self.clock()
            for p in list(self._plans.values()):
                row = self._rows[p.name]
                due = p.next_after(row.slot)
                if due > now:
                    continue
                if now - due > MISSED_AFTER and not p.catch_up:
                    row.result = f"skipped the run(s) missed since {_when(due)} (catch_up = false)"
                    log.info("schedule %s: %s", p.name, row.result)
                else:
                    if now - due > MISSED_AFTER:
                        log.info("schedule %s: running the run of %s missed while stopped", p.name, _when(due))
                    row.result = await self._run(p, row, now)
                    row.last_run = now
                    ran.append(p.name)
                row.slot = now
                changed = True
                await asyncio.to_thread(self._core.state.save_schedules, {p.name: dataclasses.asdict(row)})
        if changed:
            self._publish()
        return ran

    async def _run(self, p: Plan, row: Row, now: float) -> str:
        """Queue one run's export jobs or messages; the result line says what was queued or why not."""
        core = self._core
        try:
            sessions = (await core.listing()).sessions
            ids = select(p, row, sessions, now)
            if not ids:
                mark_done(p, row, sessions, [], now)
                return "nothing new" if p.sessions == "new" else "no sessions"
            queued = []
            if p.target.startswith(SCHEDULE_MAIL_PREFIX):
                recipients = [a.strip() for a in p.target[len(SCHEDULE_MAIL_PREFIX):].split(",") if a.strip()]
                for part in _chunks(ids, MAIL_MAX_SESSIONS):
                    entry = await core.email_sessions(part, list(p.formats), recipients or list(core.cfg.email.recipients),
                                                      p.template or None)
                    queued.append(f"message {entry.id}")
            else:
                options = {"template": p.template} if p.template else None
                for part in _chunks(ids, request.MAX_SESSIONS):
                    job = await core.export_sessions(part, list(p.formats), p.target, options, trusted=True)
                    queued.append(f"job {job.id}")
            mark_done(p, row, sessions, ids, now)
            log.info("schedule %s: %d session(s) -> %s (%s)", p.name, len(ids), p.target, ", ".join(queued))
            return f"{len(ids)} session(s): {', '.join(queued)}"
        except StenoError as e:
            log.warning("schedule %s: nothing queued: %s", p.name, e)
            return f"error: {e}"
        except Exception as e:  # noqa: BLE001 - error boundary of one run: the slot still moves on
            log.exception("schedule %s: the run failed", p.name)
            return f"error: {type(e).__name__}: {e}"


def _chunks(ids: Sequence[int], n: int) -> list[list[int]]:
    return [list(ids[i:i + n]) for i in range(0, len(ids), n)]


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz.tzlocal()).strftime("%Y-%m-%d %H:%M %Z")
