"""JSON: the whole session in a documented, versioned schema (schema/session.schema.json)."""
from __future__ import annotations

import json
import os

from steno_exportd.model import FileRef, Session
from steno_exportd.render.base import Renderer
from steno_exportd.render.common import clean, speaker_rows

SCHEMA_VERSION = "1.0"
SCHEMA_ID = "https://silentsteno.org/schema/steno-exportd/session-1.0.json"
SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "schema", "session.schema.json")


def _iso(t):
    return t.isoformat() if t else None


def _sha(v: str | None) -> str | None:
    v = (v or "").strip().lower()
    return v if len(v) == 64 and all(c in "0123456789abcdef" for c in v) else None


def _file(f: FileRef, role: str) -> dict:
    return {"role": role, "filename": clean(f.filename), "type": clean(f.file_type), "format": clean(f.file_format) or None,
            "size": max(0, f.size or 0), "sha256": _sha(f.checksum), "mime_type": clean(f.mime_type) or None}


def session_dict(s: Session) -> dict:
    """The JSON-ready dict of one session."""
    sm = s.summary
    rows = {r.name: r for r in speaker_rows(s)}
    return {
        "schema": SCHEMA_ID, "schema_version": SCHEMA_VERSION,
        "session": {"id": sm.id, "uuid": sm.uuid, "short_id": sm.short_id, "title": clean(sm.title),
                    "status": clean(sm.status), "start_time": _iso(sm.start_time), "end_time": _iso(sm.end_time),
                    "duration_seconds": sm.duration_seconds, "created_at": _iso(sm.created_at),
                    "updated_at": _iso(sm.updated_at), "location": clean(sm.location) or None,
                    "description": clean(s.description) or None, "meeting_platform": clean(s.meeting_platform) or None,
                    "tags": [clean(t) for t in sm.tags]},
        "participants": [{"speaker_id": clean(p.speaker_id), "name": clean(p.name), "role": clean(p.role) or None,
                          "organization": clean(p.organization) or None,
                          "speaking_seconds": round(rows[clean(p.name)].seconds if clean(p.name) in rows
                                                    else p.speaking_seconds, 3),
                          "speaking_percentage": round(rows[clean(p.name)].share if clean(p.name) in rows
                                                       else p.speaking_percentage, 2),
                          "word_count": rows[clean(p.name)].words if clean(p.name) in rows else p.word_count}
                         for p in s.participants],
        "speaker_map": {clean(p.speaker_id): clean(p.name) for p in s.participants},
        "segments": [{"index": g.index, "start": round(g.start, 3), "end": round(g.end, 3),
                      "speaker_id": clean(g.speaker_id) or None, "speaker": clean(g.speaker_name), "text": clean(g.text),
                      "confidence": g.confidence} for g in s.segments],
        "summary": clean(s.summary_text) or None,
        "action_items": [{"text": clean(a.text), "owner": clean(a.owner) or None, "due": a.due.isoformat() if a.due else None,
                          "done": a.done} for a in s.action_items],
        "topics": [clean(t) for t in s.topics],
        "files": ([_file(s.audio, "audio")] if s.audio else []) + [_file(f, f.file_type) for f in s.files],
        "problems": [{"field": clean(p.field), "reason": clean(p.reason), "fatal": p.fatal} for p in s.problems],
    }


class JsonRenderer(Renderer):
    name, extension, media_type, version = "json", "json", "application/json", 1
    basename = "session"

    def _render(self, sessions, options, merged, warnings) -> bytes:
        return (json.dumps(session_dict(sessions[0]), ensure_ascii=False, indent=2) + "\n").encode("utf-8")


RENDERER = JsonRenderer()
