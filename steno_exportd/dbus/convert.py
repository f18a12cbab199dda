"""Sessions, jobs and devices as D-Bus values (a{sv} dictionaries of Variants)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from dbus_fast import Variant

from steno_exportd.errors import InvalidArgument


def _iso(t: dt.datetime | None) -> str:
    return t.isoformat() if t else ""


def session_summary(s: Any) -> dict[str, Variant]:
    """A SessionSummary as a{sv}: the keys documented in docs/dbus-api.md."""
    return {
        "id": Variant("x", int(s.id)),
        "uuid": Variant("s", s.uuid or ""),
        "short_id": Variant("s", s.short_id),
        "title": Variant("s", s.title or ""),
        "status": Variant("s", s.status or ""),
        "start_time": Variant("s", _iso(s.start_time)),
        "end_time": Variant("s", _iso(s.end_time)),
        "duration": Variant("x", int(s.duration_seconds or 0)),
        "location": Variant("s", s.location or ""),
        "participant_count": Variant("x", int(s.participant_count or 0)),
        "audio_format": Variant("s", s.audio_format or ""),
        "audio_size": Variant("x", int(s.audio_size or 0)),
        "tags": Variant("as", [str(t) for t in s.tags]),
        "exportable": Variant("b", bool(s.exportable)),
        "problems": Variant("as", [f"{p.field}: {p.reason}" for p in s.problems]),
    }


def session_listing(s: Any) -> dict[str, Variant]:
    """A SessionSummary for ListSessions: fewer keys (no tags: arrays are costly to unpack), optional ones omitted
    when empty, so 10,000 fit in 200 ms; GetSession has everything."""
    d = {
        "id": Variant("x", int(s.id)),
        "uuid": Variant("s", s.uuid or ""),
        "title": Variant("s", s.title or ""),
        "status": Variant("s", s.status or ""),
        "start_time": Variant("s", _iso(s.start_time)),
        "duration": Variant("x", int(s.duration_seconds or 0)),
        "exportable": Variant("b", bool(s.exportable)),
    }
    if s.location:
        d["location"] = Variant("s", s.location)
    if s.participant_count:
        d["participant_count"] = Variant("x", int(s.participant_count))
    if s.audio_size:
        d["audio_size"] = Variant("x", int(s.audio_size))
    if s.problems:
        d["problems"] = Variant("as", [f"{p.field}: {p.reason}" for p in s.problems])
    return d


def session(full: Any) -> dict[str, Variant]:
    """A whole Session as a{sv}: every summary key plus people, summary text and counts."""
    d = session_summary(full.summary)
    d["problems"] = Variant("as", [f"{p.field}: {p.reason}" for p in full.problems])
    d["description"] = Variant("s", full.description or "")
    d["participants"] = Variant("as", [p.name for p in full.participants])
    d["segment_count"] = Variant("x", len(full.segments))
    d["summary"] = Variant("s", full.summary_text or "")
    d["action_items"] = Variant("as", [a.text for a in full.action_items])
    d["topics"] = Variant("as", list(full.topics))
    d["has_audio"] = Variant("b", full.audio is not None)
    return d


def unwrap(options: dict[str, Variant]) -> dict[str, Any]:
    """a{sv} -> plain dict."""
    return {k: (v.value if isinstance(v, Variant) else v) for k, v in options.items()}


def session_filter(opts: dict[str, Any], sessions: list[Any]) -> list[Any]:
    """Apply ListSessions' filter (exportable_only, query, since, limit, offset)."""
    known = {"exportable_only", "query", "since", "limit", "offset"}
    unknown = set(opts) - known
    if unknown:
        raise InvalidArgument(f"unknown filter key(s): {', '.join(sorted(unknown))}; "
                              f"valid: {', '.join(sorted(known))}")
    out = sessions
    if opts.get("exportable_only"):
        out = [s for s in out if s.exportable]
    if opts.get("query"):
        q = str(opts["query"]).casefold()
        out = [s for s in out if q in (s.title or "").casefold()]
    if opts.get("since"):
        try:
            since = dt.datetime.fromisoformat(str(opts["since"]))
        except ValueError:
            raise InvalidArgument(f"since: not an ISO date/time: {opts['since']!r}") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.timezone.utc)
        out = [s for s in out if s.start_time and s.start_time >= since]
    offset = int(opts.get("offset", 0))
    out = out[offset:]
    if opts.get("limit"):
        out = out[:int(opts["limit"])]
    return out


def job_properties(j: Any, device_path: str = "/") -> dict[str, Any]:
    """Job interface property values (plain Python, typed by the interface)."""
    return {
        "Operation": j.operation,
        "State": str(j.state),
        "Progress": float(j.progress),
        "BytesDone": int(j.bytes_done),
        "BytesTotal": int(j.bytes_total),
        "FilesDone": int(j.files_done),
        "FilesTotal": int(j.files_total),
        "Rate": int(j.rate),
        "ExpectedEndTime": int(j.expected_end * 1e6) if j.expected_end else 0,
        "CurrentFile": j.current_file or "",
        "Sessions": [int(s) for s in j.sessions],
        "Formats": list(j.formats),
        "Target": j.target or "",
        "Device": device_path,
        "Error": j.error or "",
        "Results": [job_result(r) for r in j.results],
        "StartTime": int(j.started * 1e6) if j.started else 0,
    }


def job_result(r: Any) -> dict[str, Variant]:
    return {
        "session_id": Variant("x", int(r.session_id)),
        "uuid": Variant("s", r.uuid or ""),
        "title": Variant("s", r.title or ""),
        "ok": Variant("b", bool(r.ok)),
        "skipped": Variant("b", bool(r.skipped)),
        "error": Variant("s", r.error or ""),
        "files": Variant("as", [f.path for f in r.files if f.ok]),
    }


def device_properties(d: Any) -> dict[str, Any]:
    """Device interface property values."""
    return {
        "Id": d.id,
        "Label": d.label or "",
        "Uuid": d.uuid or "",
        "FsType": d.fs_type or "",
        "DevicePath": d.device or "",
        "Size": int(d.size or 0),
        "Free": int(d.free or 0),
        "MountPoint": d.mount_point or "",
        "State": str(d.state),
        "Error": d.error or "",
    }


def browser(x: Any) -> dict[str, Variant]:
    """A logged-in browser (access.Login) for ListPairedBrowsers."""
    return {"id": Variant("s", x.id), "kind": Variant("s", x.kind), "address": Variant("s", x.addr),
            "agent": Variant("s", x.agent), "created": Variant("t", int(x.created)),
            "last_seen": Variant("t", int(x.last_seen)), "expires": Variant("t", int(x.expires))}
