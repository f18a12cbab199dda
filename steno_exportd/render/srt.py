"""SubRip subtitles: `Speaker: text` in every cue, numbered, monotonic."""
from __future__ import annotations

from steno_exportd.render.base import Renderer
from steno_exportd.render.cues import cues, ts


def _safe(text: str) -> str:
    # '-->' would read as a timing line; other text stays verbatim (SRT has no escaping).
    return text.replace("-->", "->")


class SrtRenderer(Renderer):
    name, extension, media_type, version = "srt", "srt", "application/x-subrip; charset=utf-8", 1
    basename = "subtitles"

    def _render(self, sessions, options, merged, warnings) -> bytes:
        parts = []
        for i, c in enumerate(cues(sessions[0]), 1):
            lines = list(c.lines)
            lines[0] = f"{c.speaker}: {lines[0]}"
            body = "\n".join(_safe(x) for x in lines)
            parts.append(f"{i}\n{ts(c.start, ',')} --> {ts(c.end, ',')}\n{body}\n")
        return "\n".join(parts).encode("utf-8")


RENDERER = SrtRenderer()
