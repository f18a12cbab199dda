"""Push jobs ("smb:<remote>"): export into a local staging folder, then a verified push of it over SMB."""
from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

from steno_exportd.config import Config
from steno_exportd.engine.naming import safe_name
from steno_exportd.errors import CancelledJob, NotFoundError, StenoError
from steno_exportd.events import SessionResult

log = logging.getLogger(__name__)

PREFIX = "smb:"


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


def push_runner(library: Any, spec: Any, cfg: Config, progress: Any, job_id: int,
                state: Any = None) -> list[SessionResult]:
    """Blocking (a job thread): export, then push with read-back verify; results per session."""
    from steno_exportd import smbpush
    from steno_exportd.engine.export import run_export

    remote = remote_for(cfg, spec.target)
    staging = staging_dir(cfg, remote.name)
    staging.mkdir(parents=True, exist_ok=True)
    results = run_export(library, dataclasses.replace(spec, target=str(staging)), cfg, progress, job_id=job_id)
    if progress.cancelled:
        return results
    root = staging / safe_name(cfg.export.root_folder, "SilentSteno")
    files = smbpush._local_files(root)
    total = sum(p.stat().st_size for _, p in files)
    done = 0
    progress.update(force=True, bytes_total=total, bytes_done=0, files_total=len(files), files_done=0,
                    current_file="")

    def tick(rel: str, n: int) -> None:
        nonlocal done
        done += n
        progress.update(bytes_done=done, current_file=f"{spec.target}/{rel}")

    try:
        res = smbpush.push_remote(cfg, remote.name, root, progress=tick, cancelled=lambda: progress.cancelled)
    except CancelledJob:
        return results
    except StenoError as e:
        log.warning("push to %s failed: %s", spec.target, e)
        return [dataclasses.replace(r, ok=False, error=f"push to {spec.target} failed: {e}") if r.ok else r
                for r in results]
    progress.update(force=True, bytes_done=total, files_done=len(files), current_file="")
    log.info("pushed to %s: %d files sent, %d already there, %.1f MB in %.1f s", spec.target, len(res.sent),
             len(res.skipped), res.bytes_sent / 1e6, res.seconds)
    if state is not None:
        by_uuid: dict[str, list] = {}
        sums = smbpush._read_sums(root / smbpush.SUMS_NAME)
        for rel in res.sent:
            for r in results:
                if r.uuid and any(f.path.endswith("/" + rel) or f.path == rel for f in r.files):
                    by_uuid.setdefault(r.uuid, []).append((f"{spec.target}/{rel}", (root / rel).stat().st_size,
                                                           sums.get(rel, "")))
        for uuid, files_ in by_uuid.items():
            state.add_history(job_id, spec.target, "", uuid, files_)
    return results
