"""Pushing to an office NAS: the ``smb:<remote>`` target kind the daemon registers with the core.

The engine exports straight into the share (steno_exportd/smb/target.py): the same plan, names,
manifest.json, SHA256SUMS, incremental skip, ``.partial`` folders and read-back as on a stick.
What this kind adds: which remote, one push per remote at a time, the recorder's own folder and its
claim, the adoption of a folder an earlier version pushed, and retries after transient faults.

Several recorders share one remote share safely because each writes only below its own folder,
``<remote.path>/<recorder folder>/`` (engine.identity: smb.recorder_folder, default the host name
and a short id from the machine id), which is the engine's root folder there. The folder's claim
file names the recorder that owns it (recorder_id()); it is made by a rename that never replaces,
so of two recorders given one folder name exactly one gets it and the other fails before writing
anything instead of mixing. A folder named after the bare host name by an earlier version is
renamed to the new name when it is this recorder's (its claim says so), else left alone. After a
push, the recorder's line of the office index is rewritten (engine.index: its own file).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from steno_exportd import safeparse
from steno_exportd.config import Config, SmbRemote
from steno_exportd.engine import index
from steno_exportd.engine import manifest as mf
from steno_exportd.engine.identity import (CLAIM_NAME, SHORT, aside_refusal, board_given, claim_body, claim_in_the_way,
                                           claim_owner, claimant, copied_system, host_folder, recorder_folder)
from steno_exportd.engine.registry import RemoteKind
from steno_exportd.errors import StenoError, TargetError
from steno_exportd.smb.client import SmbError
from steno_exportd.smb.target import SmbTarget

log = logging.getLogger(__name__)

PREFIX = "smb:"
LEGACY_MANIFEST = ".steno-push.json"    # written by versions that pushed a local staging copy: adopted, removed
CLAIM_MAX = 1 << 20                     # a claim file is read no further (ours: about 120 bytes)
ATTEMPTS = 3                            # tries of one push after transient faults (a drop, a file in use)
BACKOFF = 2.0                           # seconds before the second try; doubled each time


def remote_for(cfg: Config, target: str) -> SmbRemote:
    """The configured remote of "smb:<name>"; NotFoundError lists the configured ones."""
    return SmbKind.remote_for(cfg, target)


class SmbKind(RemoteKind):
    """``smb:<remote>`` targets: checked against the configured remotes, opened connected and claimed."""

    prefix, label, noun, section = PREFIX, "smb:<remote>", "SMB", "[[smb.remotes]]"
    attempts, backoff = ATTEMPTS, BACKOFF

    @classmethod
    def remotes(cls, cfg: Config) -> list[SmbRemote]:
        return cfg.smb.remotes

    def transient(self, error: StenoError) -> bool:
        """A drop, a server that stopped answering, a file in use; not a logon, access or DNS failure."""
        return isinstance(error, SmbError) and not error.permanent

    @contextlib.contextmanager
    def open(self, target: str, cfg: Config, progress: Any, *, device: bool = False,
             trusted: bool = False) -> Iterator[SmbTarget]:
        """Connected, the recorder's folder claimed (and adopted when an earlier version pushed it).

        One push per remote folder at a time: a second job for it waits for the first.
        """
        remote = self.remote_for(cfg, target)
        rid = self.recorder_id(cfg)
        folder = recorder_folder(cfg, rid)
        key = (remote.server.lower(), remote.port, remote.share.lower(), remote.path.strip("/\\").lower(),
               folder.lower())
        with self.one_at_a_time(key, target, progress):
            t = SmbTarget(remote, name=target, cancelled=lambda: bool(getattr(progress, "cancelled", False)))
            t.reads_while_writing = cfg.export.verify       # no read-back at all without verify
            try:
                try:
                    t.connect()
                    board = self.board(cfg)
                    if not cfg.smb.recorder_folder:
                        adopt_host_folder(t, folder, rid, board)
                    t.mkdir(folder)
                    claim(t, folder, rid, board)
                    adopt(t, folder)
                except SmbError as e:
                    raise SmbError(f"{target}: {e}", e.permanent, kind=e.kind) from e
                yield t
                if cfg.smb.office_index:
                    with t.unstoppable():       # (after a cancel too: it lists what the run's last save recorded)
                        index.write(t, folder, rid[:SHORT])
            finally:
                t.close()


def read_claim(t: SmbTarget, folder: str) -> bytes | None:
    """The claim file's bytes, None when the folder is not claimed yet."""
    return _read_owner_file(t, folder, CLAIM_NAME, CLAIM_MAX)


def _read_owner_file(t: SmbTarget, folder: str, name: str, limit: int) -> bytes | None:
    """A file of the folder that names its owner (None when there is none); SmbError (permanent) past ``limit``:
    someone else's file, and the owner unknown."""
    st = t.lstat(f"{folder}/{name}")
    if st is None or st.kind != "file":
        return None
    try:
        return bytes(mf.read_file(t, f"{folder}/{name}", limit))
    except SmbError:
        raise
    except TargetError:
        raise SmbError(f"folder {folder} on {_where(t)}: {name} is larger than {limit >> 20} MiB, so the owner of "
                       f"the folder is unknown; delete that file if this recorder owns the folder", True) from None


