"""Pushing through rclone: the ``rclone:<remote>`` target kind the daemon registers with the core.

Same engine contract as the SMB push: the engine exports into the store (RcloneTarget) with its
plan, manifest.json, SHA256SUMS and incremental skip, so a second push sends only what is missing
or changed. This kind adds which remote, one push per remote at a time, the recorder's own folder
(engine.identity) and its claim, the office index, and retries after transient faults (a drop,
a server that stopped answering), never after a refused login or a bad config.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable, Iterator

from steno_exportd.config import Config, RcloneRemote
from steno_exportd.engine import index
from steno_exportd.engine.identity import CLAIM_NAME, SHORT, claim_body, claim_owner, recorder_folder, this_recorder
from steno_exportd.engine.manifest import write_atomic
from steno_exportd.engine.registry import Checked, pause
from steno_exportd.errors import CancelledJob, NotFoundError, StenoError
from steno_exportd.rclone.process import Rcd, RcloneError, config_problems
from steno_exportd.rclone.target import RcloneTarget

log = logging.getLogger(__name__)

PREFIX = "rclone:"
ATTEMPTS = 3                            # tries of one push after transient faults
BACKOFF = 2.0                           # seconds before the second try; doubled each time
CLAIM_LIMIT = 64 * 1024


def remote_for(cfg: Config, target: str) -> RcloneRemote:
    """The configured remote of "rclone:<name>"; NotFoundError lists the configured ones."""
    name = target.removeprefix(PREFIX)
    for r in cfg.rclone.remotes:
        if r.name == name:
            return r
    known = ", ".join(r.name for r in cfg.rclone.remotes) or "none configured in [[rclone.remotes]]"
    raise NotFoundError(f"no rclone remote {name!r} (known: {known})")


class RcloneKind:
    """``rclone:<remote>`` targets: checked against the configured remotes, opened reached and claimed."""

    label = "rclone:<remote>"

    def __init__(self, *, recorder_id: str | None = None, sleep: Callable[[float], None] | None = None) -> None:
        self._recorder_id = recorder_id         # None: derived from the machine id
        self._sleep = sleep                     # None: a wait that a cancel ends
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def matches(self, target: str) -> bool:
        return target.startswith(PREFIX)

    def check(self, target: str, cfg: Config, *, trusted: bool) -> Checked:
        remote = remote_for(cfg, target)
        return Checked("push", target, tuple(remote.formats))

    def _rid(self, cfg: Config) -> str:
        return this_recorder(cfg) if self._recorder_id is None else self._recorder_id

    def root(self, target: str, cfg: Config) -> str:
        return recorder_folder(cfg, self._rid(cfg))

    @contextlib.contextmanager
    def open(self, target: str, cfg: Config, progress: Any) -> Iterator[RcloneTarget]:
        """The store reached, the recorder's folder claimed; one push per remote at a time."""
        remote = remote_for(cfg, target)
        for p in config_problems(cfg):
            log.warning("%s", p)
        rid = self._rid(cfg)
        folder = recorder_folder(cfg, rid)
        with self._guard:
            lock = self._locks.setdefault(f"{remote.remote}/{folder}", threading.Lock())
        if not lock.acquire(blocking=False):
            progress.update(force=True, current_file=f"waiting for another push to {target}")
            while not lock.acquire(timeout=0.2):
                if progress.cancelled:
                    raise CancelledJob("cancelled")
        try:
            t = RcloneTarget(Rcd(cfg, remote), remote.remote, name=target)
            try:
                t.connect()
                t.mkdir(folder)
                claim(t, folder, rid)
                yield t
                if cfg.smb.office_index:
                    index.write(t, folder, rid[:SHORT])
            finally:
                t.close()
        finally:
            lock.release()

    def again(self, error: StenoError, attempt: int, cancelled: Callable[[], bool]) -> bool:
        """After a transient fault try again with exponential backoff, ATTEMPTS in all."""
        if not isinstance(error, RcloneError) or error.permanent or attempt >= ATTEMPTS:
            return False
        delay = BACKOFF * 2 ** (attempt - 1)
        log.warning("attempt %d/%d failed: %s; retrying in %.0fs", attempt, ATTEMPTS, error, delay)
        return pause(delay, cancelled, self._sleep)


def claim(t: RcloneTarget, folder: str, rid: str) -> None:
    """Make sure the recorder folder is ours: claim it when nobody has; RcloneError when another recorder has."""
    if not rid:
        return
    rel = f"{folder}/{CLAIM_NAME}"
    if t.lstat(rel) is None:
        write_atomic(t, rel, claim_body(rid))
        log.info("%s: folder %s claimed for this recorder", t.name, folder)
        return
    h = t.open_read(rel)
    try:
        raw = h.read(CLAIM_LIMIT)
    finally:
        h.close()
    try:
        owner, host = claim_owner(raw)
    except ValueError:
        raise RcloneError(f"folder {folder} on {t.name}: {CLAIM_NAME} is unreadable, so the owner of the folder "
                          f"is unknown; delete that file if this recorder owns the folder", True) from None
    if owner != rid:
        raise RcloneError(f"folder {folder} on {t.name} belongs to another recorder ({host or 'unknown host'}, "
                          f"id {owner[:8]}); set smb.recorder_folder", True)
