"""Names safe on FAT32, exFAT and NTFS; session folder naming strategies."""
from __future__ import annotations

import datetime as dt
import re
import unicodedata

_FORBIDDEN = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
_RESERVED = {"CON", "PRN", "AUX", "NUL", "CLOCK$", "CONIN$", "CONOUT$",
             *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10)),
             "COM¹", "COM²", "COM³", "LPT¹", "LPT²", "LPT³"}
MAX_NAME = 255
OLD_UNITS = "utf-16"        # how names were cut before 2b6a5c9: folders they named are still found by that cut
ROOT_FALLBACK = "SilentSteno"


def _name_len(s: str, units: str = "utf-8") -> int:
    """A name's length as filesystems limit it: bytes of UTF-8 (ext4's 255 bytes). Never less than its UTF-16 code
    units (FAT, exFAT and NTFS allow 255 of those), so a name within it fits on all of them. ``units="utf-16"``:
    in UTF-16 code units, as versions before 2b6a5c9 cut names (see OLD_UNITS)."""
    if units == OLD_UNITS:
        return len(s.encode("utf-16-le", "surrogatepass")) // 2
    return len(s.encode("utf-8", "surrogatepass"))


def truncate_name(s: str, limit: int, units: str = "utf-8") -> str:
    """Cut s to at most limit (as _name_len counts) without splitting a character."""
    while _name_len(s, units) > limit:
        s = s[:-1]
    return s


def safe_name(name: str, fallback: str = "unnamed", limit: int = MAX_NAME, units: str = "utf-8") -> str:
    """A file or folder name every common filesystem accepts (``units``: as _name_len counts the limit)."""
    s = unicodedata.normalize("NFC", name)
    s = _FORBIDDEN.sub("_", s)
    s = re.sub(r"\s+", " ", s).strip()
    s = s.rstrip(". ")
    if not s or set(s) <= {"."}:
        s = fallback
    stem, dot, ext = s.partition(".")
    if stem.upper().rstrip(" ") in _RESERVED:
        s = "_" + s
    if _name_len(s, units) > limit:
        base, dot, ext = s.rpartition(".")
        if dot and 0 < len(ext) <= 8:
            s = truncate_name(base, limit - _name_len(ext, units) - 1, units).rstrip(". ") + "." + ext
        else:
            s = truncate_name(s, limit, units).rstrip(". ")
    return s


def resolve_collision(name: str, taken: set[str]) -> str:
    """name, or 'name (2)', 'name (3)'... so it differs case-insensitively from every taken name."""
    low = {t.casefold() for t in taken}
    if name.casefold() not in low:
        return name
    base, dot, ext = name.rpartition(".") if "." in name and not name.startswith(".") else (name, "", "")
    if not dot:
        base, ext = name, ""
    i = 2
    while True:
        suffix = f" ({i})"
        cand = truncate_name(base, MAX_NAME - _name_len(suffix) - (_name_len(ext) + 1 if dot else 0)) + suffix
        cand = cand + (f".{ext}" if dot else "")
        if cand.casefold() not in low:
            return cand
        i += 1


def format_label(formats: tuple[str, ...] | list[str], include_audio: bool = True) -> str:
    """The {format} placeholder: the export's formats joined with '+', e.g. 'txt+pdf+audio'."""
    return "+".join(f for f in dict.fromkeys(formats) if f != "audio" or include_audio)


def folder_name(summary, naming: str, pattern: str, seq: int = 1, job_id: int = 0,
                now: dt.datetime | None = None, fmt: str = "") -> str:
    """The (unsafe) folder name of a session for a naming strategy; fmt fills {format} (format_label)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    start = summary.start_time
    if naming == "id":
        return f"{summary.id:05d} {summary.short_id}"
    if naming == "title":
        return summary.title or f"Session {summary.id}"
    if naming == "sequential":
        return f"{seq:04d} {summary.title or 'Session'}"
    local = start.astimezone() if start else None
    values = {
        "date": local.strftime("%Y-%m-%d") if local else "undated",
        "time": local.strftime("%H-%M") if local else "",
        "title": summary.title or f"Session {summary.id}",
        "short_id": summary.short_id,
        "uuid": summary.uuid,
        "id": str(summary.id),
        "location": summary.location or "",
        "job_id": str(job_id),
        "timestamp": now.strftime("%Y%m%d-%H%M%S"),
        "format": fmt,
        "seq": f"{seq:04d}",
    }
    return re.sub(r"{([a-z_]+)}", lambda m: values.get(m.group(1), m.group(0)), pattern)


def root_folder(cfg) -> str:
    """The folder at the top of a target that holds the export (export.root_folder, made safe)."""
    return safe_name(cfg.export.root_folder, ROOT_FALLBACK)
