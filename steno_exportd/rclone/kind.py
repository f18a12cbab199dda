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
import posixpath
from typing import Any, Iterator

from steno_exportd import safeparse
from steno_exportd.config import Config, RcloneRemote, rclone_remote_problem
from steno_exportd.engine import index
from steno_exportd.engine.identity import (CLAIM_NAME, SHORT, aside_refusal, board_given, claim_body, claim_in_the_way,
                                           claim_owner, claimant, copied_system, recorder_folder)
from steno_exportd.engine.manifest import MANIFEST, MAX_BYTES, write_atomic
from steno_exportd.engine.registry import RemoteKind
from steno_exportd.errors import NameTaken, StenoError, TargetError
from steno_exportd.rclone.process import Rcd, RcloneError, config_problems
from steno_exportd.rclone.target import RcloneTarget, split_remote

log = logging.getLogger(__name__)

PREFIX = "rclone:"
ATTEMPTS = 3                            # tries of one push after transient faults
BACKOFF = 2.0                           # seconds before the second try; doubled each time
CLAIM_LIMIT = 64 * 1024


def remote_for(cfg: Config, target: str) -> RcloneRemote:
    """The configured remote of "rclone:<name>"; NotFoundError lists the configured ones."""
    return RcloneKind.remote_for(cfg, target)


class RcloneKind(RemoteKind):
    """``rclone:<remote>`` targets: checked against the configured remotes, opened reached and claimed."""

    prefix, label, noun, section = PREFIX, "rclone:<remote>", "rclone", "[[rclone.remotes]]"
    attempts, backoff = ATTEMPTS, BACKOFF

    @classmethod
    def remotes(cls, cfg: Config) -> list[RcloneRemote]:
        return cfg.rclone.remotes

    def transient(self, error: StenoError) -> bool:
        return isinstance(error, RcloneError) and not error.permanent

    @contextlib.contextmanager
    def open(self, target: str, cfg: Config, progress: Any, *, device: bool = False,
             trusted: bool = False) -> Iterator[RcloneTarget]:
        """The store reached, the recorder's folder claimed; one push per remote at a time."""
        remote = self.remote_for(cfg, target)
        if said := rclone_remote_problem(remote.remote) or (
                "" if all(c.isprintable() for c in remote.name) else "names itself with an unprintable character"):
            raise RcloneError(f"rclone:{safeparse.printable(remote.name)}: the remote "
                              f"{safeparse.shorten(safeparse.printable(safeparse.redact(remote.remote)), 80)} {said} "
                              f"(rclone.remotes[]); nothing was sent", True)
        for p in config_problems(cfg):
            log.warning("%s", p)
        rid = self.recorder_id(cfg)
        folder = recorder_folder(cfg, rid)
        with self.one_at_a_time((_folder_of(remote.remote), folder), target, progress):
            t = RcloneTarget(Rcd(cfg, remote), remote.remote, name=target, place=":".join(_folder_of(remote.remote)),
                             cancelled=lambda: bool(getattr(progress, "cancelled", False)))
            try:
                t.connect()
                # what the run reads first once the claim is read (its manifest, the folder's listing) and what a
                # push that finds nothing new reads last (its office index): read meanwhile, on a push into a
                # folder already there
                t.read_ahead((f"{folder}/{MANIFEST}", *([index.index_path(folder)] if cfg.smb.office_index else [])),
                             MAX_BYTES + 1, (folder,))
                t.mkdir(folder)
                if t.made(folder):
                    t.space_ahead()             # a first push into the folder: its sessions follow the claim
                claim(t, folder, rid, self.board(cfg))
                if cfg.smb.office_index:
                    # sent while the run's last folders move into place, named after them (index.write)
                    t.after_moves = lambda root, names: \
                        index.upload_ahead(t, root, rid[:SHORT], names) if root == folder else None
                yield t
                if cfg.smb.office_index:
                    with t.unstoppable():       # (after a cancel too: it lists what the run's last save recorded)
                        index.write(t, folder, rid[:SHORT], ahead=t.taken())
            finally:
                t.close()


def _folder_of(remote: str) -> tuple[str, str]:
    """One key for the folder an rclone remote names, whichever way it is spelled ("nas:office/", "nas:/office",
    "nas:./office" are "nas:office"): pushes to one folder take turns whichever remote of the config names it.
    On SFTP, FTP and local remotes "nas:/x" and "nas:x" differ (root, home): those take turns too, which costs
    a wait, where two keys for one folder would let two pushes clean up each other's work."""
    name, path = split_remote(remote)
    path = posixpath.normpath(path.strip("/") or ".")
    return (name, "" if path == "." else path)


