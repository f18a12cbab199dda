"""Immutable session objects read from the recorder database.

Everything here is plain frozen dataclasses: the library builds them, renderers,
the export engine and every adapter only read them.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

EXPORTABLE_STATUSES = frozenset({"completed", "archived"})


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with one session's data; reported, never fatal."""

    field: str          # e.g. "audio_file_path", "tags", "transcript[12]"
    reason: str         # human readable, e.g. "audio file missing: /data/audio/x.flac"
    fatal: bool = False  # True when the session cannot be exported at all


@dataclasses.dataclass(frozen=True, slots=True)
class Participant:
    speaker_id: str
    name: str                     # display name; falls back to speaker_id
    role: str | None = None
    organization: str | None = None
    speaking_seconds: float = 0.0
    speaking_percentage: float = 0.0   # 0..100
    word_count: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    index: int                    # 0-based position after ordering by start time
    start: float                  # seconds from the start of the recording
    end: float
    speaker_id: str | None
    speaker_name: str             # display name ("Unknown speaker" when none)
    text: str
    confidence: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ActionItem:
    text: str
    owner: str | None = None
    due: dt.date | None = None
    done: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class FileRef:
    """A file of the recorder's file_info table (or the session audio)."""

    filename: str
    path: Path | None             # resolved absolute path; None when unusable
    file_type: str                # audio transcript analysis export
    file_format: str
    size: int
    checksum: str | None = None   # sha256 hex where the recorder set it
    mime_type: str | None = None
    dev: int = 0                  # which file was checked (st_dev, st_ino): a reader compares what it opens
    ino: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class SessionSummary:
    """The cheap per-session fields: listing never loads transcripts."""

    id: int
    uuid: str
    title: str
    status: str
    start_time: dt.datetime | None      # aware, UTC
    end_time: dt.datetime | None
    duration_seconds: int | None
    updated_at: dt.datetime | None
    created_at: dt.datetime | None
    location: str | None
    participant_count: int | None
    audio_format: str | None
    audio_size: int | None
    tags: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()

    @property
    def exportable(self) -> bool:
        return self.status in EXPORTABLE_STATUSES and not any(p.fatal for p in self.problems)

    @property
    def short_id(self) -> str:
        return self.uuid.replace("-", "")[:8]


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    """A whole session: metadata, people, transcript, analysis, files."""

    summary: SessionSummary
    description: str | None
    meeting_platform: str | None
    participants: tuple[Participant, ...]
    segments: tuple[Segment, ...]
    summary_text: str | None
    action_items: tuple[ActionItem, ...]
    topics: tuple[str, ...]
    audio: FileRef | None               # None when there is no usable audio file
    files: tuple[FileRef, ...]          # other file_info rows
    metadata: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)
    problems: tuple[Problem, ...] = ()  # summary.problems + those found loading details

    # Convenience pass-throughs: renderers mostly need these.
    @property
    def id(self) -> int:
        return self.summary.id

    @property
    def uuid(self) -> str:
        return self.summary.uuid

    @property
    def title(self) -> str:
        return self.summary.title

    @property
    def start_time(self) -> dt.datetime | None:
        return self.summary.start_time

    @property
    def duration_seconds(self) -> int | None:
        return self.summary.duration_seconds

    @property
    def updated_at(self) -> dt.datetime | None:
        return self.summary.updated_at
