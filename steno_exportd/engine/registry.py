"""Target kinds chosen by the shape of the target string, in one registry the composition root fills.

The engine's own kinds are a folder (a local export folder, a mounted stick), FILE.zip and
FILE.tar.gz/.tgz; an adapter adds its own (the daemon registers ``smb:<remote>`` from
steno_exportd.smb). A kind checks a target string before a job is queued and opens it (a
``Target``) when the job runs; the engine knows nothing else about it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import logging
import re
import threading
import time
from typing import Any, Callable, ContextManager, Iterator, Protocol

from steno_exportd.config import Config
from steno_exportd.engine.identity import recorder_folder, this_board, this_recorder
from steno_exportd.engine.naming import root_folder
from steno_exportd.engine.targets import DirectoryTarget, Target
from steno_exportd.errors import CancelledJob, InvalidArgument, NotAllowedError, NotFoundError, StenoError, TargetError

log = logging.getLogger(__name__)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


@dataclasses.dataclass(frozen=True, slots=True)
class Checked:
    """A target string its kind accepted: what the job shows and uses."""

    operation: str                      # the job's operation as people see it: "export", "push"
    name: str                           # what a person recognises: a path, "smb:office"
    formats: tuple[str, ...] = ()       # the target's own default formats (a remote's); (): export.formats


class TargetKind(Protocol):
    """A kind of target the Exporter writes into through the Target protocol."""

    label: str                          # for messages: "a folder", "smb:<remote>"

    def matches(self, target: str) -> bool: ...
    def check(self, target: str, cfg: Config, *, trusted: bool) -> Checked: ...   # InvalidArgument/NotFoundError
    def root(self, target: str, cfg: Config) -> str: ...        # the folder at the top that holds the export
    def open(self, target: str, cfg: Config, progress: Any, *, device: bool = False,
             trusted: bool = False) -> ContextManager[Target]: ...
    # open: ``device``, the target is a device's folder (a stick's mount point, the job's device_id): a folder
    # kind holds it to the device's own filesystem; a remote kind has no use for it. ``trusted``: as check()'s
    # (the job was asked for by the daemon itself or the CLI): a folder kind checks export.allowed_dirs again
    # unless it is (``device`` does not lift it: a caller's export to a stick is held to allowed_dirs too)
    def again(self, error: StenoError, attempt: int, cancelled: Callable[[], bool]) -> bool: ...
    # again: after ``error`` ended attempt ``attempt`` (1, 2, ...), wait (cancellably) and say whether to
    # run the export once more (incremental: what landed is skipped; a resumable file resumes)


class RemoteKind:
    """What the remote kinds an adapter registers (``smb:<remote>``, ``rclone:<remote>``) share: a
    configured remote named after the prefix, the recorder's own folder (engine.identity) as the root,
    one push per remote folder at a time, and ATTEMPTS tries with exponential backoff after a
    transient fault. A subclass says which remotes (``remotes``), how to tell a transient fault
    (``transient``) and how to open one (``open``, inside ``one_at_a_time``)."""

    prefix = ""                         # "smb:"
    label = ""                          # "smb:<remote>"
    noun = ""                           # for messages: "SMB"
    section = ""                        # where the remotes are configured, for messages: "[[smb.remotes]]"
    attempts = 3                        # tries of one push after transient faults
    backoff = 2.0                       # seconds before the second try; doubled each time

    def __init__(self, *, recorder_id: str | None = None, sleep: Callable[[float], None] | None = None) -> None:
        self._recorder_id = recorder_id         # None: derived from the machine id
        self._sleep = sleep                     # None: a wait that a cancel ends
        self._locks: dict[Any, threading.Lock] = {}
        self._guard = threading.Lock()

    @classmethod
    def remotes(cls, cfg: Config) -> list[Any]:
        raise NotImplementedError

    def transient(self, error: StenoError) -> bool:
        raise NotImplementedError

    @classmethod
    def remote_for(cls, cfg: Config, target: str) -> Any:
        """The configured remote of "<prefix><name>"; NotFoundError lists the configured ones."""
        name = target.removeprefix(cls.prefix)
        remotes = cls.remotes(cfg)
        for r in remotes:
            if r.name == name:
                return r
        known = ", ".join(r.name for r in remotes) or f"none configured in {cls.section}"
        shown = name if len(name) <= 40 else f"{name[:40]}…"     # (a caller's name: not echoed whole)
        raise NotFoundError(f"no {cls.noun} remote {shown!r} (known: {known[:200]})")

    def matches(self, target: str) -> bool:
        return target.startswith(self.prefix)

    def check(self, target: str, cfg: Config, *, trusted: bool) -> Checked:
        remote = self.remote_for(cfg, target)   # NotFoundError names the configured remotes
        return Checked("push", target, tuple(remote.formats))

    def recorder_id(self, cfg: Config) -> str:
        return this_recorder(cfg) if self._recorder_id is None else self._recorder_id

    def board(self, cfg: Config) -> str:
        """What tells this recorder from one running a copy of its system (identity.board_id), for its claims."""
        return this_board(cfg)

    def root(self, target: str, cfg: Config) -> str:
        return recorder_folder(cfg, self.recorder_id(cfg))

    @contextlib.contextmanager
    def one_at_a_time(self, key: Any, target: str, progress: Any) -> Iterator[None]:
        """Hold the lock of one remote folder; a second job for it waits (cancellably) for the first."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        if not lock.acquire(blocking=False):
            progress.update(force=True, current_file=f"waiting for another push to {target}")
            while not lock.acquire(timeout=0.2):
                if progress.cancelled:
                    raise CancelledJob("cancelled")
        try:
            yield
        finally:
            lock.release()

    def again(self, error: StenoError, attempt: int, cancelled: Callable[[], bool]) -> bool:
        """After a transient fault (a drop, a server that stopped answering), try again with exponential
        backoff, ``attempts`` in all; never after a permanent one (a refused login, a bad config)."""
        if not self.transient(error) or attempt >= self.attempts:
            return False
        delay = self.backoff * 2 ** (attempt - 1)
        log.warning("attempt %d/%d failed: %s; retrying in %.0fs", attempt, self.attempts, error, delay)
        return pause(delay, cancelled, self._sleep)


