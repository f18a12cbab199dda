"""Retention: old rows of the daemon's own tables pruned by age and count; never a job still running.

One policy per table (config [retention], export.job_history_days) and one SQL helper that every
owner of a table calls on its own connection: the state DB (jobs, results, history), the outbox and
the download audit log (core.access's access.db, which also prunes it as it grows).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from typing import Any, Callable, Iterable

from steno_exportd import config as config_mod

log = logging.getLogger(__name__)

_NAME = re.compile(r"[a-z_]+")
_CHUNK = 500                # ids per DELETE (SQLite's variable limit is 999 on older builds)
JOBS_IN_MEMORY = 200        # finished jobs the job manager lists (the state DB keeps more, see jobs_max)

Execute = Callable[[str, tuple], Iterable[tuple]]


@dataclasses.dataclass(frozen=True)
class Keep:
    """Rows older than ``days`` go, and all but the newest ``rows`` (0: no limit of that kind)."""

    days: float = 0
    rows: int = 0


def policies(cfg: config_mod.Config) -> dict[str, Keep]:
    r = cfg.retention
    return {"jobs": Keep(cfg.export.job_history_days, r.jobs_max), "history": Keep(r.history_days, r.history_max),
            "outbox": Keep(r.outbox_days, r.outbox_max), "audit": Keep(r.audit_days, r.audit_max)}


def prune_rows(execute: Execute, table: str, time_col: str, keep: Keep, *, protect: str = "",
               key: str = "id", now: float | None = None) -> list[int]:
    """Delete the rows of table past keep, except those matching the SQL condition protect; their keys."""
    for name in (table, time_col, key):
        if not _NAME.fullmatch(name):          # names are ours, never a caller's: still, never splice others
            raise ValueError(f"not a table or column name: {name!r}")
    free = f"NOT ({protect})" if protect else "1"
    cut = (now if now is not None else time.time()) - keep.days * 86400 if keep.days else None
    old = f"{time_col} < ?" if cut is not None else "0"
    beyond = (f"{key} NOT IN (SELECT {key} FROM {table} WHERE {free} ORDER BY {time_col} DESC, {key} DESC "
              f"LIMIT ?)" if keep.rows else "0")
    args = ((cut,) if cut is not None else ()) + ((keep.rows,) if keep.rows else ())
    ids = [r[0] for r in execute(f"SELECT {key} FROM {table} WHERE {free} AND ({old} OR {beyond})", args)]
    for i in range(0, len(ids), _CHUNK):
        part = tuple(ids[i:i + _CHUNK])
        execute(f"DELETE FROM {table} WHERE {free} AND {key} IN ({','.join('?' * len(part))})", part)
    return ids


async def run(core: Any) -> None:
    """Prune every retention.interval_hours (reads core.cfg each time: reloads apply); Core.start prunes first."""
    while True:
        await asyncio.sleep(core.cfg.retention.interval_hours * 3600)
        await prune_safely(core)


async def prune_safely(core: Any) -> None:
    try:
        await prune(core)
    except Exception:  # noqa: BLE001 - pruning never stops the daemon; it runs again next time
        log.exception("pruning the state DB failed")


async def prune(core: Any) -> dict[str, int]:
    """One pruning of the state DB, the outbox and the audit log; the counts removed per table."""
    keep = policies(core.cfg)
    counts = await asyncio.to_thread(core.state.prune, keep["jobs"], keep["history"])
    gone = await asyncio.to_thread(core.outbox.prune, keep["outbox"])
    core.outbox.forget(gone)
    counts["outbox"] = len(gone)
    counts["audit"] = await asyncio.to_thread(core.access.store.prune_audit)
    counts["jobs in memory"] = core.jobs.forget_finished(JOBS_IN_MEMORY)
    if any(counts.values()):
        log.info("pruned %s", ", ".join(f"{n} {t}" for t, n in counts.items() if n))
    return counts
