"""Auto-export policy: what (if anything) to write to an inserted stick. Blocking reads; call via to_thread."""
from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import os
import tomllib
from pathlib import Path
from typing import Iterable

from steno_exportd import config as config_mod, safeparse
from steno_exportd.config import AutoExportConfig, UsbConfig
from steno_exportd.engine import manifest as mf
from steno_exportd.engine.naming import ROOT_FALLBACK
from steno_exportd.engine.targets import DirectoryTarget
from steno_exportd.errors import ConfigError, StenoError

NOEXPORT_FILE = ".steno-noexport"
STICK_CONFIG = "steno-export.toml"
MAX_STICK_CONFIG = 64 * 1024
MAX_PROBLEMS = 3                # of a stick's file, said (the rest counted)
MAX_PROBLEM = 200               # characters of each


@dataclasses.dataclass(frozen=True, slots=True)
class StickPolicy:
    """The auto-export settings for one stick (config merged with the stick's own file)."""

    write: bool                     # False: mount only
    reason: str                     # why not, or where the settings came from
    auto: AutoExportConfig


def allowed(cfg: UsbConfig, label: str, uuid: str) -> bool:
    """The optional allow-lists: with both empty every stick is allowed."""
    if not cfg.allow_labels and not cfg.allow_uuids:
        return True
    return label in cfg.allow_labels or uuid.lower() in {u.lower() for u in cfg.allow_uuids}


def _read_small_regular(path: Path, limit: int) -> bytes:
    """Read a regular file without following a symlink; refuse anything odd or large."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not (st.st_mode & 0o170000) == 0o100000:
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        return os.read(fd, limit + 1)
    finally:
        os.close(fd)


def _problems(problems: list[str]) -> str:
    """What is wrong with a stick's file, for one line in the log and the stick's reason: the first few problems,
    each bounded (the file is the stick author's: 3,000 unknown keys were 3,000 problems), and how many more."""
    shown = [safeparse.shorten(p, MAX_PROBLEM) for p in problems[:MAX_PROBLEMS]]
    more = len(problems) - len(shown)
    return "; ".join(shown) + (f" (and {more:,} more)" if more else "")


def stick_policy(root: Path, cfg: UsbConfig) -> StickPolicy:
    """Read .steno-noexport and steno-export.toml at the stick's root (never executed, never followed)."""
    auto = cfg.auto_export
    if os.path.lexists(root / NOEXPORT_FILE):
        return StickPolicy(False, f"{NOEXPORT_FILE} on the stick", auto)
    path = root / STICK_CONFIG
    if not os.path.lexists(path):
        return StickPolicy(True, "configuration", auto)
    try:
        data = safeparse.toml_loads(_read_small_regular(path, MAX_STICK_CONFIG).decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        return StickPolicy(False, f"{STICK_CONFIG} on the stick is unusable: {e}", auto)
    # The file is the [usb.auto_export] table; validate it exactly like the main config.
    merged = {k: getattr(auto, k) for k in (f.name for f in dataclasses.fields(auto))}
    merged.update(data)
    try:
        full = config_mod.from_dict({"usb": {"auto_export": merged}}, STICK_CONFIG)
    except ConfigError as e:
        return StickPolicy(False, f"{STICK_CONFIG} on the stick is invalid: " + _problems(e.problems), auto)
    return StickPolicy(full.usb.auto_export.enabled, STICK_CONFIG if full.usb.auto_export.enabled
                       else f"auto-export disabled by {STICK_CONFIG}", full.usb.auto_export)


def sessions_on_stick(root: Path, root_folder: str = ROOT_FALLBACK) -> set[str]:
    """Session UUIDs the stick's manifest lists as exported (empty when there is no readable manifest)."""
    try:
        return mf.read(DirectoryTarget(root), root_folder).exported()   # never follows a symlink
    except (ValueError, TypeError, UnicodeDecodeError, StenoError):
        return set()


def select_sessions(summaries: Iterable, auto: AutoExportConfig, on_stick: set[str],
                    now: dt.datetime | None = None) -> list[int]:
    """Ids of the exportable sessions the policy wants on this stick."""
    now = now or dt.datetime.now(dt.timezone.utc)
    out = []
    for s in summaries:
        if not s.exportable:
            continue
        if auto.sessions == "new" and s.uuid in on_stick:
            continue
        if auto.sessions == "since_days":
            when = s.start_time or s.created_at
            if when is None or when < now - dt.timedelta(days=auto.since_days):
                continue
        out.append(s.id)
    return out


def formats_for(auto: AutoExportConfig) -> list[str]:
    fmts = list(auto.formats)
    if not auto.include_audio:
        fmts = [f for f in fmts if f != "audio"]
    return fmts