def claim(t: SmbTarget, folder: str, rid: str, board: str = "") -> None:
    """Make sure the recorder folder is ours; SmbError (permanent) when another recorder owns it.

    The first push writes CLAIM_NAME with create_once: two recorders with one host name making their
    first push at the same moment cannot both get the folder. A folder pushed by a version without
    claim files is checked by its LEGACY_MANIFEST's id and claimed when that has none or ours. A claim
    of this recorder's id from another board (``board``, identity.board_id: a copy of this system, its
    machine id with it) is another recorder's too.
    """
    if not rid:
        return                      # no id on this system: no ownership check (logged by recorder_id)
    raw = read_claim(t, folder)
    if raw is None:
        st = t.lstat(f"{folder}/{CLAIM_NAME}")      # (not claimed yet: a first push, one request more)
        if st is not None and st.kind != "file":    # someone's folder of that name: the claim is never made there
            raise SmbError(claim_in_the_way(folder, _where(t), st.kind), True)
        # a claim moved aside to be given a board whose new claim was never made names the owner still (one
        # listing more, on a folder's first claim only)
        if said := aside_refusal(t.listdir(folder), lambda name: _read_owner_file(t, folder, name, CLAIM_MAX),
                                 folder, _where(t), rid):
            raise SmbError(said, True)
        legacy = _legacy(t, folder)
        _check_owner(t, folder, rid, str(legacy.get("recorder_id") or ""), legacy.get("host"))
        if t.create_once(f"{folder}/{CLAIM_NAME}", claim_body(rid, board)):
            log.info("%s: folder %s claimed for this recorder", t.name, folder)
            return
        raw = read_claim(t, folder) or b""      # another recorder was first
    try:
        owner, host, owner_board = claim_owner(raw)
    except ValueError:
        raise SmbError(f"folder {folder} on {_where(t)}: {CLAIM_NAME} is unreadable, so the owner of the folder "
                       f"is unknown; delete that file if this recorder owns the folder", True) from None
    _check_owner(t, folder, rid, owner, host)
    if said := copied_system(folder, _where(t), host, owner_board, board):
        raise SmbError(said, True)
    if board and not owner_board:
        said, permanent = board_given(raw, t.rename, lambda body: t.create_once(f"{folder}/{CLAIM_NAME}", body),
                                      lambda: read_claim(t, folder), folder, _where(t), rid, board)
        if said:
            raise SmbError(said, permanent)


def _where(t: SmbTarget) -> str:
    return f"\\\\{t.remote.server}\\{t.remote.share}"


def _check_owner(t: SmbTarget, folder: str, rid: str, owner: str, host: Any) -> None:
    if owner and owner != rid:
        raise SmbError(f"folder {folder} on {_where(t)} belongs to another recorder ({claimant(host, owner)}); "
                       f"set smb.recorder_folder", True)


def _legacy(t: SmbTarget, folder: str) -> dict:
    """The LEGACY_MANIFEST an earlier version left in the folder ({} when none or unreadable)."""
    raw = _read_owner_file(t, folder, LEGACY_MANIFEST, mf.MAX_BYTES)
    if raw is None:
        return {}
    try:
        data = safeparse.json_loads(raw, max_values=mf.MAX_VALUES)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def adopt_host_folder(t: SmbTarget, folder: str, rid: str, board: str = "") -> None:
    """Rename the bare-host-name folder an earlier version pushed to ``folder`` when it is this recorder's.

    Its claim (or, older still, its LEGACY_MANIFEST's id) must name this recorder: another recorder's
    folder, or one nobody claimed, is left as it is (this recorder starts its own folder); one whose claim names this
    recorder's id but another board (``board``: a copy of this system) is refused before it is renamed."""
    old = host_folder()
    if not rid or old.casefold() == folder.casefold() or t.lstat(folder) is not None:
        return
    st = t.lstat(old)
    if st is None or st.kind != "dir":
        return
    raw = read_claim(t, old)
    host = owner_board = ""
    try:
        if raw is not None:
            owner, host, owner_board = claim_owner(raw)
        else:
            owner = str(_legacy(t, old).get("recorder_id") or "")
    except ValueError:
        owner = ""
    if owner == rid and (said := copied_system(old, _where(t), host, owner_board, board)):
        raise SmbError(said, True)
    if owner != rid:
        log.info("%s: folder %s is not this recorder's (%s); pushing into %s", t.name, old,
                 f"id {safeparse.printable(owner[:8])}" if owner else "unclaimed", folder)
        return
    t.rename(old, folder)               # one request, never replaces: a folder made meanwhile wins
    log.info("%s: folder %s of an earlier version renamed to %s", t.name, old, folder)


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
