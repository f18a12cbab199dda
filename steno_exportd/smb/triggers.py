"""Cron expressions (minute hour day month weekday) and the push triggers of every remote (smb: and
rclone:): its schedule and new sessions."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import os
import pathlib
from typing import Callable

from steno_exportd import events
from steno_exportd.config import Config, RcloneRemote, SmbRemote
from steno_exportd.core import Core
from steno_exportd.engine.options import ExportOptions
from steno_exportd.errors import InvalidArgument

log = logging.getLogger(__name__)

_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))   # weekday 0 and 7 are Sunday


@dataclasses.dataclass(frozen=True)
class Cron:
    """A parsed cron expression: the allowed values of each field."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]        # 0 = Sunday
    day_any: bool
    weekday_any: bool

    def matches(self, t: dt.datetime) -> bool:
        """True when ``t`` (to the minute) is one of the expression's times."""
        if t.minute not in self.minutes or t.hour not in self.hours or t.month not in self.months:
            return False
        wd = (t.weekday() + 1) % 7
        day_ok, wd_ok = t.day in self.days, wd in self.weekdays
        if self.day_any or self.weekday_any:       # cron: restricted day fields combine with OR
            return day_ok and wd_ok
        return day_ok or wd_ok

    def next_after(self, t: dt.datetime) -> dt.datetime:
        """The first matching minute strictly after ``t`` (within 5 years)."""
        start = t.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        day = start.replace(hour=0, minute=0)
        for _ in range(366 * 5):
            midnight = day.replace(hour=0, minute=0)
            if self.matches(midnight.replace(hour=min(self.hours), minute=min(self.minutes))):
                for h in sorted(self.hours):
                    for m in sorted(self.minutes):
                        c = midnight.replace(hour=h, minute=m)
                        if c >= start:
                            return c
            day = midnight + dt.timedelta(days=1)
        raise InvalidArgument("cron expression never matches")


def parse(expr: str) -> Cron:
    """Parse ``* */15 1-5 1,15 ...``; InvalidArgument names the bad field."""
    fields = expr.split()
    if len(fields) != 5:
        raise InvalidArgument(f"cron expression needs 5 fields, got {len(fields)}: {expr!r}")
    sets = [_field(f, lo, hi, expr) for f, (lo, hi) in zip(fields, _RANGES)]
    weekdays = frozenset(0 if d == 7 else d for d in sets[4])
    return Cron(sets[0], sets[1], sets[2], sets[3], weekdays, fields[2] == "*", fields[4] == "*")