def pause(delay: float, cancelled: Callable[[], bool], sleep: Callable[[float], None] | None = None) -> bool:
    """Wait ``delay`` seconds before another attempt (``sleep`` when given, else a wait a cancel ends);
    False when the job was cancelled meanwhile. Kinds' again() use it."""
    if sleep is not None:
        sleep(delay)
    else:
        end = time.monotonic() + delay
        while time.monotonic() < end and not cancelled():
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
    return not cancelled()


def under(path: str, dirs: list[str]) -> bool:
    """True when path (symlinks resolved) is one of dirs or inside one."""
    real = os.path.realpath(path)
    for d in dirs:
        base = os.path.realpath(d)
        if real == base or real.startswith(base.rstrip("/") + "/"):
            return True
    return False


NONE_ALLOWED = "no folder is allowed (export.allowed_dirs is empty)"


def allowed(target: str, folder: str, cfg: Config, trusted: bool) -> None:
    """A caller's local target: an absolute path whose folder is under export.allowed_dirs (unless trusted:
    the CLI, the daemon's own mount points); InvalidArgument/NotAllowedError otherwise."""
    if trusted:
        return
    if not cfg.export.allowed_dirs:
        raise NotAllowedError(f"target {target!r}: {NONE_ALLOWED}")
    if not os.path.isabs(target):
        raise InvalidArgument(f"target {target!r}: an absolute path under {', '.join(cfg.export.allowed_dirs)}")
    if not under(folder, cfg.export.allowed_dirs):
        raise NotAllowedError(f"target {target!r} is not under an allowed folder "
                              f"({', '.join(cfg.export.allowed_dirs)})")


def recorder_dirs(cfg: Config) -> list[str]:
    """The recorder's own folders (its database's and its data folder): never a target."""
    dirs = [os.path.dirname(cfg.recorder.db_path)]
    if cfg.recorder.data_dir:
        dirs.append(cfg.recorder.data_dir)
    return [os.path.realpath(d) for d in dirs if d]


