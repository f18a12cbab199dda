"""Pushing to an office NAS: the ``smb:<remote>`` target kind the daemon registers with the core.

The engine exports straight into the share (steno_exportd/smb/target.py): the same plan, names,
manifest.json, SHA256SUMS, incremental skip, ``.partial`` folders and read-back as on a stick.
What this kind adds: which remote, one push per remote at a time, the recorder's own folder and its
claim, the adoption of a folder an earlier version pushed, and retries after transient faults.

Several recorders share one remote share safely because each writes only below its own folder,
``<remote.path>/<recorder_folder>/`` (cfg.smb.recorder_folder, default the host name), which is
the engine's root folder there. The folder's claim file names the recorder that owns it
(recorder_id()); it is made by a rename that never replaces, so of two recorders with one host
name exactly one gets the folder and the other fails before writing anything instead of mixing.
"""
from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from typing import Any, Callable, Iterator

from steno_exportd.config import Config, SmbRemote
from steno_exportd.engine import manifest as mf
from steno_exportd.engine.naming import safe_name
from steno_exportd.engine.registry import Checked
from steno_exportd.errors import CancelledJob, NotFoundError, StenoError, TargetError
from steno_exportd.smb.client import SmbError, recorder_id
from steno_exportd.smb.target import SmbTarget

log = logging.getLogger(__name__)

PREFIX = "smb:"
CLAIM_NAME = ".steno-push-owner.json"   # the recorder owning the folder: made once (first wins), never replaced
LEGACY_MANIFEST = ".steno-push.json"    # written by versions that pushed a local staging copy: adopted, removed
ATTEMPTS = 3                            # tries of one push after transient faults (a drop, a file in use)
BACKOFF = 2.0                           # seconds before the second try; doubled each time


def remote_for(cfg: Config, target: str) -> SmbRemote:
    """The configured remote of "smb:<name>"; NotFoundError lists the configured ones."""
    name = target.removeprefix(PREFIX)
    for r in cfg.smb.remotes:
        if r.name == name:
            return r
    known = ", ".join(r.name for r in cfg.smb.remotes) or "none configured in [[smb.remotes]]"
    raise NotFoundError(f"no SMB remote {name!r} (known: {known})")


def recorder_folder(cfg: Config) -> str:
    """This recorder's folder on every remote (the engine's root folder there)."""
    return safe_name(cfg.smb.recorder_folder or socket.gethostname(), "recorder")


class SmbKind:
    """``smb:<remote>`` targets: checked against the configured remotes, opened connected and claimed."""

    label = "smb:<remote>"

    def __init__(self, *, recorder_id: str | None = None, sleep: Callable[[float], None] | None = None) -> None:
        self._recorder_id = recorder_id         # None: derived from the machine id (recorder_id())
        self._sleep = sleep                     # None: a wait that a cancel ends
        self._locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()

    def matches(self, target: str) -> bool:
        return target.startswith(PREFIX)

    def check(self, target: str, cfg: Config, *, trusted: bool) -> Checked:
        remote = remote_for(cfg, target)        # NotFoundError names the configured remotes
        return Checked("push", target, tuple(remote.formats))

    def root(self, target: str, cfg: Config) -> str:
        return recorder_folder(cfg)

    @contextlib.contextmanager
    def open(self, target: str, cfg: Config, progress: Any) -> Iterator[SmbTarget]:
        """Connected, the recorder's folder claimed (and adopted when an earlier version pushed it).

        One push per remote folder at a time: a second job for it waits for the first.
        """
        remote = remote_for(cfg, target)
        folder = recorder_folder(cfg)
        lock = self._lock(remote, folder)
        if not lock.acquire(blocking=False):
            progress.update(force=True, current_file=f"waiting for another push to {target}")
            while not lock.acquire(timeout=0.2):
                if progress.cancelled:
                    raise CancelledJob("cancelled")
        try:
            t = SmbTarget(remote, name=target)
            try:
                try:
                    t.connect()
                    t.mkdir(folder)
                    claim(t, folder, recorder_id(cfg.state.dir) if self._recorder_id is None else self._recorder_id)
                    adopt(t, folder)
                except SmbError as e:
                    raise SmbError(f"{target}: {e}", e.permanent) from e
                yield t
            finally:
                t.close()
        finally:
            lock.release()

    def again(self, error: StenoError, attempt: int, cancelled: Callable[[], bool]) -> bool:
        """After a transient fault (a drop, a server that stopped answering, a file in use), try again
        with exponential backoff, ATTEMPTS in all; never after a permanent one (logon, access, DNS)."""
        if not isinstance(error, SmbError) or error.permanent or attempt >= ATTEMPTS:
            return False
        delay = BACKOFF * 2 ** (attempt - 1)
        log.warning("attempt %d/%d failed: %s; retrying in %.0fs", attempt, ATTEMPTS, error, delay)
        if self._sleep is not None:
            self._sleep(delay)
        else:
            end = time.monotonic() + delay
            while time.monotonic() < end and not cancelled():
                time.sleep(min(0.2, max(0.0, end - time.monotonic())))
        return not cancelled()

    def _lock(self, remote: SmbRemote, folder: str) -> threading.Lock:
        key = (remote.server.lower(), remote.port, remote.share.lower(), remote.path.strip("/\\").lower(),
               folder.lower())
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())


