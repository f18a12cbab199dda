"""Subtitle cues from segments: readable line lengths and durations, monotonic times."""
from __future__ import annotations

import dataclasses
import textwrap

from steno_exportd.model import Session
from steno_exportd.render.common import one_line

LINE = 42            # characters per subtitle line (broadcast convention)
MAX_CHARS = 2 * LINE
MAX_SECONDS = 7.0
MIN_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class Cue:
    start: float
    end: float
    speaker: str
    lines: tuple[str, ...]


def cues(session: Session) -> list[Cue]:
    """Cues with non-decreasing starts, end > start, at most two lines of LINE characters each."""
    out: list[Cue] = []
    last_start = 0.0
    for seg in session.segments:
        text = one_line(seg.text)
        if not text:
            continue
        speaker = one_line(seg.speaker_name) or "Unknown speaker"
        start, end = max(0.0, seg.start), max(seg.end, seg.start)
        dur = end - start
        lines = textwrap.wrap(text, LINE, break_long_words=True, break_on_hyphens=False) or [text]
        pieces = [tuple(lines[i:i + 2]) for i in range(0, len(lines), 2)]
        total = sum(len(" ".join(p)) for p in pieces) or 1
        t = start
        for p in pieces:
            share = dur * len(" ".join(p)) / total
            c_start = max(t, last_start)
            c_end = max(min(t + share, c_start + MAX_SECONDS), c_start + MIN_SECONDS)
            out.append(Cue(round(c_start, 3), round(c_end, 3), speaker, p))
            last_start = c_start
            t += share
    return out


def ts(seconds: float, sep: str) -> str:
    """HH:MM:SS<sep>mmm."""
    ms = int(round(seconds * 1000))
    return f"{ms // 3600000:02d}:{ms % 3600000 // 60000:02d}:{ms % 60000 // 1000:02d}{sep}{ms % 1000:03d}"
