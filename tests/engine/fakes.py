"""An in-memory library of real Session objects (for faults a recorder DB cannot provoke) and the real renderers."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path

from steno_exportd.errors import NotFoundError
from steno_exportd.model import FileRef, Session, SessionSummary


def make_session(i: int, audio: Path | None, title: str | None = None) -> Session:
    t = dt.datetime(2026, 1, 1, 9, 0, tzinfo=dt.timezone.utc) + dt.timedelta(days=i)
    summ = SessionSummary(id=i, uuid=f"00000000-0000-4000-8000-{i:012d}", title=title or f"Meeting {i}",
                          status="completed", start_time=t, end_time=t, duration_seconds=60, updated_at=t,
                          created_at=t, location=None, participant_count=1, audio_format="wav",
                          audio_size=audio.stat().st_size if audio and audio.exists() else None)
    ref = FileRef(audio.name, audio, "audio", "wav", 0) if audio else None
    return Session(summ, None, None, (), (), "summary", (), (), ref, ())


class FakeLibrary:
    def __init__(self, sessions: list[Session]) -> None:
        self.sessions = {s.id: s for s in sessions}

    def list_sessions(self, exportable_only: bool = False):
        return [s.summary for s in self.sessions.values()]

    def get_session(self, key):
        for s in self.sessions.values():
            if key in (s.id, s.uuid, s.summary.short_id):
                return s
        raise NotFoundError(f"no session {key!r}")

    def data_version(self) -> int:
        return hash(tuple(s.summary for s in self.sessions.values()))

    def changed_since(self, token):
        return type("D", (), {"added": list(self.sessions), "changed": [], "removed": []})(), 1


def FakeRegistry():  # noqa: N802 - kept for the callers' names
    """The real render registry (these tests once used stand-ins for it)."""
    from steno_exportd import render
    return render


def library(tmp: Path, n: int, audio_size: int = 200_000) -> FakeLibrary:
    src = tmp / "rec"
    src.mkdir(exist_ok=True)
    out = []
    for i in range(1, n + 1):
        a = src / f"s{i}.wav"
        a.write_bytes(os.urandom(audio_size))
        out.append(make_session(i, a))
    return FakeLibrary(out)
