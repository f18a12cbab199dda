"""Sessions, jobs and devices as D-Bus values (a{sv} dictionaries of Variants)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from dbus_fast import Variant

from steno_exportd.events import DeviceSnapshot, JobSnapshot, OutboxEntry, ScheduleSnapshot, SessionResult
from steno_exportd.model import Session, SessionSummary
from steno_exportd.search import SearchHit, SearchResults


def _iso(t: dt.datetime | None) -> str:
    return t.isoformat() if t else ""


def _text(s: Any) -> str:
    """Text from the recorder's database for a D-Bus string, which may not hold NUL (SQLite text may: one such
    title made the marshalling of a whole ListSessions fail)."""
    s = str(s) if s else ""
    return s.replace("\x00", "\ufffd") if "\x00" in s else s


def _texts(items: Any) -> list[str]:
    return [_text(x) for x in items]


def session_summary(s: SessionSummary) -> dict[str, Variant]:
    """A SessionSummary as a{sv}: the keys documented in docs/dbus-api.md."""
    return {
        "id": Variant("x", int(s.id)),
        "uuid": Variant("s", _text(s.uuid)),
        "short_id": Variant("s", _text(s.short_id)),
        "title": Variant("s", _text(s.title)),
        "status": Variant("s", _text(s.status)),
        "start_time": Variant("s", _iso(s.start_time)),
        "end_time": Variant("s", _iso(s.end_time)),
        "duration": Variant("x", int(s.duration_seconds or 0)),
        "location": Variant("s", _text(s.location)),
        "participant_count": Variant("x", int(s.participant_count or 0)),
        "audio_format": Variant("s", _text(s.audio_format)),
        "audio_size": Variant("x", int(s.audio_size or 0)),
        "tags": Variant("as", _texts(s.tags)),
        "exportable": Variant("b", bool(s.exportable)),
        "problems": Variant("as", _texts(f"{p.field}: {p.reason}" for p in s.problems)),
    }


def session_listing(s: SessionSummary) -> dict[str, Variant]:
    """A SessionSummary for ListSessions: fewer keys (no tags: arrays are costly to unpack), optional ones omitted
    when empty, so 10,000 fit in 200 ms; GetSession has everything."""
    d = {
        "id": Variant("x", int(s.id)),
        "uuid": Variant("s", _text(s.uuid)),
        "title": Variant("s", _text(s.title)),
        "status": Variant("s", _text(s.status)),
        "start_time": Variant("s", _iso(s.start_time)),
        "duration": Variant("x", int(s.duration_seconds or 0)),
        "exportable": Variant("b", bool(s.exportable)),
    }
    if s.location:
        d["location"] = Variant("s", _text(s.location))
    if s.participant_count:
        d["participant_count"] = Variant("x", int(s.participant_count))
    if s.audio_size:
        d["audio_size"] = Variant("x", int(s.audio_size))
    if s.problems:
        d["problems"] = Variant("as", _texts(f"{p.field}: {p.reason}" for p in s.problems))
    return d


def session(full: Session) -> dict[str, Variant]:
    """A whole Session as a{sv}: every summary key plus people, summary text and counts."""
    d = session_summary(full.summary)
    d["problems"] = Variant("as", _texts(f"{p.field}: {p.reason}" for p in full.problems))
    d["description"] = Variant("s", _text(full.description))
    d["participants"] = Variant("as", _texts(p.name for p in full.participants))
    d["segment_count"] = Variant("x", len(full.segments))
    d["summary"] = Variant("s", _text(full.summary_text))
    d["action_items"] = Variant("as", _texts(a.text for a in full.action_items))
    d["topics"] = Variant("as", _texts(full.topics))
    d["has_audio"] = Variant("b", full.audio is not None)
    return d


def search_results(r: SearchResults) -> list[dict[str, Variant]]:
    """SearchSessions' sessions: id, uuid, title, start_time, matches and the best hits (best first)."""
    return [{
        "id": Variant("x", int(m.session_id)),
        "uuid": Variant("s", _text(m.uuid)),
        "title": Variant("s", _text(m.title)),
        "start_time": Variant("s", _iso(m.start_time)),
        "matches": Variant("x", int(m.hit_count)),
        "hits": Variant("aa{sv}", [search_hit(h) for h in m.hits]),
    } for m in r.sessions]


