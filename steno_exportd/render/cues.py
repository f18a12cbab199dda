"""Subtitle cues from segments: readable line lengths and durations, monotonic times."""
from __future__ import annotations

import dataclasses
from typing import Callable

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


def speaker_prefix(name: str) -> str:
    """'Name: ' for the first line of a cue; an absurdly long name is shortened to leave room for text."""
    name = one_line(name) or "Unknown speaker"
    if len(name) > LINE - 12:
        name = name[:LINE - 13].rstrip() + "…"
    return name + ": "


def _wrap(text: str, widths: tuple[int, int]) -> list[tuple[str, ...]]:
    """Greedy word wrap into cues of two lines, the first of widths[0] characters, the second of widths[1]."""
    lines: list[str] = []
    cur = ""
    for word in text.split():
        while word:
            width = widths[len(lines) % 2]
            room = width - (len(cur) + 1 if cur else 0)
            if len(word) <= room:
                cur, word = (f"{cur} {word}" if cur else word), ""
            elif cur:
                lines.append(cur)
                cur = ""
            else:                       # a word longer than a whole line is cut
                lines.append(word[:width])
                word = word[width:]
    if cur:
        lines.append(cur)
    return [tuple(lines[i:i + 2]) for i in range(0, len(lines), 2)]


def cues(session: Session, prefix: bool = False, shown: Callable[[str], str] = str) -> list[Cue]:
    """Cues with non-decreasing starts, end > start, at most two lines of LINE characters each.

    shown(text) is what the player displays (applied before wrapping); with prefix, every cue's first
    line leaves room for `speaker_prefix(speaker)` (SRT shows it).
    """
    out: list[Cue] = []
    last_start = 0.0
    for seg in session.segments:
        text = shown(one_line(seg.text))
        if not text:
            continue
        speaker = shown(one_line(seg.speaker_name) or "Unknown speaker")
        first = LINE - (len(speaker_prefix(speaker)) if prefix else 0)
        start, end = max(0.0, seg.start), max(seg.end, seg.start)
        dur = end - start
        pieces = _wrap(text, (first, LINE)) or [(text[:first],)]
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
