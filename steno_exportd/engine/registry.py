"""Target kinds chosen by the shape of the target string, in one registry the composition root fills.

The engine's own kinds are a folder (a local export folder, a mounted stick), FILE.zip and
FILE.tar.gz/.tgz; an adapter adds its own (the daemon registers ``smb:<remote>`` from
steno_exportd.smb). A kind checks a target string before a job is queued and opens it (a
``Target``) when the job runs; the engine knows nothing else about it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from typing import Any, Callable, ContextManager, Iterator, Protocol

from steno_exportd.config import Config
from steno_exportd.engine.naming import root_folder
from steno_exportd.engine.targets import DirectoryTarget, Target
from steno_exportd.errors import InvalidArgument, NotAllowedError, StenoError, TargetError

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
    def open(self, target: str, cfg: Config, progress: Any) -> ContextManager[Target]: ...
    def again(self, error: StenoError, attempt: int, cancelled: Callable[[], bool]) -> bool: ...
    # again: after ``error`` ended attempt ``attempt`` (1, 2, ...), wait (cancellably) and say whether to
    # run the export once more (incremental: what landed is skipped; a resumable file resumes)


def under(path: str, dirs: list[str]) -> bool:
    """True when path (symlinks resolved) is one of dirs or inside one."""
    real = os.path.realpath(path)
    for d in dirs:
        base = os.path.realpath(d)
        if real == base or real.startswith(base.rstrip("/") + "/"):
            return True
    return False


def allowed(target: str, folder: str, cfg: Config, trusted: bool) -> None:
    """A caller's local target: an absolute path whose folder is under export.allowed_dirs (unless trusted:
    the CLI, the daemon's own mount points); InvalidArgument/NotAllowedError otherwise."""
    if trusted:
        return
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
    def open(self, target: str, cfg: Config, progress: Any) -> Iterator[Target]:
        self._usable(target, cfg, TargetError)
        yield DirectoryTarget(target)

    def again(self, error: StenoError, attempt: int, cancelled: Callable[[], bool]) -> bool:
        return False

    @staticmethod
    def _usable(target: str, cfg: Config, error: type[StenoError]) -> None:
        real = os.path.realpath(target)
        for d in recorder_dirs(cfg):
            if real == d or real.startswith(d.rstrip("/") + "/"):
                raise error(f"refusing to export into the recorder's data folder {d}")
        if not os.path.isdir(target):
            raise error(f"target folder does not exist: {target}")


class ArchiveKind:
    """One archive file (FILE.zip, FILE.tar.gz) written by the engine's archive writer."""

    def __init__(self, label: str, suffixes: tuple[str, ...], fmt: str) -> None:
        self.label = label
        self.suffixes = suffixes
        self.fmt = fmt                      # what the archive writer writes: "zip", "tar.gz"

    def matches(self, target: str) -> bool:
        return not _SCHEME.match(target) and target.lower().endswith(self.suffixes)

    def check(self, target: str, cfg: Config, *, trusted: bool) -> Checked:
        allowed(target, os.path.dirname(target) or ".", cfg, trusted)
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