def claim(t: RcloneTarget, folder: str, rid: str, board: str = "") -> None:
    """Make sure the recorder folder is ours: claim it when nobody has; RcloneError when another recorder has (this
    recorder's id from another board, ``board``: a copy of this system, identity.board_id, too), or (permanent, said
    at once) when something not a file holds the claim's name."""
    if not rid:
        return
    rel = f"{folder}/{CLAIM_NAME}"
    # None: not there (read at once: no look-up first); not read in a folder this push made, missing from the remote's
    # folder when it began (a first push): a claim there since is another recorder's of this moment, which the
    # rename below finds (a round trip less before the first session)
    raw = None if t.made(folder) else _read_claim(t, folder, rel)
    if raw is None and not t.made(folder):
        # a claim moved aside to be given a board whose new claim was never made names the owner still (the
        # folder's listing, read ahead: no round trip more, on a folder's first claim only)
        if said := aside_refusal(t.listdir(folder), lambda name: t.read_small(f"{folder}/{name}", CLAIM_LIMIT),
                                 folder, t.name, rid):
            raise RcloneError(said, True)
    if raw is None:
        # written under a temp name, then renamed to the claim's name; the rename looks the name up first and
        # refuses to replace a claim there: two recorders given one folder name (a config copied to both) that
        # both found it unclaimed do not both take it, the second's rename finds the first's claim and its push
        # stops below, before writing a file (unless both renames' look-ups come before either's move: a window of
        # one round trip, as rclone has no create-if-absent on most stores)
        body = claim_body(rid, board)
        refused = _create_claim(t, folder, rel, body)
        if refused is None:
            log.info("%s: folder %s claimed for this recorder", t.name, folder)
            t.claimed(folder, {CLAIM_NAME: len(body)} if t.made(folder) else None)
            return
        raw = _read_claim(t, folder, rel)
        if raw is None:
            _not_in_the_way(t, folder, rel)
            raise refused                   # not refused for a claim there: the store's own fault
    try:
        owner, host, owner_board = claim_owner(raw)
    except ValueError:
        raise RcloneError(f"folder {folder} on {t.name}: {CLAIM_NAME} is unreadable, so the owner of the folder "
                          f"is unknown; delete that file if this recorder owns the folder", True) from None
    if owner != rid:
        raise RcloneError(f"folder {folder} on {t.name} belongs to another recorder ({claimant(host, owner)}); "
                          f"set smb.recorder_folder", True)
    if said := copied_system(folder, t.name, host, owner_board, board):
        raise RcloneError(said, True)
    if board and not owner_board:
        said, permanent = board_given(raw, lambda src, dst: _move_claim(t, src, dst),
                                      lambda body: _claim_made(t, folder, rel, body),
                                      lambda: _read_claim(t, folder, rel), folder, t.name, rid, board)
        if said:
            raise RcloneError(said, permanent)
    t.claimed(folder)


def _move_claim(t: RcloneTarget, src: str, dst: str) -> None:
    """The claim moved aside, or back (identity.board_given); TargetError when a file is at ``dst``: looked up first,
    as a move on some stores replaces (SFTP's), whatever rename() knows of the folder (its listing, from before
    another push's move: a window of one round trip, as for a first claim)."""
    if t.lstat(dst) is not None:
        raise NameTaken(f"refusing to replace existing {dst}")
    t.rename(src, dst)


def _claim_made(t: RcloneTarget, folder: str, rel: str, body: bytes) -> bool:
    """_create_claim for identity.board_given: False when a claim is there, the store's own fault raised."""
    refused = _create_claim(t, folder, rel, body)
    if isinstance(refused, RcloneError):
        raise refused
    return refused is None


def _create_claim(t: RcloneTarget, folder: str, rel: str, body: bytes) -> TargetError | None:
    """The claim written under a temp name, then renamed to its name, never replacing one there; the rename's error
    when it is refused (a claim there, or the store's own fault), None when made."""
    temp = f"{folder}/{t.temp_name()}"
    write_atomic(t, temp, body)
    try:
        t.rename(temp, rel)
    except TargetError as e:
        with contextlib.suppress(TargetError):
            t.remove(temp)              # (else left: this host's temp file, which the next push removes)
        return e
    return None


def _read_claim(t: RcloneTarget, folder: str, rel: str) -> bytes | None:
    """The claim file's bytes, None when not there; the store's error when it fails to read it (said at once when
    the name is someone's folder: _not_in_the_way)."""
    try:
        return t.read_small(rel, CLAIM_LIMIT)
    except TargetError:
        _not_in_the_way(t, folder, rel)
        raise


def _not_in_the_way(t: RcloneTarget, folder: str, rel: str) -> None:
    """RcloneError (permanent) when something not a file (someone's folder) holds the claim's name: the claim can
    never be read or written there, whatever the tries; the error says to move it away (it is never removed)."""
    st = t.lstat(rel)
    if st is not None and st.kind != "file":
        raise RcloneError(claim_in_the_way(folder, t.name, st.kind), True) from None