def _field(text: str, lo: int, hi: int, expr: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        rng, _, step_s = part.partition("/")
        try:
            step = int(step_s) if step_s else 1
            if rng == "*":
                a, b = lo, hi
            elif "-" in rng:
                a_s, b_s = rng.split("-", 1)
                a, b = int(a_s), int(b_s)
            else:
                a = int(rng)
                b = hi if step_s else a
        except ValueError:
            raise InvalidArgument(f"bad cron field {text!r} in {expr!r}") from None
        if step < 1 or not (lo <= a <= hi and lo <= b <= hi) or a > b:
            raise InvalidArgument(f"cron field {text!r} out of range {lo}-{hi} in {expr!r}")
        out.update(range(a, b + 1, step))
    return frozenset(out)


def remotes(cfg: Config) -> list[tuple[str, SmbRemote | RcloneRemote]]:
    """(target, remote) of every remote a trigger may push to: smb:<name> and rclone:<name>."""
    return [(f"smb:{r.name}", r) for r in cfg.smb.remotes] + [(f"rclone:{r.name}", r) for r in cfg.rclone.remotes]


def due(cfg: Config, now: dt.datetime) -> list[str]:
    """Targets (smb:<name>, rclone:<name>) of the remotes whose schedule matches ``now``."""
    out = []
    for target, r in remotes(cfg):
        if r.schedule:
            try:
                if parse(r.schedule).matches(now):
                    out.append(target)
            except InvalidArgument as e:
                log.warning("remote %s: %s", target, e)
    return out


async def _push(core: Core, target: str, remote: SmbRemote | RcloneRemote, ids: str | list[int]) -> int | None:
    """Queue a push job to ``target`` (the core's target registry resolves it); its job id, None when
    it could not be queued."""
    try:
        job = await core.export_sessions(ids, list(remote.formats), target, ExportOptions(), internal=True)
    except Exception as e:  # error boundary: a failed trigger never stops the loop
        log.warning("push to %s not queued: %s", target, e)
        return None
    return job.id


async def run_schedules(core: Core, clock: Callable[[], dt.datetime] = dt.datetime.now) -> None:
    """Each minute, queue a push of all sessions to every remote whose cron schedule matches."""
    last = None
    while True:
        now = clock().replace(second=0, microsecond=0)
        if now != last:
            last = now
            for target in due(core.cfg, now):
                remote = dict(remotes(core.cfg))[target]
                log.info("scheduled push to %s", target)
                await _push(core, target, remote, "all")
        t = clock()
        await asyncio.sleep(max(0.5, 60 - t.second - t.microsecond / 1e6 + 0.05))


async def run_push_on_new(core: Core) -> None:
    """Push each session that becomes exportable after the daemon first saw the remote (push_on_new).

    Per remote, <state.dir>/push/on-new.json keeps the highest session id up to which every session
    has been pushed: the first start only records it (nothing old is pushed), later starts push what
    was recorded while the daemon was down. A session whose push failed is pushed again with the
    next change on the recorder (or by the remote's schedule); the engine skips what already landed.
    """
    marks = OnNewMarks(pathlib.Path(core.cfg.state.dir) / "push" / "on-new.json")
    queued: dict[str, set[int]] = {}        # per remote: pushed or being pushed by this process
    pushed: dict[str, set[int]] = {}        # per remote: landed (the job's result for it is ok)
    jobs: dict[int, tuple[str, list[int]]] = {}
    ids: set[int] = set()
    async for ev in core.events.subscribe():
        if isinstance(ev, events.JobUpdated) and ev.job.id in jobs and ev.job.state.finished:
            name, sent = jobs.pop(ev.job.id)
            ok = {r.session_id for r in ev.job.results if r.ok}
            pushed.setdefault(name, set()).update(i for i in sent if i in ok)
            failed = [i for i in sent if i not in ok]
            if failed:
                log.warning("push on new to %s: sessions %s not pushed (%s); they go with the next change",
                            name, failed, ev.job.error or ev.job.state)
                queued.setdefault(name, set()).difference_update(failed)
            after = marks.get(name)
            if after is not None:
                marks.set(name, advance(after, pushed[name], ids))
            continue
        if not isinstance(ev, events.SessionsChanged) or not (ev.added or ev.changed):
            continue
        wanted = [(target, r) for target, r in remotes(core.cfg) if r.push_on_new]
        if not wanted:
            continue
        try:
            summaries = (await core.listing()).sessions
        except Exception as e:  # error boundary: the recorder DB may be busy; the next change retries
            log.warning("push on new: sessions not read: %s", e)
            continue
        exportable = {s.id for s in summaries if s.exportable}
        ids = {s.id for s in summaries}
        for target, remote in wanted:
            key = remote.name if target.startswith("smb:") else target   # (an SMB remote's mark: its name)
            after = marks.get(key)
            if after is None:
                marks.set(key, max(ids, default=0))
                log.info("push on new to %s: sessions after id %d will be pushed", target, max(ids, default=0))
                continue
            seen = queued.setdefault(key, set())
            new = sorted(i for i in exportable if i > after and i not in seen)
            if new:
                log.info("new sessions %s: push to %s", new, target)
                job_id = await _push(core, target, remote, new)
                if job_id is not None:
                    jobs[job_id] = (key, new)
                    seen.update(new)


def advance(after: int, done: set[int], ids: set[int]) -> int:
    """The highest id up to which every session after ``after`` is done (a gap stops it)."""
    for i in sorted(x for x in ids if x > after):
        if i not in done:
            break
        after = i
    return after


class OnNewMarks:
    """remote name -> highest session id dealt with, in a small JSON file written atomically."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        try:
            self.data = {k: int(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError, AttributeError, TypeError):
            self.data = {}

    def get(self, name: str) -> int | None:
        return self.data.get(name)

    def set(self, name: str, value: int) -> None:
        if self.data.get(name) == value:
            return
        self.data[name] = value
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("%s not saved: %s", self.path, e)