def search_hit(h: SearchHit) -> dict[str, Variant]:
    """One matching text: its kind, the snippet with the matches' [start, end) character ranges; for a
    transcript line also where it is said (seconds) and who said it (when known)."""
    d = {
        "kind": Variant("s", h.kind),
        "snippet": Variant("s", h.snippet),
        "marks": Variant("a(uu)", [[int(a), int(b)] for a, b in h.marks]),
    }
    if h.seconds is not None:
        d["seconds"] = Variant("d", float(h.seconds))
    if h.speaker:
        d["speaker"] = Variant("s", h.speaker)
    return d


def unwrap(options: dict[str, Variant]) -> dict[str, Any]:
    """a{sv} -> plain dict."""
    return {k: (v.value if isinstance(v, Variant) else v) for k, v in options.items()}


def job_properties(j: JobSnapshot, device_path: str = "/", results: list | None = None) -> dict[str, Any]:
    """Job interface property values (plain Python, typed by the interface); ``results``: j.results
    already converted by job_result (a caller that keeps them between updates)."""
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
        "Results": results if results is not None else [job_result(r) for r in j.results],
        "StartTime": int(j.started * 1e6) if j.started else 0,
    }


def job_result(r: SessionResult) -> dict[str, Variant]:
    d = {
        "session_id": Variant("x", int(r.session_id)),
        "uuid": Variant("s", _text(r.uuid)),
        "title": Variant("s", _text(r.title)),
        "ok": Variant("b", bool(r.ok)),
        "status": Variant("s", str(r.status)),
        "skipped": Variant("b", bool(r.skipped)),
        "error": Variant("s", _text(r.error)),
        "files": Variant("as", [f.path for f in r.files if f.ok]),
    }
    if r.warnings:      # only when there are some: every update carries all results (10,000 per job)
        d["warnings"] = Variant("as", _texts(r.warnings))
    return d


def device_properties(d: DeviceSnapshot) -> dict[str, Any]:
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
        "SkipReason": d.skip_reason or "",
    }


def _usec(t: float) -> int:
    return int(t * 1e6) if t else 0


def outbox_entry(e: OutboxEntry) -> dict[str, Variant]:
    """An outbox message as a{sv} (times in microseconds since the epoch, 0: none)."""
    return {
        "id": Variant("t", int(e.id)),
        "kind": Variant("s", e.kind),
        "subject": Variant("s", e.subject),
        "state": Variant("s", str(e.state)),
        "recipients": Variant("as", list(e.recipients)),
        "delivered": Variant("as", list(e.delivered)),
        "refused": Variant("as", list(e.refused)),
        "left_out": Variant("as", list(e.left_out)),
        "sessions": Variant("ax", [int(i) for i in e.sessions]),
        "attempts": Variant("u", int(e.attempts)),
        "size": Variant("t", int(e.size)),
        "error": Variant("s", e.error),
        "created": Variant("t", _usec(e.created)),
        "next_attempt": Variant("t", _usec(e.next_attempt)),
        "finished": Variant("t", _usec(e.finished)),
    }


def schedule(s: ScheduleSnapshot) -> dict[str, Variant]:
    """A schedule as a{sv} (times in microseconds since the epoch, 0: never)."""
    return {
        "name": Variant("s", s.name),
        "when": Variant("s", s.when),
        "target": Variant("s", s.target),
        "sessions": Variant("s", s.sessions),
        "formats": Variant("as", list(s.formats)),
        "next_run": Variant("t", _usec(s.next_run)),
        "last_run": Variant("t", _usec(s.last_run)),
        "last_result": Variant("s", s.last_result),
        "catch_up": Variant("b", bool(s.catch_up)),
    }


def browser(x: Any) -> dict[str, Variant]:
    """A logged-in browser (access.Login) for ListPairedBrowsers."""
    return {"id": Variant("s", x.id), "kind": Variant("s", x.kind), "address": Variant("s", x.addr),
            "agent": Variant("s", x.agent), "created": Variant("t", int(x.created)),
            "last_seen": Variant("t", int(x.last_seen)), "expires": Variant("t", int(x.expires))}