def not_the_recorders(folder: str, cfg: Config, error: type[StenoError]) -> None:
    """``error`` when ``folder`` (symlinks resolved) is one of the recorder's own folders or inside one: whoever
    asks, trusted or not, nothing is written there (a folder, or an archive in it)."""
    real = os.path.realpath(folder)
    for d in recorder_dirs(cfg):
        if real == d or real.startswith(d.rstrip("/") + "/"):
            raise error(f"refusing to export into the recorder's data folder {d}")


def _folders_up(fd: int, error: type[StenoError]) -> list[tuple[int, int]]:
    """(device, inode) of the open folder ``fd`` and of each folder above it up to '/', walked by '..' (whatever path
    led to it, symlinks or a rename since). Each parent is opened O_PATH: a folder the daemon may pass through but
    not read (mode 0711, a user's home) is walked like any other, and the filesystem's own open (a FUSE server's,
    which a hung helper never answers) is never called."""
    up: list[tuple[int, int]] = []
    cur = os.dup(fd)
    try:
        for _ in range(4096):           # (a folder's depth: PATH_MAX bounds it)
            st = os.fstat(cur)
            up.append((st.st_dev, st.st_ino))
            parent = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
            os.close(cur)
            cur = parent
            pst = os.fstat(cur)
            if (pst.st_dev, pst.st_ino) == (st.st_dev, st.st_ino):
                return up               # the top: '/' is its own parent
        raise error("the target folder is too deep to check")
    except OSError as e:                # its folder removed meanwhile, say
        raise error(f"the target folder cannot be checked: {e.strerror or e}") from e
    finally:
        os.close(cur)


def _identities(dirs: list[str]) -> dict[tuple[int, int], str]:
    """(device, inode) -> folder, of those of ``dirs`` there now (symlinks followed, as realpath() in under())."""
    out: dict[tuple[int, int], str] = {}
    for d in dirs:
        try:
            st = os.stat(d)
        except OSError:
            continue                    # (not there: nothing is under it either)
        out[(st.st_dev, st.st_ino)] = d
    return out


def not_the_recorders_at(fd: int, cfg: Config, error: type[StenoError]) -> None:
    """not_the_recorders() of an open folder: ``error`` when the folder ``fd`` is (whatever path led to it, symlinks
    or a rename since) one of the recorder's own folders or inside one, found by walking up its parents ('..')
    and comparing each with the recorder's folders (device and inode)."""
    checked_at(fd, cfg, error, trusted=True)


def checked_at(fd: int, cfg: Config, error: type[StenoError], *, trusted: bool) -> None:
    """The open folder ``fd`` a job is about to write into, checked as it is now, in one walk up its parents
    (_folders_up): never one of the recorder's own folders or inside one; unless ``trusted`` (as allowed()), one of
    export.allowed_dirs of ``cfg`` (the config now: an admin may have narrowed it since the job was asked for) or
    inside one. What the path named when the job was asked for does not count: a folder above it swapped since for
    a symlink to somewhere else leads this descriptor there, and that is refused."""
    own = _identities(recorder_dirs(cfg))
    up = _folders_up(fd, error)
    for key in up:
        if key in own:
            raise error(f"refusing to export into the recorder's data folder {own[key]}")
    if trusted:
        return
    if not cfg.export.allowed_dirs:
        raise error(f"the target folder is not allowed now: {NONE_ALLOWED}; nothing is written there")
    allowed_ids = _identities(cfg.export.allowed_dirs)
    if not any(key in allowed_ids for key in up):
        raise error(f"the target folder is not under an allowed folder now ({', '.join(cfg.export.allowed_dirs)}): "
                    "a folder on its path was moved or replaced by a symlink since the export was asked for, or "
                    "export.allowed_dirs changed; nothing is written there")