def read_claim(t: SmbTarget, folder: str) -> bytes | None:
    """The claim file's bytes, None when the folder is not claimed yet."""
    return t.read_small(f"{folder}/{CLAIM_NAME}")


def claim(t: SmbTarget, folder: str, rid: str) -> None:
    """Make sure the recorder folder is ours; SmbError (permanent) when another recorder owns it.

    The first push writes CLAIM_NAME with create_once: two recorders with one host name making their
    first push at the same moment cannot both get the folder. A folder pushed by a version without
    claim files is checked by its LEGACY_MANIFEST's id and claimed when that has none or ours.
    """
    if not rid:
        return                      # no id on this system: no ownership check (logged by recorder_id)
    raw = read_claim(t, folder)
    if raw is None:
        legacy = _legacy(t, folder)
        _check_owner(t, folder, rid, str(legacy.get("recorder_id") or ""), legacy.get("host"))
        body = json.dumps({"recorder_id": rid, "host": socket.gethostname(), "claimed": time.time()},
                          indent=1, sort_keys=True).encode()
        if t.create_once(f"{folder}/{CLAIM_NAME}", body):
            log.info("%s: folder %s claimed for this recorder", t.name, folder)
            return
        raw = read_claim(t, folder) or b""      # another recorder was first
    try:
        data = json.loads(raw)
        owner = str(data["recorder_id"])
    except (ValueError, TypeError, KeyError):
        raise SmbError(f"folder {folder} on {_where(t)}: {CLAIM_NAME} is unreadable, so the owner of the folder "
                       f"is unknown; delete that file if this recorder owns the folder", True) from None
    _check_owner(t, folder, rid, owner, data.get("host"))


def _where(t: SmbTarget) -> str:
    return f"\\\\{t.remote.server}\\{t.remote.share}"


def _check_owner(t: SmbTarget, folder: str, rid: str, owner: str, host: Any) -> None:
    if owner and owner != rid:
        raise SmbError(f"folder {folder} on {_where(t)} belongs to another recorder "
                       f"({host or 'unknown host'}, id {owner[:8]}); set smb.recorder_folder", True)


def _legacy(t: SmbTarget, folder: str) -> dict:
    """The LEGACY_MANIFEST an earlier version left in the folder ({} when none or unreadable)."""
    raw = t.read_small(f"{folder}/{LEGACY_MANIFEST}", limit=64 * 1024 * 1024)
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def adopt(t: SmbTarget, folder: str) -> None:
    """Take over a folder an earlier version pushed (a mirror of a local staging export).

    Its manifest.json is the engine's own (mirrored): the files the old push verified (its
    LEGACY_MANIFEST) are kept as they are, any other file it lists is rewritten by this push.
    """
    legacy = _legacy(t, folder)
    if not legacy and t.lstat(f"{folder}/{LEGACY_MANIFEST}") is None:
        return
    verified = legacy.get("files") if isinstance(legacy.get("files"), dict) else {}
    try:
        m = mf.read(t, folder)
    except (ValueError, TypeError, UnicodeDecodeError, TargetError) as e:
        log.info("%s: %s of an earlier version has no usable manifest (%s)", t.name, folder, e)
        m = None
    kept = doubtful = 0
    if m is not None:
        for s in m.sessions.values():
            for name, f in s["files"].items():
                v = verified.get(f"{s['folder']}/{name}")
                if isinstance(v, dict) and v.get("sha256") == f.get("sha256") and v.get("size") == f.get("size"):
                    kept += 1
                else:
                    f["bad"] = True         # listed by the staging export, never verified on the NAS
                    doubtful += 1
        mf.save(t, folder, m)               # (the old SHA256SUMS listed manifest.json itself)
    t.remove(f"{folder}/{LEGACY_MANIFEST}")
    log.info("%s: %s pushed by an earlier version adopted: %d files kept, %d to send again", t.name, folder,
             kept, doubtful)
