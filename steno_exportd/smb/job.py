"""Push jobs ("smb:<remote>"): export into a local staging folder, then a verified push of it over SMB."""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

from steno_exportd.config import Config
from steno_exportd.engine.manifest import MANIFEST
from steno_exportd.engine.naming import safe_name
from steno_exportd.errors import CancelledJob, NotFoundError, StenoError
from steno_exportd.events import SessionResult

log = logging.getLogger(__name__)

PREFIX = "smb:"
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def remote_for(cfg: Config, target: str) -> Any:
    """The configured remote of "smb:<name>"; NotFoundError lists the configured ones."""
    name = target.removeprefix(PREFIX)
    for r in cfg.smb.remotes:
        if r.name == name:
            return r
    known = ", ".join(r.name for r in cfg.smb.remotes) or "none configured in [[smb.remotes]]"
    raise NotFoundError(f"no SMB remote {name!r} (known: {known})")


def staging_dir(cfg: Config, name: str) -> Path:
    """Where a remote's export is prepared; kept between pushes so both sides stay incremental."""
    return Path(cfg.state.dir) / "push" / re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _lock(staging: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(staging), threading.Lock())


class _StagingProgress:
    """The export phase's progress, counted as the first half of the job (the push is the second)."""

    def __init__(self, progress: Any) -> None:
        self.p = progress

    @property
    def cancelled(self) -> bool:
        return self.p.cancelled

    def update(self, force: bool = False, **fields: Any) -> None:
        if "bytes_total" in fields:
            fields["bytes_total"] *= 2
        self.p.update(force=force, **fields)


def push_runner(library: Any, spec: Any, cfg: Config, progress: Any, job_id: int,
                state: Any = None) -> list[SessionResult]:
    """Blocking (a job thread): export, then push with read-back verify; results per session.

    One push per remote at a time: a second job for the same remote waits for the first (the
    staging folder and the remote folder are shared).
    """
    remote = remote_for(cfg, spec.target)
    staging = staging_dir(cfg, remote.name)
    lock = _lock(staging)
    if not lock.acquire(blocking=False):
        progress.update(force=True, current_file=f"waiting for another push to {spec.target}")
        while not lock.acquire(timeout=0.2):
            if progress.cancelled:
                return []
    try:
        return _push(library, spec, cfg, progress, job_id, state, remote, staging)
    finally:
        lock.release()


def _push(library: Any, spec: Any, cfg: Config, progress: Any, job_id: int, state: Any, remote: Any,
          staging: Path) -> list[SessionResult]:
    from steno_exportd.smb import push as smbpush
    from steno_exportd.engine.export import run_export

    staging.mkdir(parents=True, exist_ok=True)
    results = run_export(library, dataclasses.replace(spec, target=str(staging)), cfg, _StagingProgress(progress),
                         job_id=job_id)
    if progress.cancelled:
        return results
    root = staging / safe_name(cfg.export.root_folder, "SilentSteno")
    staged = progress.fields.get("bytes_done", 0)
    sizes = {rel: p.stat().st_size for rel, p in smbpush._local_files(root)}
    counts = {"done": 0, "files": 0, "total": 0, "nfiles": 0}
    per_file: dict[str, int] = {}

    def plan(nbytes: int, nfiles: int) -> None:      # after the remote manifest is read (again on a retry)
        counts.update(done=0, files=0, total=nbytes, nfiles=nfiles)
        per_file.clear()
        progress.update(force=True, bytes_total=staged + nbytes, bytes_done=staged, files_total=nfiles,
                        files_done=0, current_file=spec.target)

    def tick(rel: str, n: int) -> None:
        counts["done"] += n
        per_file[rel] = per_file.get(rel, 0) + n
        if per_file[rel] >= sizes.get(rel, 0):
            counts["files"] += 1
        progress.update(bytes_done=staged + counts["done"], files_done=counts["files"],
                        current_file=f"{spec.target}/{rel}")

    try:
        res = smbpush.push_remote(cfg, remote.name, root, progress=tick, cancelled=lambda: progress.cancelled,
                                  on_plan=plan)
    except CancelledJob:
        return results
    except StenoError as e:
        log.warning("push to %s failed: %s", spec.target, e)
        return [dataclasses.replace(r, ok=False, error=f"push to {spec.target} failed: {e}") if r.ok else r
                for r in results]
    progress.update(force=True, bytes_total=staged + counts["total"], bytes_done=staged + counts["total"],
                    files_done=counts["nfiles"], current_file="")
    log.info("pushed to %s: %d files sent, %d already there, %.1f MB in %.1f s%s", spec.target, len(res.sent),
             len(res.skipped), res.bytes_sent / 1e6, res.seconds,
             f" ({res.bytes_resumed / 1e6:.1f} MB of recordings cut by a drop not sent again)"
             if res.bytes_resumed else "")
    folders = _folders(root)
    sent_by_uuid: dict[str, list[str]] = {}
    for rel in res.sent:
        uuid = folders.get(rel.partition("/")[0])
        if uuid:
            sent_by_uuid.setdefault(uuid, []).append(rel)
    # A session already staged by an earlier job (skipped by the export) that only now reached the
    # remote was pushed, not skipped.
    results = [dataclasses.replace(r, skipped=False) if r.skipped and r.uuid in sent_by_uuid else r
               for r in results]
    if state is not None:
        sums = smbpush._read_sums(root / smbpush.SUMS_NAME)
        for uuid, rels in sent_by_uuid.items():
            state.add_history(job_id, spec.target, "", uuid,
                              [(f"{spec.target}/{rel}", sizes.get(rel, 0), sums.get(rel, "")) for rel in rels])
    return results


def _folders(root: Path) -> dict[str, str]:
    """Session folder -> uuid from the staging folder's manifest.json."""
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        return {s["folder"]: uuid for uuid, s in data.get("sessions", {}).items() if "folder" in s}
    except (OSError, ValueError, AttributeError, TypeError) as e:
        log.debug("staging manifest unreadable: %s", e)
        return {}