class FolderKind:
    """A folder on a mounted filesystem: a local export folder or a USB stick's mount point."""

    label = "a folder"

    def matches(self, target: str) -> bool:
        return not _SCHEME.match(target)

    def check(self, target: str, cfg: Config, *, trusted: bool) -> Checked:
        allowed(target, target, cfg, trusted)
        self._usable(target, cfg, InvalidArgument)
        return Checked("export", target)

    def root(self, target: str, cfg: Config) -> str:
        return root_folder(cfg)

    @contextlib.contextmanager
    def open(self, target: str, cfg: Config, progress: Any, *, device: bool = False,
             trusted: bool = False) -> Iterator[Target]:
        # checked when the job was asked for: a folder gone now is a stick pulled (udisks removed its mount point)
        self._usable(target, cfg, TargetError, missing=functools.partial(TargetError, kind="pulled"))
        t = DirectoryTarget(target, mount_point=device)     # a device's: still mounted, or a pulled stick
        # the folder as it is now, checked by what was opened, and pinned: every open of it while the export runs is
        # this folder or refused (a symlink to the recorder's folder put in its place mid-export is never followed);
        # a caller's still under export.allowed_dirs, a device's too (options.device_id comes from the caller: the
        # daemon's own stick exports are trusted)
        fd = t.pin()
        try:
            checked_at(fd, cfg, TargetError, trusted=trusted)
        finally:
            os.close(fd)
        yield t

    def again(self, error: StenoError, attempt: int, cancelled: Callable[[], bool]) -> bool:
        return False

    @staticmethod
    def _usable(target: str, cfg: Config, error: type[StenoError],
                missing: Callable[[str], StenoError] | None = None) -> None:
        not_the_recorders(target, cfg, error)
        if not os.path.isdir(target):
            raise (missing or error)(f"target folder does not exist: {target}")


class ArchiveKind:
    """One archive file (FILE.zip, FILE.tar.gz) written by the engine's archive writer."""

    def __init__(self, label: str, suffixes: tuple[str, ...], fmt: str) -> None:
        self.label = label
        self.suffixes = suffixes
        self.fmt = fmt                      # what the archive writer writes: "zip", "tar.gz"

    def matches(self, target: str) -> bool:
        # a folder named like an archive is a folder (a stick labelled 'REC.zip' mounted at /media/<user>/REC.zip,
        # exported to from the touchscreen, the page or the CLI): never an archive written beside it, outside it
        return not _SCHEME.match(target) and target.lower().endswith(self.suffixes) and not os.path.isdir(target)

    def check(self, target: str, cfg: Config, *, trusted: bool) -> Checked:
        allowed(target, os.path.dirname(target) or ".", cfg, trusted)
        not_the_recorders(os.path.dirname(target) or ".", cfg, InvalidArgument)
        return Checked("export", target)


Kind = TargetKind | ArchiveKind


class Targets:
    """The registry: the kinds a process supports, tried in order; a folder when nothing else fits."""

    def __init__(self, kinds: tuple[Kind, ...] = (), fallback: TargetKind | None = None) -> None:
        self._kinds: list[Kind] = list(kinds)
        self._fallback = fallback

    def register(self, kind: Kind) -> None:
        self._kinds.append(kind)

    def kind_for(self, target: str) -> Kind:
        """The kind of a target string; InvalidArgument names what this process supports."""
        if not target:
            raise InvalidArgument("no target given")
        if "\0" in target:
            raise InvalidArgument("the target contains a NUL character")
        for kind in self._kinds:
            if kind.matches(target):
                return kind
        if self._fallback is not None and self._fallback.matches(target):
            return self._fallback
        scheme = _SCHEME.match(target)
        known = ", ".join(k.label for k in (*self._kinds, *([self._fallback] if self._fallback else [])))
        what = f"{scheme.group(1)}: targets are" if scheme else f"target {target!r} is"
        raise InvalidArgument(f"{what} not supported here (known: {known})")

    def check(self, target: str, cfg: Config, *, trusted: bool = False) -> Checked:
        """Validate a target string before a job is queued."""
        return self.kind_for(target).check(target, cfg, trusted=trusted)


def local() -> Targets:
    """The engine's own kinds: a folder, FILE.zip, FILE.tar.gz/.tgz."""
    return Targets((ArchiveKind("FILE.zip", (".zip",), "zip"),
                    ArchiveKind("FILE.tar.gz", (".tar.gz", ".tgz"), "tar.gz")), fallback=FolderKind())
